"""PDF: the text of every page, the title and metadata, with pypdfium2.

pypdfium2 (PDFium) is the fastest permissive extractor and the best in quality
(RESEARCH.md §3: 10-25x pypdf). PDFium is not thread-safe, even across documents,
so one lock serialises it within a process; production runs each document in its
own child process anyway, where the lock is never contended.
"""

from __future__ import annotations

import threading

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from .errors import PermanentProcessingError

MAX_PAGES = 5000
MAX_TEXT_CHARS = 20_000_000
PAGE_SEPARATOR = "\n\n"

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
    page_texts, unreadable_pages, text_truncated = _page_texts(document, min(page_count, MAX_PAGES))
    if page_count and unreadable_pages == page_count:
        raise PermanentProcessingError("damaged PDF: no page could be read")
    raw_metadata = document.get_metadata_dict(skip_empty=True)
    metadata: dict = {
        name: raw_metadata[key].strip()
        for key, name in _METADATA_KEYS.items()
        if key in raw_metadata
    }
    metadata["pdf_version"] = _pdf_version(document)
    if page_count > MAX_PAGES:
        metadata["pages_extracted"] = MAX_PAGES
    if unreadable_pages:
        metadata["unreadable_pages"] = unreadable_pages
    if text_truncated:
        metadata["text_truncated"] = True
    return {
        "text": PAGE_SEPARATOR.join(page_texts),
        "title": raw_metadata.get("Title", "").strip() or None,
        "page_count": page_count,
        "metadata": metadata,
    }


def _page_texts(document: pdfium.PdfDocument, pages: int) -> tuple[list[str], int, bool]:
    """The text of the first ``pages`` pages, the number that failed, and whether the cap cut it."""
    texts: list[str] = []
    unreadable = 0
    chars = 0
    for index in range(pages):
        try:
            text = _page_text(document, index)
        except pdfium.PdfiumError:
            unreadable += 1
            continue
        if chars + len(text) > MAX_TEXT_CHARS:
            texts.append(text[: MAX_TEXT_CHARS - chars])
            return texts, unreadable, True
        chars += len(text) + len(PAGE_SEPARATOR)
        texts.append(text)
    return texts, unreadable, False


def _page_text(document: pdfium.PdfDocument, index: int) -> str:
    page = document[index]
    try:
        text_page = page.get_textpage()
        try:
            return text_page.get_text_range().replace("\r\n", "\n").translate(_TEXT_FIXES)
        finally:
            text_page.close()
    finally:
        page.close()


def _pdf_version(document: pdfium.PdfDocument) -> str | None:
    version = document.get_version()  # 17 for PDF 1.7; None when unknown
    return f"{version // 10}.{version % 10}" if version else None
