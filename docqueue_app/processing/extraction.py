"""The built-in processor: pick the extractor for a content type and tidy its result."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from . import detection
from .errors import UnsupportedContentType

MAX_TEXT_CHARS = 20_000_000

# Content type -> (module, function) of its extractor. A module is imported with
# the first document of its type, so a process loads only the parsers it uses.
_EXTRACTORS: dict[str, tuple[str, str]] = {
    detection.PDF: ("pdf", "extract_pdf"),
    detection.DOCX: ("docx", "extract_docx"),
    detection.HTML: ("html", "extract_html"),
    detection.PLAIN_TEXT: ("text", "extract_plain_text"),
    detection.MARKDOWN: ("text", "extract_markdown"),
    detection.CSV: ("text", "extract_csv"),
    detection.JSON: ("text", "extract_json"),
    **{image_type: ("images", "extract_image") for image_type in detection.IMAGE_CONTENT_TYPES},
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
    return _tidy(_extractor_for(content_type)(content))


def _extractor_for(content_type: str) -> Callable[[bytes], dict]:
    try:
        module_name, function_name = _EXTRACTORS[content_type]
    except KeyError:
        raise UnsupportedContentType(f"no extractor for content type {content_type!r}") from None
    return getattr(import_module(f"{__package__}.{module_name}"), function_name)


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
