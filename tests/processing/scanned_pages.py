"""Scans made on the spot: English text rendered to images, and PDFs of them without text.

Shared by the OCR tests and bench/ocr.py, so the bench measures the kind of page the
tests read. The font is DejaVu Serif where Debian's fonts-dejavu-core is installed,
else the FreeType font that Pillow ships in its wheel: a page can always be made.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_FILES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
)
POINTS_PER_INCH = 72
LINE_SPACING = 1.45  # a line's height, in font sizes
A4_WIDTH_INCHES = 8.27
A4_HEIGHT_INCHES = 11.69

# Plain English prose, the kind of sentences letters, contracts and reports are made of.
SENTENCES = (
    "The committee met on Tuesday morning to review the budget for the coming year.",
    "Every invoice must be paid within thirty days of the date on which it was issued.",
    "Our office will be closed during the holidays and will open again in January.",
    "The tenant agrees to keep the premises clean and in good repair at all times.",
    "Please return the signed copy of this agreement to the address shown above.",
    "The survey found that most customers were satisfied with the speed of delivery.",
    "A new bridge across the river was opened to traffic at the end of the summer.",
    "The library lends books, maps and recordings to anyone who lives in the county.",
    "Shipments that arrive damaged should be reported to the carrier without delay.",
    "The board thanked the volunteers who had given their time to the annual fair.",
    "Heavy rain is expected over the weekend, with strong winds along the coast.",
    "The report recommends that the old warehouse be sold and the proceeds invested.",
    "Applicants should bring two forms of identification to the interview.",
    "The museum has added a gallery of paintings by artists from the northern towns.",
    "Our records show that the second payment was received on the fourth of March.",
    "The engine was inspected and found to be in working order before the flight.",
    "Students who wish to change their course must speak to an adviser first.",
    "The contract may be ended by either party with ninety days of written notice.",
    "A small garden behind the house grows beans, onions and several kinds of herbs.",
    "The minutes of the previous meeting were read aloud and approved without change.",
    "Prices listed in this catalogue include tax but do not include the cost of freight.",
    "The hospital will open a new clinic for children in the spring of next year.",
    "Visitors are asked to sign the register at the front desk when they arrive.",
    "The manager explained that the delay was caused by a shortage of spare parts.",
    "Water from the well was tested and declared safe for drinking and cooking.",
    "The quarterly figures show a modest rise in sales across most of the regions.",
    "Members may bring one guest to the dinner, which begins at seven in the evening.",
    "The old mill on the hill was restored by a group of local carpenters and masons.",
    "Any questions about this notice should be sent to the clerk of the council.",
    "The ferry runs every hour from the harbour to the island during the summer months.",
)


def english_text(sentences: int, seed: int) -> str:
    """``sentences`` sentences of English prose, the same for the same seed."""
    rng = random.Random(seed)
    return " ".join(rng.choice(SENTENCES) for _ in range(sentences))


def page_font(size_pixels: int) -> ImageFont.FreeTypeFont:
    for path in FONT_FILES:
        if path.exists():
            return ImageFont.truetype(str(path), size_pixels)
    return ImageFont.load_default(size_pixels)


def render_page(
    text: str,
    *,
    dpi: int = 300,
    points: float = 12,
    width_inches: float = A4_WIDTH_INCHES,
    height_inches: float | None = None,
    margin_inches: float = 0.75,
    rotate_degrees: float = 0.0,
    noise: float = 0.0,
    seed: int = 0,
) -> Image.Image:
    """A greyscale scan of ``text`` (black on white, wrapped to the margins) at ``dpi``.

    ``height_inches`` defaults to just what the lines need; lines past it are cut.
    ``rotate_degrees`` tilts the page as a sheet laid askew on the glass; ``noise``
    (0..1) blends in that fraction of uniform grey noise, as a poor scanner adds.
    """
    font_pixels = round(points * dpi / POINTS_PER_INCH)
    line_pixels = round(font_pixels * LINE_SPACING)
    margin = round(margin_inches * dpi)
    width = round(width_inches * dpi)
    font = page_font(font_pixels)
    lines = _wrap(text, font, width - 2 * margin)
    if height_inches is None:
        height = 2 * margin + line_pixels * len(lines)
    else:
        height = round(height_inches * dpi)
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    for number, line in enumerate(lines):
        draw.text((margin, margin + number * line_pixels), line, font=font, fill=0)
    if rotate_degrees:
        page = page.rotate(rotate_degrees, resample=Image.Resampling.BICUBIC, fillcolor=255)
    if noise:
        grain = Image.frombytes("L", page.size, random.Random(seed).randbytes(width * height))
        page = Image.blend(page, grain, noise)
    return page


def _wrap(text: str, font: ImageFont.FreeTypeFont, width_pixels: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width_pixels:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def image_bytes(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def multi_frame_tiff(frames: Sequence[Image.Image]) -> bytes:
    """One TIFF file holding every frame, as a document scanner saves a stack of sheets."""
    return image_bytes(frames[0], "TIFF", save_all=True, append_images=list(frames[1:]))


def scanned_pdf(pages: Sequence[Image.Image], dpi: int = 300) -> bytes:
    """A PDF whose pages are only these images: no text layer, as a scanner writes it."""
    return image_bytes(
        pages[0], "PDF", resolution=float(dpi), save_all=True, append_images=list(pages[1:])
    )


# --- decompression bombs: a few hundred kilobytes that decode to gigabytes ----------------


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A white bilevel PNG: 900 megapixels (900 MB once Pillow decodes it) in ~100 KB."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter "none", then white pixels
    compressor = zlib.compressobj(1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + (_png_chunk(b"IEND", b""))
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_tiff(width: int = 30_000, height: int = 30_000) -> bytes:
    """A white bilevel TIFF, one deflated strip: 900 megapixels in ~100 KB."""
    strip = zlib.compress(bytes((width + 7) // 8 * height), 1)  # 0 is white (WhiteIsZero)
    entries = [  # (tag, type: 3 SHORT / 4 LONG, value), in tag order
        (256, 4, width),
        (257, 4, height),
        (258, 3, 1),  # bits per sample
        (259, 3, 8),  # compression: deflate
        (262, 3, 0),  # photometric: white is zero
        (273, 4, 0),  # strip offset, set below
        (277, 3, 1),  # samples per pixel
        (278, 4, height),  # rows per strip
        (279, 4, len(strip)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 0)  # no next frame
    return b"II*\x00" + struct.pack("<I", 8) + ifd + strip
