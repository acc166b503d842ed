"""HTML: the visible text of ``<body>``, with line breaks where blocks begin and end.

selectolax's Lexbor parser is the fastest permissive HTML5 parser measured
(MEASUREMENTS.md: twice lxml.html, 15-40x BeautifulSoup). Its ``text()`` either
glues blocks together ("end.Next") or, with a separator, splits words set in
inline tags ("W ord"), so the text is assembled here from a walk of the tree.

Lexbor is quadratic in the depth of the tree: each block start tag, misnested end
tag or reopened formatting element scans the stack of open elements, so 400 KB of
``<div>`` takes a minute. It is quadratic in the options of one ``<select>`` too
(it scans them for each option it inserts), so an option there counts as a level.
A linear pre-scan estimates that depth first; past MAX_TREE_DEPTH the text is
taken by a linear strip of the tags instead.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

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


# Chromium caps the tree at 512 levels too. Under 500-1500 open elements Lexbor
# needs 0.3-1.5 s per MB of the worst markup (each tag scanning them); the estimate
# may fall short of the real depth by up to 3x (<table><caption><div>...), so even
# a 50 MB upload stays well below the processing time cap. Ordinary pages nest
# below 100 (the largest rustdoc pages: 23).
MAX_TREE_DEPTH = 512


def extract_html(content: bytes) -> dict:
    decoded = decode_document(content, declared=find_declared_charset(content))
    if estimated_tree_depth(decoded.text) > MAX_TREE_DEPTH:
        return {
            "text": stripped_text(decoded.text),
            "title": _stripped_title(decoded.text),
            "page_count": None,
            "metadata": {"encoding": decoded.encoding},
        }
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


# --- the linear pre-scan and fallback ------------------------------------------------

# One pass over the markup; comments and raw text (scripts, styles) are matched
# whole. No part scans past the next "<", so an unclosed "<a " or "<script "
# repeated costs linear time, never a rescan to the end of the document.
_MARKUP = re.compile(
    r"<!--(?:.*?-->|.*)"
    r"|(?P<raw_tag><(?P<raw>script|style)\b[^<>]*>).*?(?:</(?P=raw)\b[^<>]*>|\Z)"
    r"|<(?P<end>/?)(?P<name>[a-zA-Z][^\s/<>]*)(?P<attributes>[^<>]*)>"
    r"|<[!?/][^<>]*>",
    re.DOTALL | re.IGNORECASE,
)
_HIDDEN_ELEMENTS = re.compile(
    r"<(noscript|template|title)\b[^<>]*>.*?(?:</\1\b[^<>]*>|\Z)", re.DOTALL | re.IGNORECASE
)
_TITLE = re.compile(r"<title\b[^<>]*>(.*?)(?:</title\b[^<>]*>|\Z)", re.DOTALL | re.IGNORECASE)
# Elements that never hold others, or whose end tag is implied by a sibling.
# Not rb, rt, rp (a sibling closes them only inside <ruby>) nor optgroup (only
# inside <select>): elsewhere they nest, like any element.
_UNCOUNTED_TAGS = frozenset(
    (
        *("area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image"),
        *("img", "input", "keygen", "link", "meta", "param", "source", "track", "wbr"),
        *("p", "li", "dt", "dd", "tr", "td", "th", "option", "thead", "tbody", "tfoot"),
        *("colgroup", "caption", "html", "head", "body"),
    )
)
# In a <ruby>, a new annotation closes the open one; rb and rtc close an rtc too.
_RUBY_ANNOTATION_TAGS = frozenset(("rb", "rt", "rp"))
_RUBY_TAGS = _RUBY_ANNOTATION_TAGS | {"rtc"}
_RTC_CLOSING_TAGS = frozenset(("rb", "rtc"))
# Formatting elements stay in the active formatting list after their block ends and
# are reopened in the next one: counted until their own end tag.
_FORMATTING_TAGS = frozenset(
    ("a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong"),
) | {"tt", "u"}
# Scope boundaries: an end tag does not close an element below one of them.
_SCOPE_TAGS = frozenset(
    (
        *("applet", "marquee", "object", "table", "mi", "mo", "mn", "ms", "mtext"),
        *("annotation-xml", "foreignobject", "desc", "title"),
    )
)
# Special elements: an end tag of an ordinary element does not close one below them.
_SPECIAL_TAGS = _SCOPE_TAGS | {
    *("address", "article", "aside", "blockquote", "button", "center", "details"),
    *("dialog", "dir", "div", "dl", "fieldset", "figcaption", "figure", "footer", "form"),
    *("frameset", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "iframe"),
    *("listing", "main", "menu", "nav", "noembed", "noframes", "ol", "plaintext", "pre"),
    *("search", "section", "select", "summary", "textarea", "ul", "xmp"),
}
_FOREIGN_ROOTS = frozenset(("svg", "math"))
_HTML_INTEGRATION_POINTS = frozenset(
    ("foreignobject", "desc", "title", "mi", "mo", "mn", "ms", "mtext", "annotation-xml")
)
# An HTML tag in SVG or MathML content closes it.
_FOREIGN_BREAKOUT_TAGS = frozenset(
    (
        *("b", "big", "blockquote", "body", "br", "center", "code", "dd", "div", "dl", "dt"),
        *("em", "embed", "font", "h1", "h2", "h3", "h4", "h5", "h6", "head", "hr", "i", "img"),
        *("li", "listing", "menu", "meta", "nobr", "ol", "p", "pre", "ruby", "s", "small"),
        *("span", "strong", "strike", "sub", "sup", "table", "tt", "u", "ul", "var"),
    )
)


@dataclass
class _OpenSelect:
    """An open <select>: its place on the stack, and the options put in it so far."""

    position: int
    options: int = 0


class _OpenElements:
    """A rough stack of open elements: pushed by start tags, cut back by end tags
    only where the HTML tree builder surely closes them too, so it can overestimate
    the depth of the tree but not underestimate it by more than a constant factor."""

    def __init__(self) -> None:
        self.names: list[str] = []
        # For each element, the position of the topmost special element / scope
        # boundary at or below it (-1: none).
        self.specials: list[int] = []
        self.scopes: list[int] = []
        self.positions: dict[str, list[int]] = {}
        # (position, is SVG/MathML root) of the foreign roots and integration points.
        self.namespaces: list[tuple[int, bool]] = []
        self.selects: list[_OpenSelect] = []

    def depth(self) -> int:
        """How many elements a tag may make the tree builder scan: the open ones and
        the options of the innermost open <select>."""
        return len(self.names) + (self.selects[-1].options if self.selects else 0)

    def in_foreign_content(self) -> bool:
        return bool(self.namespaces) and self.namespaces[-1][1]

    def open(self, name: str) -> None:
        """The start tag of ``name``, not a formatting element."""
        if name in _RUBY_TAGS:
            self._close_ruby_annotations(closes_rtc=name in _RTC_CLOSING_TAGS)
        if self.selects and name in ("option", "optgroup"):
            # A sibling closes them here, but each option costs a scan of the others
            # (closing options or their groups does not spare it).
            if name == "option":
                self.selects[-1].options += 1
        elif name not in _UNCOUNTED_TAGS:
            self.push(name)

    def push(self, name: str) -> None:
        position = len(self.names)
        self.names.append(name)
        self.specials.append(position if name in _SPECIAL_TAGS else self._top(self.specials))
        self.scopes.append(position if name in _SCOPE_TAGS else self._top(self.scopes))
        self.positions.setdefault(name, []).append(position)
        if name in _FOREIGN_ROOTS or (name in _HTML_INTEGRATION_POINTS and self.namespaces):
            self.namespaces.append((position, name in _FOREIGN_ROOTS))
        if name == "select":
            self.selects.append(_OpenSelect(position))

    def close(self, name: str) -> None:
        """The end tag of ``name``: pop it and what is above it, unless blocked."""
        positions = self.positions.get(name)
        if not positions:
            return
        position = positions[-1]
        if self.selects and position < self.selects[-1].position:
            return  # Lexbor ignores the end tag of an element around an open <select>
        blockers = self.scopes if name in _SPECIAL_TAGS else self.specials
        if self._top(blockers) <= position:
            self.pop_to(position)

    def leave_foreign_content(self) -> None:
        while self.in_foreign_content():
            self.pop_to(self.namespaces[-1][0])

    def pop_to(self, position: int) -> None:
        for name in self.names[position:]:
            self.positions[name].pop()
        del self.names[position:], self.specials[position:], self.scopes[position:]
        while self.namespaces and self.namespaces[-1][0] >= position:
            self.namespaces.pop()
        while self.selects and self.selects[-1].position >= position:
            self.selects.pop()

    def _close_ruby_annotations(self, closes_rtc: bool) -> None:
        if not self._in_scope("ruby"):
            return
        closed = _RUBY_TAGS if closes_rtc else _RUBY_ANNOTATION_TAGS
        while self.names and self.names[-1] in closed:
            self.pop_to(len(self.names) - 1)

    def _in_scope(self, name: str) -> bool:
        positions = self.positions.get(name)
        return bool(positions) and positions[-1] > self._top(self.scopes)

    @staticmethod
    def _top(stack: list[int]) -> int:
        return stack[-1] if stack else -1


def estimated_tree_depth(text: str, limit: int = MAX_TREE_DEPTH) -> int:
    """The deepest nesting of elements (and reopened formatting elements) the HTML
    tree builder may reach on ``text``, estimated in one linear pass, from above.
    Stops at the first depth past ``limit``; 0 when there are too few tags to pass it."""
    if text.count("<") <= limit:
        return 0
    stack = _OpenElements()
    formatting: dict[str, int] = {}
    open_formatting = deepest = 0
    position = 0
    while match := _MARKUP.search(text, position):
        position = match.end()
        name = match["name"]
        if match["raw"] and stack.in_foreign_content():
            # An SVG <script> or <style> holds markup.
            name, position = match["raw"], match.end("raw_tag")
        if name is None:
            continue
        name = name.lower()
        if match["end"]:
            if name in _FORMATTING_TAGS:
                if formatting.get(name):
                    formatting[name] -= 1
                    open_formatting -= 1
            elif name not in _UNCOUNTED_TAGS:
                stack.close(name)
            continue
        if name in _FOREIGN_BREAKOUT_TAGS and stack.in_foreign_content():
            stack.leave_foreign_content()
        if name in _FORMATTING_TAGS:
            # A new <a> or <nobr> closes the open one.
            if name in ("a", "nobr") and formatting.get(name):
                continue
            formatting[name] = formatting.get(name, 0) + 1
            open_formatting += 1
        elif not ((match["attributes"] or "").endswith("/") and stack.in_foreign_content()):
            stack.open(name)
        deepest = max(deepest, stack.depth() + open_formatting)
        if deepest > limit:
            break
    return deepest


def stripped_text(text: str) -> str:
    """The text of an HTML document without parsing it: tags taken out (line and
    cell breaks for blocks and cells), scripts, styles and the title dropped."""
    text = _HIDDEN_ELEMENTS.sub(" ", text)
    parts: list[str] = []
    start = 0
    for match in _MARKUP.finditer(text):
        parts.append(_HTML_WHITESPACE.sub(" ", html.unescape(text[start : match.start()])))
        start = match.end()
        name = (match["name"] or "").lower()
        if name in _BLOCK_TAGS:
            parts.append(_LINE_BREAK)
        elif name in _CELL_TAGS:
            parts.append(_CELL_BREAK)
    parts.append(_HTML_WHITESPACE.sub(" ", html.unescape(text[start:])))
    return _tidy("".join(parts))


def _stripped_title(text: str) -> str | None:
    match = _TITLE.search(text)
    if match is None:
        return None
    return _HTML_WHITESPACE.sub(" ", html.unescape(match[1])).strip() or None
