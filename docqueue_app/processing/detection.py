"""Tell a document's type from its bytes (SPEC §4); the filename only refines text types."""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

from .docx import MAIN_PART as DOCX_MAIN_PART
from .docx import OLE2_SIGNATURE, UNREADABLE_ZIP, zip_listing_refusal
from .errors import UnsupportedContentType

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
PLAIN_TEXT = "text/plain"
MARKDOWN = "text/markdown"
CSV = "text/csv"
JSON = "application/json"
PNG = "image/png"
JPEG = "image/jpeg"
TIFF = "image/tiff"

# Read by OCR, so accepted only while it is on (DOCQUEUE_OCR=auto): uploads.py checks.
IMAGE_CONTENT_TYPES = (PNG, JPEG, TIFF)
SUPPORTED_CONTENT_TYPES = (PDF, DOCX, HTML, PLAIN_TEXT, MARKDOWN, CSV, JSON, *IMAGE_CONTENT_TYPES)

# The short name of each type, as messages and pages say it.
TYPE_NAMES = {
    PDF: "PDF",
    DOCX: "DOCX",
    HTML: "HTML",
    PLAIN_TEXT: "text",
    MARKDOWN: "Markdown",
    CSV: "CSV",
    JSON: "JSON",
    PNG: "PNG",
    JPEG: "JPEG",
    TIFF: "TIFF",
}

PDF_SIGNATURE = b"%PDF-"
PDF_SIGNATURE_WINDOW = 1024  # PDF readers accept junk before the header, up to 1 KB
ZIP_SIGNATURE = b"PK\x03\x04"
IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
    (b"II*\x00", TIFF),  # little-endian
    (b"MM\x00*", TIFF),  # big-endian
    (b"II+\x00", TIFF),  # BigTIFF
    (b"MM\x00+", TIFF),
)

# Enough text to judge the encoding; a multi-megabyte upload is not decoded whole.
_TEXT_SAMPLE_BYTES = 256 * 1024
_HTML_SNIFF_CHARS = 1024
_HTML_MARKERS = ("<!doctype html", "<html", "<head", "<body")

_TEXT_TYPES_BY_SUFFIX = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".csv": CSV,
    ".json": JSON,
    ".html": HTML,
    ".htm": HTML,
}


def detect_content_type(content: bytes, filename: str) -> str:
    """The supported content type of ``content``, one of ``SUPPORTED_CONTENT_TYPES``.

    A damaged or encrypted form of a supported type (a truncated ZIP or an OLE2
    container named ``.docx``, JSON that does not parse) is still given that type,
    so extraction can fail it with a clear reason.
    Images are detected whether OCR is on or not (uploads refuse them when it is off).
    Raises ``UnsupportedContentType`` for other binary content.
    """
    # Before the PDF window: a file that starts as an image is one, whatever its
    # first kilobyte holds (a PNG text chunk may well contain "%PDF-").
    for signature, image_type in IMAGE_SIGNATURES:
        if content.startswith(signature):
            return image_type
    if PDF_SIGNATURE in content[:PDF_SIGNATURE_WINDOW]:
        return PDF
    suffix = PurePosixPath(filename).suffix.lower()
    if content.startswith(ZIP_SIGNATURE):
        return _classify_zip(content, suffix)
    if content.startswith(OLE2_SIGNATURE):
        if suffix == ".docx":
            return DOCX
        raise UnsupportedContentType("an OLE2 container (legacy Office file), not a DOCX")
    return _classify_text(content, suffix)


def _classify_zip(content: bytes, suffix: str) -> str:
    refusal = zip_listing_refusal(content)
    if refusal is not None:
        # Listing that directory would cost memory and CPU in a web request; the
        # extractor refuses such a DOCX as a zip bomb, with the reason.
        if DOCX_MAIN_PART.encode() in content:
            return DOCX
        raise UnsupportedContentType(f"a ZIP archive with {refusal}, not a DOCX")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = set(archive.namelist())
    except UNREADABLE_ZIP:
        # NotImplementedError among them: an entry needs a ZIP version zipfile does not know.
        if suffix == ".docx":
            return DOCX
        raise UnsupportedContentType("a damaged ZIP archive") from None
    if DOCX_MAIN_PART in names:
        return DOCX
    raise UnsupportedContentType(f"a ZIP archive without {DOCX_MAIN_PART}, not a DOCX")


def load_text_detection() -> None:
    """Build now the encoding tables that the first text would otherwise build (a web
    server's first upload paid 30 ms for them)."""
    from . import encoding  # noqa: F401


def _classify_text(content: bytes, suffix: str) -> str:
    # Imported here: the web app and the worker import this module at start, and
    # the encoding tables are worth building only once a text comes.
    from .encoding import NotText, decode_text, find_declared_charset

    sample = content[:_TEXT_SAMPLE_BYTES]
    try:
        decoded = decode_text(
            sample, declared=find_declared_charset(sample), complete=len(content) == len(sample)
        )
    except NotText:
        raise UnsupportedContentType(f"binary content ({_describe_binary(content)})") from None
    if suffix in _TEXT_TYPES_BY_SUFFIX:
        return _TEXT_TYPES_BY_SUFFIX[suffix]
    return HTML if looks_like_html(decoded.text) else PLAIN_TEXT


def looks_like_html(text: str) -> bool:
    """True when the text starts with markup and one of the HTML document tags."""
    start = text.lstrip("\ufeff \t\r\n")
    if not start.startswith("<"):
        return False
    head = start[:_HTML_SNIFF_CHARS].lower()
    return any(marker in head for marker in _HTML_MARKERS)


_KNOWN_BINARY_SIGNATURES = (
    (b"GIF8", "a GIF image"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
)


def _describe_binary(content: bytes) -> str:
    for signature, description in _KNOWN_BINARY_SIGNATURES:
        if content.startswith(signature):
            return description
    return "not a PDF, DOCX or text document"
