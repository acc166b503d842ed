"""Plain text, Markdown, CSV and JSON: the decoded text is the extracted text."""

from __future__ import annotations

import json
import re

from .encoding import DecodedText, NotText, decode_text, find_declared_charset
from .errors import PermanentProcessingError

_MARKDOWN_TITLE = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_MARKDOWN_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def extract_plain_text(content: bytes) -> dict:
    # Plain text may be XML, which names its encoding in a declaration.
    decoded = decode_document(content, declared=find_declared_charset(content))
    return _result(decoded, title=None)


def extract_markdown(content: bytes) -> dict:
    decoded = decode_document(content)
    return _result(decoded, title=markdown_title(decoded.text))


def extract_csv(content: bytes) -> dict:
    return _result(decode_document(content), title=None)


def extract_json(content: bytes) -> dict:
    """The document text as decoded, once it is known to parse (so values are searchable)."""
    decoded = decode_document(content)
    try:
        json.loads(decoded.text)
    except json.JSONDecodeError as exc:
        raise PermanentProcessingError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise PermanentProcessingError("invalid JSON: nested too deeply to parse") from None
    return _result(decoded, title=None)


def decode_document(content: bytes, declared: str | None = None) -> DecodedText:
    """Decode a whole text document; binary bytes are a permanent failure."""
    try:
        return decode_text(content, declared=declared)
    except NotText as exc:
        raise PermanentProcessingError(f"not a text document: {exc}") from None


def markdown_title(text: str) -> str | None:
    """The first level-1 ATX heading (``# Title``) outside code fences, if any."""
    in_fence = False
    for line in text.splitlines():
        if _MARKDOWN_FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else _MARKDOWN_TITLE.match(line)
        if match:
            return match.group(1).strip()
    return None


def _result(decoded: DecodedText, title: str | None) -> dict:
    return {
        "text": decoded.text,
        "title": title,
        "page_count": None,
        "metadata": {"encoding": decoded.encoding},
    }
