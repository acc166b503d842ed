"""OCR: the text of a page image, read by Tesseract through tesserocr.

Why this engine (README "OCR" has the measurements; ``make bench`` repeats them):
on clean English A4 pages at 300 dpi Tesseract read every character where
RapidOCR (ONNX models shipped in its wheel) lost 15% of the text, whole lines of
it, at an eighth of the CPU time (2.5 against 21 s a page here); and RapidOCR's
onnxruntime needs 1.5 GB of address space, so it cannot run under the default
1024 MB cap at all. tesserocr calls libtesseract (carried in its wheel) inside
this process: under the sandbox's address-space cap, stopped with the sandbox,
with the model loaded once per process. pytesseract would start a ``tesseract``
process per page, which a killed sandbox would leave running. The English model
is Debian's tesseract-ocr-eng, which ``make install`` installs when it is
missing: nothing is downloaded at run time.

Nothing imports this module at start (tests/test_startup.py): it comes with the
first page that needs OCR.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import threading
from pathlib import Path

import tesserocr
from PIL import Image

from .errors import PermanentProcessingError, TransientProcessingError

LANGUAGE = "eng"
MODEL_PACKAGE = "tesseract-ocr-eng"
# Where Debian (Tesseract 5, then 4), other distributions and /usr/local keep models
# (the Makefile's ocr-model target checks the same folders).
TESSDATA_DIRS = (
    Path("/usr/share/tesseract-ocr/5/tessdata"),
    Path("/usr/share/tesseract-ocr/4.00/tessdata"),
    Path("/usr/share/tessdata"),
    Path("/usr/local/share/tessdata"),
)

# The largest page read by OCR, whatever the memory cap: Tesseract takes about 20 s
# on 135 megapixels here (an A0 sheet at 300 dpi is 139).
MAX_PAGE_PIXELS = 150_000_000
# The longest side Tesseract accepts (its image coordinates are 16-bit); a longer page
# is scaled down to it.
MAX_TESSERACT_SIDE = 32_767
# Address space that reading one pixel takes at its peak: 16 bytes measured on a
# 50-megapixel RGBA PNG page (bench/ocr.py), the worst kind: the decoded image (4),
# the page made opaque on white (4 + 4 while composited), its grey copy and the
# bytes handed to Tesseract (1 + 1), and Tesseract's own images. A quarter more
# for what a page's content may add.
BYTES_PER_PIXEL = 20

# A page laid askew on the glass is turned straight first when Tesseract's layout
# analysis finds it this far off: on a 2-degree tilt Tesseract alone dropped a whole
# line of 33 (bench/ocr.py, "tilted"); straightened, it read every one, for half as
# much time again on a tilted page.
MIN_DESKEW_DEGREES = 0.5
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")

_engine_lock = threading.Lock()  # a Tesseract handle reads one page at a time
_engine: tesserocr.PyTessBaseAPI | None = None


@functools.cache  # the engine of a process does not change
def engine_name() -> str:
    """The engine and its version, as ``metadata.ocr_engine`` names it: 'tesseract 5.5.4'."""
    return tesserocr.tesseract_version().splitlines()[0].strip()


def pixel_limit() -> int:
    """The most pixels one page may have to be read within this process's memory cap.

    In a sandbox the cap is its address-space limit (DOCQUEUE_PROCESS_MEMORY_MB), less
    what the process uses already; without one, MAX_PAGE_PIXELS.
    """
    cap, _ = resource.getrlimit(resource.RLIMIT_AS)
    if cap == resource.RLIM_INFINITY:
        return MAX_PAGE_PIXELS
    return max(0, min(MAX_PAGE_PIXELS, (cap - _address_space_in_use()) // BYTES_PER_PIXEL))


def _address_space_in_use() -> int:
    with open("/proc/self/statm", "rb") as statm:
        pages = int(statm.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def check_page_size(width: int, height: int, limit: int) -> None:
    """Refuse, for good, a page too large to read: checked before its pixels are decoded."""
    if width * height > limit:
        raise PermanentProcessingError(
            f"image of {width} x {height} pixels ({width * height / 1e6:.0f} megapixels) is "
            f"too large to read by OCR: the limit is {limit / 1e6:.0f} megapixels "
            "(set by the memory cap, DOCQUEUE_PROCESS_MEMORY_MB)"
        )


def read_page(image: Image.Image, dpi: float | None = None) -> str:
    """The text Tesseract reads on ``image`` (any Pillow mode), paragraphs apart.

    ``dpi`` is the scan's resolution when known (it helps Tesseract judge text sizes).
    Check the page's size with ``check_page_size`` before decoding it.
    """
    grey, dpi = _within_tesseract_sides(_grey_on_white(image), dpi)
    with _engine_lock:
        engine = _loaded_engine()
        try:
            _show(engine, grey, dpi)
            skew = _skew_degrees(engine)
            if skew is None:
                text = _read_as_one_block(engine, grey, dpi)
            else:
                if abs(skew) >= MIN_DESKEW_DEGREES:
                    _show(engine, _straightened(grey, skew), dpi)
                text = engine.GetUTF8Text()
        finally:
            engine.Clear()
    return _tidy(text)


def _within_tesseract_sides(
    grey: Image.Image, dpi: float | None
) -> tuple[Image.Image, float | None]:
    """The page scaled down, if need be, so that no side exceeds what Tesseract takes.

    Tesseract refuses an image with a side over 32,767 pixels ("Failed to recognize.
    No image set?"), however few pixels it has in all: a till roll, a scroll, a banner
    PDF page. Refused, such a page failed its document as transient, again at each retry.
    """
    longest = max(grey.size)
    if longest <= MAX_TESSERACT_SIDE:
        return grey, dpi
    scale = MAX_TESSERACT_SIDE / longest
    size = (max(1, math.floor(grey.width * scale)), max(1, math.floor(grey.height * scale)))
    return grey.resize(size, Image.Resampling.BOX), (dpi * scale if dpi else None)


def _show(engine: tesserocr.PyTessBaseAPI, grey: Image.Image, dpi: float | None) -> None:
    engine.SetImageBytes(grey.tobytes(), grey.width, grey.height, 1, grey.width)
    if dpi:
        engine.SetSourceResolution(round(dpi))


def _skew_degrees(engine: tesserocr.PyTessBaseAPI) -> float | None:
    """How far the text lines are turned, in degrees anticlockwise (Pillow's sense).

    None when the page layout analysis found no text.
    """
    layout = engine.AnalyseLayout()
    if layout is None:
        return None
    *_, deskew_radians = layout.Orientation()
    return math.degrees(deskew_radians)


def _straightened(grey: Image.Image, skew_degrees: float) -> Image.Image:
    # Turned back on a page grown to hold the corners, the new margins white.
    return grey.rotate(skew_degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=255)


def _read_as_one_block(
    engine: tesserocr.PyTessBaseAPI, grey: Image.Image, dpi: float | None
) -> str:
    # The layout analysis misses some pages outright (a 150 dpi page tilted by 2
    # degrees: no text at all, though every line is plain); read as one block of
    # text, such a page comes out whole, and a blank page still reads as nothing.
    engine.SetPageSegMode(tesserocr.PSM.SINGLE_BLOCK)
    try:
        _show(engine, grey, dpi)
        return engine.GetUTF8Text()
    finally:
        engine.SetPageSegMode(tesserocr.PSM.AUTO)


def _grey_on_white(image: Image.Image) -> Image.Image:
    # Transparent pixels are black underneath in most files: Tesseract would see
    # black text on a black page. Put them on white paper first.
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    elif image.mode in _WIDE_INTEGER_MODES:
        # A 16-bit scan: converted as it is, every level above 255 would turn white.
        image = image.point(lambda level: level / 256)
    return image if image.mode == "L" else image.convert("L")


def _loaded_engine() -> tesserocr.PyTessBaseAPI:
    global _engine
    if _engine is None:
        _engine = _start_engine()
    return _engine


def _start_engine() -> tesserocr.PyTessBaseAPI:
    model = f"{LANGUAGE}.traineddata"
    tessdata = next((path for path in TESSDATA_DIRS if (path / model).is_file()), None)
    if tessdata is None:
        # A set-up problem, not the document's: it may pass once the model is installed.
        raise TransientProcessingError(
            f"OCR is not installed: no {model} in "
            f"{', '.join(map(str, TESSDATA_DIRS))} (install Debian's {MODEL_PACKAGE}, "
            "as `make install` does, or set DOCQUEUE_OCR=off)"
        )
    try:
        return tesserocr.PyTessBaseAPI(path=f"{tessdata}/", lang=LANGUAGE)
    except RuntimeError as exc:
        raise TransientProcessingError(f"OCR engine failed to start: {exc}") from None


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\x0c", "").splitlines()]
    return "\n".join(lines).strip()
