"""HTML: the visible text of ``<body>``, with line breaks where blocks begin and end.

selectolax's Lexbor parser is the fastest permissive HTML5 parser measured
(MEASUREMENTS.md: twice lxml.html, 15-40x BeautifulSoup). Its ``text()`` either
glues blocks together ("end.Next") or, with a separator, splits words set in
inline tags ("W ord"), so the text is assembled here from a walk of the tree.
"""

from __future__ import annotations

import re

from selectolax.lexbor import LexborHTMLParser, LexborNode

from .encoding import find_declared_charset
from .text import decode_document

_INVISIBLE_TAGS = ["script", "style", "noscript", "template"]
_BLOCK_TAGS = frozenset(
    (
        *("address", "article", "aside", "blockquote", "br", "caption", "dd", "details"),
        *("dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form"),
        *("h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "li", "main", "nav"),
        *("ol", "option", "p", "pre", "section", "summary", "table", "tbody", "tfoot"),
        *("thead", "tr", "ul"),
    )
)
_CELL_TAGS = frozenset(("td", "th"))
_LINE_BREAK = "\n"
_CELL_BREAK = "\t"
_HTML_WHITESPACE = re.compile(r"[ \t\n\r\f]+")
# After text nodes are collapsed, blanks are single spaces, line and cell breaks.
# Each run of them is matched once, from its start, and replaced whole (a regex
# that can start inside a run, like "[ \t]*\n", rescans it from every position).
_LAYOUT_BLANKS = re.compile(r"[ \t\n]{2,}")


def extract_html(content: bytes) -> dict:
    decoded = decode_document(content, declared=find_declared_charset(content))
    tree = LexborHTMLParser(decoded.text)
    tree.strip_tags(_INVISIBLE_TAGS)
    body = tree.body or tree.root
    return {
        "text": visible_text(body) if body is not None else "",
        "title": _title(tree),
        "page_count": None,
        "metadata": {"encoding": decoded.encoding},
    }


def visible_text(root: LexborNode) -> str:
    """The text under ``root`` as a browser would lay it out, roughly: blocks on their own lines."""
    parts: list[str] = []
    for node in root.traverse(include_text=True):
        if node.is_comment_node:
            continue
        # A block both starts and ends a line; its end shows as the next node's sibling.
        if _is_block(node) or _is_block(node.prev):
            parts.append(_LINE_BREAK)
        elif node.tag in _CELL_TAGS:
            parts.append(_CELL_BREAK)
        if node.is_text_node:
            parts.append(_HTML_WHITESPACE.sub(" ", node.text_content or ""))
    return _tidy("".join(parts))


def _is_block(node: LexborNode | None) -> bool:
    return node is not None and node.tag in _BLOCK_TAGS


def _tidy(text: str) -> str:
    return _LAYOUT_BLANKS.sub(_collapse_blanks, text).strip()


def _collapse_blanks(run: re.Match[str]) -> str:
    """One line break for a run holding one (blank lines and indentation go), else
    its cell breaks (the spaces around cells go), else one space."""
    blanks = run.group()
    if _LINE_BREAK in blanks:
        return _LINE_BREAK
    return _CELL_BREAK * blanks.count(_CELL_BREAK) or " "


def _title(tree: LexborHTMLParser) -> str | None:
    node = tree.css_first("title")
    if node is None:
        return None
    return _HTML_WHITESPACE.sub(" ", node.text()).strip() or None
