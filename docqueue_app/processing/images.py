"""Images (PNG, JPEG, TIFF): the text of every frame, read by OCR.

A scanner's multi-page TIFF is one document with a page per frame. Each frame's
size is checked against the OCR pixel limit before its pixels are decoded, so a
decompression bomb (a 30,000 x 30,000 one-colour PNG is a few kilobytes) fails
for good instead of eating the memory cap.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageOps

from . import ocr
from .errors import PermanentProcessingError
from .options import current_options

MAX_PAGES = 5000  # as for a PDF
# Pillow reports an unknown, truncated or corrupt file with any of these.
_PILLOW_DAMAGE = (OSError, SyntaxError, ValueError, EOFError)
# And a frame's header, read by seek(), with these as well.
_PILLOW_FRAME_DAMAGE = (KeyError, TypeError, IndexError, struct.error, ZeroDivisionError)
PAGE_SEPARATOR = "\n\n"
_EXIF_ORIENTATION = 0x0112

# Every frame's size is checked against ocr.pixel_limit (which follows the memory cap)
# before it is decoded; Pillow's own fixed limit would refuse some with another
# message and warn about others.
Image.MAX_IMAGE_PIXELS = None


def extract_image(content: bytes) -> dict:
    if not current_options().ocr_enabled:
        raise PermanentProcessingError("images are read by OCR, which is off (DOCQUEUE_OCR=off)")
    try:
        with Image.open(io.BytesIO(content)) as image:
            return _read_frames(image)
    except _PILLOW_DAMAGE as exc:
        raise PermanentProcessingError(f"damaged image: {exc or type(exc).__name__}") from None


def _read_frames(image: Image.Image) -> dict:
    image_format, (width, height) = image.format, image.size  # of the first frame
    with _frame_headers_read():
        frame_count = getattr(image, "n_frames", 1)  # reads every frame's header
    limit = ocr.pixel_limit()
    texts = [
        ocr.read_page(frame, _dpi(frame))
        for frame in _frames(image, min(frame_count, MAX_PAGES), limit)
    ]
    metadata: dict = {
        "image_format": image_format,
        "width": width,
        "height": height,
        "ocr_pages": len(texts),
        "ocr_engine": ocr.engine_name(),
    }
    if frame_count > MAX_PAGES:
        metadata["pages_extracted"] = MAX_PAGES
    return {
        "text": PAGE_SEPARATOR.join(text for text in texts if text),
        "title": None,
        "page_count": frame_count,
        "metadata": metadata,
    }


def _frames(image: Image.Image, count: int, pixel_limit: int) -> Iterator[Image.Image]:
    """Each frame, upright, decoded only once its size is known to be within the limit."""
    for index in range(count):
        with _frame_headers_read():
            image.seek(index)
        ocr.check_page_size(image.width, image.height, pixel_limit)
        if image.format == "JPEG":
            image.draft("L", image.size)  # decoded straight to grey: a third of the memory
        yield _upright(image)


@contextmanager
def _frame_headers_read() -> Iterator[None]:
    """Pillow reading frame headers (seek, n_frames): damage in them fails for good.

    Only Image.open turns these errors into "cannot identify": a later frame's
    tags raise them as they are (KeyError for an unknown compression, TypeError for
    a missing width), which failed the document as transient, retried to the end.
    """
    try:
        yield
    except _PILLOW_FRAME_DAMAGE as exc:
        raise PermanentProcessingError(
            f"damaged image: a frame's header: {type(exc).__name__}: {exc}"
        ) from None


def _upright(frame: Image.Image) -> Image.Image:
    # A phone photo is stored sideways with an EXIF note of how to turn it.
    if frame.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(frame)
    return frame


def _dpi(frame: Image.Image) -> float | None:
    dpi = frame.info.get("dpi")
    if not dpi:
        return None
    try:
        horizontal = float(dpi[0])
    except (TypeError, ValueError, IndexError):
        return None
    return horizontal if 50 <= horizontal <= 2400 else None  # else an unset or junk field
