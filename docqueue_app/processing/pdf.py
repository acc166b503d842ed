"""PDF: the text of every page, the title and metadata, with pypdfium2.

pypdfium2 (PDFium) is the fastest permissive extractor and the best in quality
(RESEARCH.md §3: 10-25x pypdf). PDFium is not thread-safe, even across documents,
so one lock serialises it within a process; production runs each document in its
own child process anyway, where the lock is never contended.

A page without a text layer (a scan) is rendered by PDFium and read by OCR while
DOCQUEUE_OCR is on; a page with any text is taken as it is, never read twice.
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass, field

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from .errors import PermanentProcessingError
from .options import current_options

MAX_PAGES = 5000
MAX_TEXT_CHARS = 20_000_000
PAGE_SEPARATOR = "\n\n"
# Resolution a scanned page is rendered at for OCR. On the corpus's scanned book
# pages Tesseract came closest to the file's own OCR layer at 300 dpi (1.4% apart,
# against 1.9% at 150 and 200 dpi), for a third more CPU than at 150 dpi; typed
# 8 pt text read without error at all three (README "OCR", bench/ocr.py). A page
# too large for the OCR pixel limit at this resolution (a 200-inch page is 60,000
# pixels wide) is rendered smaller, to fit.
OCR_DPI = 300
POINTS_PER_INCH = 72

_PDFIUM_LOCK = threading.Lock()

# PDFium turns a soft hyphen into U+FFFE and ends lines with CR LF.
_TEXT_FIXES = str.maketrans({"\ufffe": None, "\r": "\n", "\x00": None})

_METADATA_KEYS = {
    "Author": "author",
    "Subject": "subject",
    "Keywords": "keywords",
    "Creator": "creator",
    "Producer": "producer",
    "CreationDate": "creation_date",
    "ModDate": "modification_date",
}


def extract_pdf(content: bytes) -> dict:
    with _PDFIUM_LOCK:
        document = _open(content)
        try:
            return _extract_open_document(document)
        finally:
            document.close()


def _open(content: bytes) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(content)
    except pdfium.PdfiumError as exc:
        raise PermanentProcessingError(_describe_load_failure(exc, content)) from None


def _describe_load_failure(exc: pdfium.PdfiumError, content: bytes) -> str:
    # PDFium's last-error code can be stale (a fuzzed file was reported as
    # "Incorrect password" right after a real encrypted one), so a password
    # error only counts when the file has an encryption dictionary.
    if exc.err_code == pdfium_c.FPDF_ERR_PASSWORD and b"/Encrypt" in content:
        return "PDF is encrypted with a password"
    if exc.err_code == pdfium_c.FPDF_ERR_SECURITY:
        return "PDF is encrypted with an unsupported security handler"
    if exc.err_code in (pdfium_c.FPDF_ERR_FORMAT, pdfium_c.FPDF_ERR_FILE):
        return f"damaged PDF: {_pdfium_reason(exc)}"
    return "damaged PDF: PDFium cannot parse the file"


def _pdfium_reason(exc: pdfium.PdfiumError) -> str:
    message = str(exc)  # "Failed to load document (PDFium: Data format error)."
    start = message.find("PDFium: ")
    return message[start + len("PDFium: ") :].rstrip(".)") if start >= 0 else message


def _extract_open_document(document: pdfium.PdfDocument) -> dict:
    page_count = len(document)
    pages = _read_pages(document, min(page_count, MAX_PAGES))
    if page_count and pages.unreadable == page_count:
        raise PermanentProcessingError("damaged PDF: no page could be read")
    metadata: dict = {
        name: value
        for key, name in _METADATA_KEYS.items()
        if (value := _metadata_value(document, key).strip())
    }
    metadata["pdf_version"] = _pdf_version(document)
    metadata["ocr_pages"] = pages.ocr_pages
    metadata["ocr_engine"] = _ocr_engine_name() if pages.ocr_pages else None
    if page_count > MAX_PAGES:
        metadata["pages_extracted"] = MAX_PAGES
    if pages.unreadable:
        metadata["unreadable_pages"] = pages.unreadable
    if pages.text_truncated:
        metadata["text_truncated"] = True
    return {
        "text": PAGE_SEPARATOR.join(pages.texts),
        "title": _metadata_value(document, "Title").strip() or None,
        "page_count": page_count,
        "metadata": metadata,
    }


@dataclass
class _Pages:
    """What reading the pages gave: their texts, and how each was come by."""

    texts: list[str] = field(default_factory=list)
    unreadable: int = 0
    text_truncated: bool = False
    ocr_pages: int = 0


def _read_pages(document: pdfium.PdfDocument, count: int) -> _Pages:
    """The text of the first ``count`` pages, up to MAX_TEXT_CHARS in all."""
    pages = _Pages()
    chars = 0
    for index in range(count):
        try:
            text = _page_text(document, index, pages)
        except pdfium.PdfiumError:
            pages.unreadable += 1
            continue
        if chars + len(text) > MAX_TEXT_CHARS:
            pages.texts.append(text[: MAX_TEXT_CHARS - chars])
            pages.text_truncated = True
            return pages
        chars += len(text) + len(PAGE_SEPARATOR)
        pages.texts.append(text)
    return pages


def _page_text(document: pdfium.PdfDocument, index: int, pages: _Pages) -> str:
    page = document[index]
    try:
        text = _text_layer(page)
        if text.strip() or not _needs_ocr(page):
            return text
        return _read_by_ocr(page, pages)
    finally:
        page.close()


def _text_layer(page: pdfium.PdfPage) -> str:
    text_page = page.get_textpage()
    try:
        return text_page.get_text_range().replace("\r\n", "\n").translate(_TEXT_FIXES)
    finally:
        text_page.close()


def _needs_ocr(page: pdfium.PdfPage) -> bool:
    # No text, but something drawn: a scan, or text turned into outlines. A blank
    # page has nothing to read.
    return current_options().ocr_enabled and pdfium_c.FPDFPage_CountObjects(page.raw) > 0


def _read_by_ocr(page: pdfium.PdfPage, pages: _Pages) -> str:
    # Imported here: the OCR engine loads with the first scanned page, so a process
    # that never meets one never loads it (and the fork server's preload skips it).
    from . import ocr

    width, height = page.get_size()  # in points
    scale = OCR_DPI / POINTS_PER_INCH
    pixels = width * height * scale * scale
    limit = ocr.pixel_limit()
    if pixels > limit:
        scale *= math.sqrt(limit / pixels)
    # Rendered straight to 8-bit grey: a quarter of the memory of colour.
    bitmap = page.render(scale=scale, grayscale=True, force_bitmap_format=pdfium_c.FPDFBitmap_Gray)
    try:
        text = ocr.read_page(bitmap.to_pil(), dpi=scale * POINTS_PER_INCH)
    finally:
        bitmap.close()
    pages.ocr_pages += 1
    return text


def _ocr_engine_name() -> str:
    from . import ocr  # loaded already: a page was read by OCR

    return ocr.engine_name()


def _metadata_value(document: pdfium.PdfDocument, key: str) -> str:
    """The Info dictionary's ``key`` ("" when absent), bad UTF-16 shown as U+FFFD.

    pypdfium2's ``get_metadata_value`` decodes strictly, and a string with an
    unpaired surrogate (``<FEFFD800>``) failed the whole document over a nicety.
    """
    encoded_key = key.encode("ascii") + b"\x00"
    size = pdfium_c.FPDF_GetMetaText(document.raw, encoded_key, None, 0)
    if size <= 2:  # only the UTF-16 terminator
        return ""
    buffer = ctypes.create_string_buffer(size)
    pdfium_c.FPDF_GetMetaText(document.raw, encoded_key, buffer, size)
    return buffer.raw[: size - 2].decode("utf-16-le", errors="replace")


def _pdf_version(document: pdfium.PdfDocument) -> str | None:
    version = document.get_version()  # 17 for PDF 1.7; None when unknown
    return f"{version // 10}.{version % 10}" if version else None
