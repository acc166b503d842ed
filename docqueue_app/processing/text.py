"""Plain text, Markdown, CSV and JSON: the decoded text is the extracted text."""

from __future__ import annotations

import json
import re

from .encoding import DecodedText, NotText, decode_text, find_declared_charset
from .errors import PermanentProcessingError
from .json_syntax import json_syntax_error

_MARKDOWN_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_BLANKS = " \t"  # what separates a heading's marks from its text (CommonMark)
# The title is looked for with string methods, not a regex: any regex with two
# adjacent quantified parts that can both take blanks (the opening marks, the
# text, the closing sequence) backtracks quadratically on a long heading line.
# A heading text longer than this is not a title (a paragraph marked by mistake,
# or hostile), and a first heading beyond the first megabyte is not the
# document's title either: the work and the title stay bounded.
MAX_TITLE_CHARS = 500
TITLE_SCAN_CHARS = 1024 * 1024


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
    """The document text as decoded, once it is known to be JSON (so values are searchable)."""
    decoded = decode_document(content)
    error = json_error(decoded.text)
    if error is not None:
        raise PermanentProcessingError(f"invalid JSON: {error}")
    return _result(decoded, title=None)


def json_error(text: str) -> str | None:
    """What makes ``text`` not JSON, or None; at any depth, for any number."""
    try:
        # Integers stay strings: int() refuses more than 4,300 digits, and only the
        # syntax matters here.
        json.loads(text, parse_int=str)
    except RecursionError:
        # The json module recurses once per level; the loop is slower but has no limit.
        return json_syntax_error(text)
    except ValueError as exc:  # JSONDecodeError, or anything else about the text
        return str(exc)
    return None


def decode_document(content: bytes, declared: str | None = None) -> DecodedText:
    """Decode a whole text document; binary bytes are a permanent failure."""
    try:
        return decode_text(content, declared=declared)
    except NotText as exc:
        raise PermanentProcessingError(f"not a text document: {exc}") from None


def markdown_title(text: str) -> str | None:
    """The first level-1 ATX heading (``# Title``) outside code fences, if any."""
    lines = text[:TITLE_SCAN_CHARS].splitlines()
    if len(text) > TITLE_SCAN_CHARS:
        lines.pop()  # cut short: not the whole line
    in_fence = False
    for line in lines:
        if _MARKDOWN_FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            title = _heading_text(line)
            if title is not None and len(title) <= MAX_TITLE_CHARS:
                return title
    return None


def _heading_text(line: str) -> str | None:
    """The text of a level-1 ATX heading line, without its closing ``#`` sequence.

    None when ``line`` is not one: up to three spaces, ``#``, a blank, then at least
    one more character (a blank too: the heading is then empty).
    """
    marks = line.lstrip(" ")
    if len(line) - len(marks) > 3 or len(marks) < 3 or not marks.startswith(("# ", "#\t")):
        return None
    text = marks[1:].strip(_BLANKS)
    before_closing = text.rstrip("#")
    if before_closing.rstrip(_BLANKS) != before_closing:  # "#"s after a blank close it
        text = before_closing.rstrip(_BLANKS)
    return text.strip()


def _result(decoded: DecodedText, title: str | None) -> dict:
    return {
        "text": decoded.text,
        "title": title,
        "page_count": None,
        "metadata": {"encoding": decoded.encoding},
    }
