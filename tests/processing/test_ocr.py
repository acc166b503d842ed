"""OCR: scans and images read by Tesseract, in this process and in the sandbox.

Pages are made by the test (tests/processing/scanned_pages.py): a sentence or two
rendered at 150 dpi, small enough that Tesseract reads each in well under a second.
"""

from __future__ import annotations

import difflib
import io
import json
import struct
import subprocess
import sys

import pytest
from fpdf import FPDF
from PIL import Image

from docqueue_app.processing import PermanentProcessingError, extract, run_processor
from docqueue_app.processing.detection import JPEG, PDF, PNG, TIFF, detect_content_type

from .scanned_pages import (
    bomb_png,
    bomb_tiff,
    english_text,
    image_bytes,
    multi_frame_tiff,
    render_page,
    scanned_pdf,
)

DPI = 150
PHRASES = (
    "Every invoice must be paid within thirty days.",
    "The ferry runs every hour from the harbour.",
    "Please return the signed copy of this agreement.",
)
TEXT_PAGE_PHRASE = "This page has a real text layer."


def scan(phrase: str, width_inches: float = 5.5) -> Image.Image:
    return render_page(phrase, dpi=DPI, width_inches=width_inches, margin_inches=0.4)


def words(text: str) -> str:
    return " ".join(text.split())


def assert_read(result: dict, *phrases: str) -> None:
    for phrase in phrases:
        assert phrase in words(result["text"]), result["text"]


def isolated(content: bytes, filename: str, content_type: str, **options) -> dict:
    """The document processed as production does: in a sandbox under the caps."""
    return run_processor(
        content,
        filename,
        content_type,
        isolation="subprocess",
        memory_mb=options.pop("memory_mb", 1024),
        timeout_seconds=120,
        **options,
    )


def assert_ocr_metadata(result: dict, pages: int) -> None:
    assert result["metadata"]["ocr_pages"] == pages
    assert result["metadata"]["ocr_engine"].startswith("tesseract ")


def typed_pdf() -> bytes:
    """One page of typed text: a text layer, nothing for OCR."""
    document = FPDF()
    document.add_page()
    document.set_font("helvetica", size=12)
    document.text(20, 20, TEXT_PAGE_PHRASE)
    return bytes(document.output())


def mixed_pdf() -> bytes:
    """Page 1 typed text, page 2 a scan (an image only), page 3 typed text again."""
    document = FPDF(unit="pt", format=(420, 300))
    document.set_font("helvetica", size=14)
    for page in range(3):
        document.add_page()
        if page == 1:
            document.image(scan(PHRASES[1]), x=20, y=20, w=380)
        else:
            document.text(40, 60, f"{TEXT_PAGE_PHRASE} Number {page + 1}.")
    return bytes(document.output())


# --- what is read ----------------------------------------------------------------------


def test_a_scanned_pdf_yields_its_phrases() -> None:
    content = scanned_pdf([scan(PHRASES[0]), scan(PHRASES[2])], dpi=DPI)

    result = extract(content, "scan.pdf")

    assert result["page_count"] == 2
    assert_read(result, PHRASES[0], PHRASES[2])
    assert_ocr_metadata(result, pages=2)


@pytest.mark.parametrize(("image_format", "content_type"), [("PNG", PNG), ("JPEG", JPEG)])
def test_an_image_is_read(image_format: str, content_type: str) -> None:
    content = image_bytes(scan(PHRASES[0]), image_format, dpi=(DPI, DPI))
    assert detect_content_type(content, "photo.bin") == content_type

    result = extract(content, "photo")

    assert result["page_count"] == 1
    assert result["title"] is None
    assert_read(result, PHRASES[0])
    assert_ocr_metadata(result, pages=1)
    assert result["metadata"]["image_format"] == image_format


def test_every_frame_of_a_multi_page_tiff_is_a_page() -> None:
    content = multi_frame_tiff([scan(phrase) for phrase in PHRASES])
    assert detect_content_type(content, "stack.tif") == TIFF

    result = extract(content, "stack.tif")

    assert result["page_count"] == 3
    assert_read(result, *PHRASES)
    assert_ocr_metadata(result, pages=3)


def test_a_pdf_mixing_text_and_scanned_pages_reads_both() -> None:
    result = extract(mixed_pdf(), "mixed.pdf")

    assert result["page_count"] == 3
    assert_read(
        result, f"{TEXT_PAGE_PHRASE} Number 1.", PHRASES[1], f"{TEXT_PAGE_PHRASE} Number 3."
    )
    text = words(result["text"])
    assert text.index("Number 1") < text.index(PHRASES[1]) < text.index("Number 3")
    assert_ocr_metadata(result, pages=1)  # the typed pages are taken as they are


def test_a_pdf_with_a_text_layer_is_not_read_by_ocr() -> None:
    result = extract(typed_pdf(), "typed.pdf")

    assert result["metadata"]["ocr_pages"] == 0
    assert result["metadata"]["ocr_engine"] is None


@pytest.mark.parametrize("dpi", [150, 200])
def test_a_sheet_laid_askew_is_read_whole(dpi: int) -> None:
    # Tilted by 2 degrees, Tesseract alone read a third of this page at 200 dpi and
    # nothing at 150 dpi.
    text = english_text(8, seed=1)
    page = render_page(text, dpi=dpi, rotate_degrees=-2)

    result = extract(image_bytes(page, "PNG", dpi=(dpi, dpi)), "askew.png")

    read = words(result["text"])
    assert difflib.SequenceMatcher(None, read, words(text)).ratio() > 0.99, read


def test_a_photo_is_turned_upright_by_its_exif_orientation() -> None:
    sideways = scan(PHRASES[2]).rotate(90, expand=True)  # as a phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    content = image_bytes(sideways, "JPEG", exif=exif)

    assert_read(extract(content, "photo.jpg"), PHRASES[2])


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_a_16_bit_scan_is_read(image_format: str) -> None:
    sixteen_bit = scan(PHRASES[0]).convert("I").point(lambda level: level * 257).convert("I;16")

    assert_read(extract(image_bytes(sixteen_bit, image_format), "deep"), PHRASES[0])


def test_a_transparent_png_is_read_on_white() -> None:
    # Black text on transparent pixels that are black underneath: flattened without
    # care, the page would be all black.
    page = scan(PHRASES[0])
    transparent = Image.new("RGBA", page.size, (0, 0, 0, 0))
    transparent.putalpha(page.point(lambda value: 255 - value))

    assert_read(extract(image_bytes(transparent, "PNG"), "logo.png"), PHRASES[0])


@pytest.mark.parametrize(
    ("signature", "content_type"),
    [
        (b"\x89PNG\r\n\x1a\n", PNG),
        (b"\xff\xd8\xff\xe0", JPEG),
        (b"II*\x00", TIFF),
        (b"MM\x00*", TIFF),
    ],
    ids=["png", "jpeg", "tiff-little-endian", "tiff-big-endian"],
)
def test_an_image_is_known_by_its_signature_whatever_its_name(
    signature: bytes, content_type: str
) -> None:
    # A "%PDF-" in the first kilobyte (a PNG text chunk, say) does not make it a PDF.
    content = signature + b"tEXt %PDF-1.7 " + bytes(64)

    assert detect_content_type(content, "report.pdf") == content_type


# --- what is refused ---------------------------------------------------------------------


@pytest.mark.parametrize("make_bomb", [bomb_png, bomb_tiff], ids=["png", "tiff"])
def test_a_decompression_bomb_fails_for_good_before_it_is_decoded(make_bomb) -> None:
    content = make_bomb()  # 30,000 x 30,000 pixels in about 500 KB

    with pytest.raises(PermanentProcessingError, match=r"30000 x 30000 pixels .* too large"):
        extract(content, "bomb")


def test_a_damaged_image_fails_for_good() -> None:
    content = image_bytes(scan(PHRASES[0]), "PNG")[:400]

    with pytest.raises(PermanentProcessingError, match="damaged image"):
        extract(content, "cut.png")


def tiff_with_tag(frames: int, frame: int, tag: int, new_tag: int, new_value: int) -> bytes:
    """A little-endian TIFF whose ``frame``-th IFD has entry ``tag`` rewritten."""
    data = bytearray(multi_frame_tiff([Image.new("L", (32, 32), 255)] * frames))
    offset = struct.unpack_from("<I", data, 4)[0]
    for _ in range(frame):
        entries = struct.unpack_from("<H", data, offset)[0]
        offset = struct.unpack_from("<I", data, offset + 2 + 12 * entries)[0]
    entries = struct.unpack_from("<H", data, offset)[0]
    for entry in range(offset + 2, offset + 2 + 12 * entries, 12):
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<HHII", data, entry, new_tag, 3, 1, new_value)  # SHORT
            return bytes(data)
    raise AssertionError(f"no tag {tag} in frame {frame}")


COMPRESSION, IMAGE_WIDTH, UNUSED_TAG = 259, 256, 65000


@pytest.mark.parametrize(
    "content",
    [
        # Pillow raised KeyError (no such compression) and TypeError (a frame without
        # its width), which no handler took: failed as transient, retried to the end.
        tiff_with_tag(1, 0, COMPRESSION, COMPRESSION, 99),
        tiff_with_tag(2, 1, COMPRESSION, COMPRESSION, 99),
        tiff_with_tag(2, 1, IMAGE_WIDTH, UNUSED_TAG, 0),
    ],
    ids=["unknown-compression", "second-frame-unknown-compression", "second-frame-no-width"],
)
def test_a_tiff_with_broken_tags_fails_for_good(content: bytes) -> None:
    with pytest.raises(PermanentProcessingError, match="damaged image"):
        extract(content, "scan.tiff")


def test_with_ocr_off_scanned_pages_give_no_text_and_images_are_refused() -> None:
    scanned = scanned_pdf([scan(PHRASES[0])], dpi=DPI)

    result = run_processor(scanned, "scan.pdf", PDF, isolation="none", ocr="off")

    assert result["text"].strip() == ""
    assert result["metadata"]["ocr_pages"] == 0
    with pytest.raises(PermanentProcessingError, match="OCR, which is off"):
        run_processor(
            image_bytes(scan(PHRASES[0]), "PNG"), "a.png", PNG, isolation="none", ocr="off"
        )


# --- in the sandbox, under the caps ---------------------------------------------------------


def test_the_sandbox_reads_a_scan_and_obeys_the_ocr_setting() -> None:
    scanned = scanned_pdf([scan(PHRASES[0])], dpi=DPI)

    result = isolated(scanned, "scan.pdf", PDF)
    assert_read(result, PHRASES[0])
    assert_ocr_metadata(result, pages=1)

    # The setting travels with each document: the same sandbox, now with OCR off.
    assert isolated(scanned, "scan.pdf", PDF, ocr="off")["metadata"]["ocr_pages"] == 0
    with pytest.raises(PermanentProcessingError, match="OCR, which is off"):
        isolated(image_bytes(scan(PHRASES[0]), "PNG"), "a.png", PNG, ocr="off")


def test_an_image_bomb_fails_the_sandboxed_document_for_good() -> None:
    with pytest.raises(PermanentProcessingError, match="too large to read by OCR"):
        isolated(bomb_png(), "bomb.png", PNG)


def test_the_pixel_limit_follows_the_memory_cap() -> None:
    # 25 megapixels: read under the default 1024 MB cap (a blank page, quickly), refused
    # under 512 MB, where they would not fit beside the interpreter and the parsers.
    page = image_bytes(Image.new("L", (5000, 5000), 255), "PNG")

    assert isolated(page, "big.png", PNG)["metadata"]["ocr_pages"] == 1
    with pytest.raises(PermanentProcessingError, match=r"limit is \d+ megapixels"):
        isolated(page, "big.png", PNG, memory_mb=512)


def test_a_huge_pdf_page_is_rendered_small_enough_to_fit_the_cap() -> None:
    # A 200-inch square page holding a scan: at 300 dpi it would be a 3.6-gigapixel
    # bitmap (3.6 GB in grey), far past the 512 MB cap; it is rendered within the limit.
    document = FPDF(unit="pt", format=(14_400, 14_400))
    document.add_page()
    document.image(scan(PHRASES[1], width_inches=4), x=0, y=0, w=14_400)

    result = isolated(bytes(document.output()), "poster.pdf", PDF, memory_mb=512)

    assert result["page_count"] == 1
    assert result["metadata"]["ocr_pages"] == 1
    assert_read(result, "ferry runs every hour")


# --- loaded only when needed ---------------------------------------------------------------

_MODULES_AFTER_EXTRACT = """
import json, sys
from docqueue_app.processing import extract
result = extract(open(sys.argv[1], "rb").read(), "typed.pdf")
print(json.dumps({"text": result["text"], "tesserocr": "tesserocr" in sys.modules}))
"""


def test_a_typed_pdf_never_loads_the_ocr_engine(tmp_path) -> None:
    path = tmp_path / "typed.pdf"
    path.write_bytes(typed_pdf())

    completed = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER_EXTRACT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    report = json.loads(completed.stdout)
    assert TEXT_PAGE_PHRASE in report["text"]
    assert report["tesserocr"] is False


def test_an_unreadable_transparent_png_is_not_an_error() -> None:
    # A blank image has no text: it completes, with nothing read.
    blank = io.BytesIO()
    Image.new("RGBA", (200, 100), (0, 0, 0, 0)).save(blank, "PNG")

    result = extract(blank.getvalue(), "blank.png")

    assert result["text"] == ""
    assert result["metadata"]["ocr_pages"] == 1


# --- pages longer than Tesseract takes ------------------------------------------------------


def test_a_long_strip_scan_is_read_not_retried() -> None:
    # A till-roll or a scroll, 40,000 pixels long: 33 megapixels, well within the
    # pixel limit, but Tesseract refuses a side over 32,767 pixels ("Failed to
    # recognize. No image set?"), which failed the document as transient, retried
    # until its attempts ran out. It is read at a scale that fits.
    strip = Image.new("L", (825, 40_000), 255)
    strip.paste(scan(PHRASES[0]).convert("L"), (0, 0))

    result = extract(image_bytes(strip, "PNG", dpi=(DPI, DPI)), "receipt.png")

    assert result["page_count"] == 1
    assert_read(result, PHRASES[0])
    assert_ocr_metadata(result, pages=1)


def test_a_banner_pdf_page_is_read_not_retried() -> None:
    # 240 x 3 inches: rendered at 300 dpi it is 72,000 pixels wide.
    document = FPDF(unit="pt", format=(17_280, 216))
    document.add_page()
    document.image(scan(PHRASES[2], width_inches=4), x=0, y=0, h=216)

    result = extract(bytes(document.output()), "banner.pdf")

    assert result["metadata"]["ocr_pages"] == 1
    assert_read(result, "signed copy")
