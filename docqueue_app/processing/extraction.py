"""The built-in processor: pick the extractor for a content type and tidy its result."""

from __future__ import annotations

from collections.abc import Callable

from . import detection
from .docx import extract_docx
from .errors import UnsupportedContentType
from .html import extract_html
from .pdf import extract_pdf
from .text import extract_csv, extract_json, extract_markdown, extract_plain_text

MAX_TEXT_CHARS = 20_000_000

_EXTRACTORS: dict[str, Callable[[bytes], dict]] = {
    detection.PDF: extract_pdf,
    detection.DOCX: extract_docx,
    detection.HTML: extract_html,
    detection.PLAIN_TEXT: extract_plain_text,
    detection.MARKDOWN: extract_markdown,
    detection.CSV: extract_csv,
    detection.JSON: extract_json,
}


def extract(content: bytes, filename: str, content_type: str | None = None) -> dict:
    """Extract ``{"text", "title", "page_count", "metadata"}`` from one document.

    ``content_type`` is detected from the bytes when not given. Raises
    ``PermanentProcessingError`` for input that can never succeed (encrypted,
    damaged, a zip bomb, unsupported); ``metadata["encoding"]`` names the charset
    of text formats.
    """
    if content_type is None:
        content_type = detection.detect_content_type(content, filename)
    extractor = _EXTRACTORS.get(content_type)
    if extractor is None:
        raise UnsupportedContentType(f"no extractor for content type {content_type!r}")
    return _tidy(extractor(content))


def _tidy(result: dict) -> dict:
    # PostgreSQL text columns cannot hold NUL, and a capped text keeps the
    # database row and the worker's memory bounded whatever the format.
    text = result["text"].replace("\x00", "")
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS]
        result["metadata"]["text_truncated"] = True
    result["text"] = text
    if result["title"] is not None:
        result["title"] = result["title"].replace("\x00", "").strip() or None
    return result
