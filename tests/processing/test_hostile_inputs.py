"""Extraction stays linear on hostile input (long blank runs in headings and HTML).

Each input took minutes with the former regexes (quadratic backtracking) and takes
well under a second now. The extraction runs in a child process killed after
TIME_CAP_SECONDS, so a quadratic regression fails the test by timing out, never
by a flaky comparison of durations.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docqueue_app.processing import extract, run_processor
from docqueue_app.processing.html import MAX_TREE_DEPTH, _tidy, estimated_tree_depth
from docqueue_app.processing.text import MAX_TITLE_CHARS, TITLE_SCAN_CHARS, markdown_title

from .test_extractors import DOCX, make_docx, paragraph, word_part

MARKDOWN = "text/markdown"
HTML = "text/html"
KB = 1024
# The linear code needs about a second at most (1 MB of HTML), the child included;
# the quadratic code needed minutes for each of these inputs.
TIME_CAP_SECONDS = 30


def extract_isolated(content: bytes, filename: str, content_type: str) -> dict:
    return run_processor(
        content,
        filename,
        content_type,
        processor="docqueue_app.processing:extract",
        isolation="subprocess",
        timeout_seconds=TIME_CAP_SECONDS,
    )


@pytest.mark.parametrize(
    ("content", "title"),
    [
        pytest.param(b" " * 200 * KB, None, id="200 KB of spaces"),
        pytest.param(b"# " + b" \t" * 100 * KB, None, id="'# ' then 200 KB of blanks"),
        pytest.param(b"#" + b" \t" * 100_000 + b"x", "x", id="'#', 200 KB of blanks, 'x'"),
        # A blank run inside the heading text: the old regex tried each split of it.
        pytest.param(b"# a" + b" " * 200 * KB + b"x", None, id="blank run inside a title"),
        pytest.param(b"# a" + b" \t" * 100 * KB + b"#x", None, id="blanks before a non-closing #"),
        pytest.param(
            (b"# a" + b" " * 200 * KB + b"x\n") + b"# Real\n", "Real", id="long heading, then one"
        ),
    ],
)
def test_markdown_with_long_blank_runs_is_extracted_in_time(
    content: bytes, title: str | None
) -> None:
    result = extract_isolated(content, "hostile.md", MARKDOWN)

    assert result["text"] == content.decode()
    assert result["title"] == title


@pytest.mark.parametrize(
    ("content", "text"),
    [
        pytest.param(b"<p>" + b" \n\t " * 50_000 + b"x</p>", "x", id="one blank text node"),
        pytest.param(
            b"<table><tr><td>" + b" \t" * 50 * KB + b"x</td><td>y</td></tr></table>",
            "x\ty",
            id="a cell of 100 KB of blanks",
        ),
        # Separate text nodes are collapsed one by one, leaving long runs of spaces
        # and cell breaks that the old "[ \t]*\n" and " *\t *" rescanned from each position.
        pytest.param(b"<p>a" + b" <wbr>" * 170_000 + b"x</p>", "a x", id="1 MB of inline spaces"),
        pytest.param(
            b"<table><tr><td>a" + b" <wbr>" * 170_000 + b"x</td></tr></table>z",
            "a x\nz",
            id="1 MB of inline spaces in a cell",
        ),
        pytest.param(
            b"<table><tr><td>a" + b"<td> " * 200_000, "a", id="1 MB of empty cells, no end"
        ),
    ],
)
def test_html_with_long_blank_runs_is_extracted_in_time(content: bytes, text: str) -> None:
    assert extract_isolated(content, "hostile.html", HTML)["text"] == text


def test_docx_part_named_with_thousands_of_digits_is_read() -> None:
    # int() refuses more than 4300 digits: the part name once failed the document
    # with a ValueError, retried as transient.
    header = word_part(paragraph("Header"), root="hdr")
    content = make_docx(paragraph("Body"), {f"word/header{'9' * 5000}.xml": header})

    assert extract(content, "hostile.docx", DOCX)["text"] == "Body\nHeader"


def test_docx_headers_keep_their_numeric_order() -> None:
    headers = {f"word/header{n}.xml": word_part(paragraph(f"H{n}"), root="hdr") for n in (10, 2, 1)}

    assert extract(make_docx(paragraph("Body"), headers), "a.docx", DOCX)["text"] == (
        "Body\nH1\nH2\nH10"
    )


# --- the caps, and the same results as the former regexes on ordinary input ----------


def test_markdown_title_longer_than_the_cap_is_not_a_title() -> None:
    longest = "t" * MAX_TITLE_CHARS

    assert markdown_title(f"# {longest}\n") == longest
    assert markdown_title(f"# {longest}x\n# Short\n") == "Short"


def test_markdown_title_is_looked_for_in_the_first_megabyte_only() -> None:
    filler = "text\n" * (TITLE_SCAN_CHARS // 5)

    assert markdown_title(filler[:-10] + "# Title\n") == "Title"
    assert markdown_title(filler + "# Late\n") is None
    # A heading cut by the limit is not read as a shorter one.
    assert markdown_title(filler[:-5] + "# Title cut short\n") is None


_FORMER_MARKDOWN_TITLE = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")


def former_markdown_title(text: str) -> str | None:
    for line in text.splitlines():
        match = _FORMER_MARKDOWN_TITLE.match(line)
        if match:
            return match.group(1).strip()
    return None


def former_tidy(text: str) -> str:
    text = re.sub(r"[ \t]*\n[ \t\n]*", "\n", text)
    text = re.sub(r" *\t *", "\t", text)
    return re.sub(r" {2,}", " ", text).strip()


@given(st.lists(st.sampled_from([" ", "\t", "#", "a", "\n", "\r", "\xa0"]), max_size=30))
def test_markdown_title_matches_the_former_regex(characters: list[str]) -> None:
    text = "".join(characters)

    assert markdown_title(text) == former_markdown_title(text)


@given(st.lists(st.sampled_from([" ", "\t", "\n", "a", "\xa0"]), max_size=30))
def test_html_whitespace_tidying_matches_the_former_regexes(characters: list[str]) -> None:
    text = "".join(characters)

    assert _tidy(text) == former_tidy(text)


# --- deep nesting: Lexbor scans its stack of open elements for each tag -------------

# Lexbor ran past TIME_CAP_SECONDS on each input ("p distinct b" made it fail
# with "Can't parse HTML"); the pre-scan sends them to a linear fallback.


def nested(opening: str, kb: int = 800) -> bytes:
    """``opening`` repeated to about ``kb`` KB, the word "deep" inside, then "after"
    (in a paragraph of its own). ``{i}`` in ``opening`` counts the repetitions."""
    count = kb * KB // len(opening.format(i=0))
    openings = "".join(opening.format(i=i) for i in range(count))
    return f"{openings}deep<p>after".encode()


@pytest.mark.parametrize(
    "content",
    [
        # A block start tag scans the stack of open elements.
        pytest.param(nested("<div>"), id="div"),
        pytest.param(nested("<ul><li>"), id="ul li"),
        pytest.param(nested("<dl>"), id="dl"),
        pytest.param(nested("<pre>"), id="pre"),
        pytest.param(nested("<div/>"), id="self-closing div"),
        # Formatting elements reopened in each block (the active formatting list).
        pytest.param(nested('<b id="{i}">'), id="distinct b"),
        pytest.param(nested('<p><b id="{i}">x ', kb=400), id="p distinct b"),
        # Ruby annotations nest outside <ruby>; options in one <select> are not
        # nested, but Lexbor scans the select's options for each one it inserts.
        pytest.param(nested("<rt>x "), id="rt"),
        pytest.param(b"<select>" + nested("<option>x "), id="select option"),
        pytest.param(b"<select>" + nested("<optgroup><option>x "), id="select optgroup option"),
    ],
)
def test_deeply_nested_html_is_extracted_in_time(content: bytes) -> None:
    words = extract_isolated(content, "hostile.html", HTML)["text"].split()

    assert words[-2:] == ["deep", "after"]
    assert set(words[:-2]) <= {"x"}


def test_deeply_nested_html_keeps_its_title_and_layout() -> None:
    content = (
        b"<html><head><title>The &amp; title</title><style>p {}</style></head><body>"
        + b"<div>" * 2000
        + b"<h1>Head</h1><p>One <b>W</b>ord</p><script>x()</script><table><tr><td>a<td>b"
        + b"</table>&lt;end&gt;"
    )

    result = extract(content, "deep.html", HTML)

    assert result["title"] == "The & title"
    assert result["text"] == "Head\nOne Word\na\tb\n<end>"


@pytest.mark.parametrize(
    "markup",
    [
        pytest.param("<div>" * 600, id="div"),
        pytest.param("<p><span>" * 600, id="span in unclosed p"),
        pytest.param('<b id="{i}">' * 600, id="b"),
        pytest.param("<div><b></div>x" * 600, id="b reopened"),
        pytest.param("<svg><script>" + "<div>" * 600, id="markup in an SVG script"),
        pytest.param("<table><caption><div>" * 300, id="caption div"),
        pytest.param("<b><div></b>" * 600, id="misnested b"),
        pytest.param("<span></x>" * 600, id="unmatched end tags"),
        pytest.param("<svg><div/></svg>" * 600, id="div out of SVG"),
        pytest.param("<rt>x" * 600, id="rt out of ruby"),
        pytest.param("<rb><rp>" * 300, id="rb rp out of ruby"),
        pytest.param("<ruby><rt><span>" * 300, id="span between rts in ruby"),
        pytest.param("<optgroup>" * 600, id="optgroup out of select"),
        pytest.param("<select>" + "<option>" * 600, id="options of a select"),
        pytest.param("<select>" + "<optgroup><option>x</optgroup>" * 600, id="options in groups"),
        pytest.param("<div><select>" + "<option>x</div>" * 600, id="end tags in a select"),
        pytest.param("<select>" + "<div><option>x</div>" * 600, id="options in divs"),
    ],
)
def test_nesting_past_the_limit_is_estimated(markup: str) -> None:
    assert estimated_tree_depth(markup) > MAX_TREE_DEPTH


@pytest.mark.parametrize(
    "markup",
    [
        pytest.param("<div>x</div>" * 2000, id="closed divs"),
        pytest.param("<ul>" + "<li>x" * 2000 + "</ul>", id="unclosed items"),
        pytest.param("<p>x" * 2000, id="unclosed paragraphs"),
        pytest.param("<table>" + "<tr><td>x<td>y" * 2000 + "</table>", id="unclosed cells"),
        pytest.param("<div><span>x</div>" * 2000, id="unclosed spans"),
        pytest.param("<a href=x>y" * 2000, id="unclosed links"),
        pytest.param("<svg>" + "<path/>" * 2000 + "</svg>", id="self-closing SVG"),
        pytest.param("<script>" + "'<div>'" * 2000 + "</script>", id="tags in a script"),
        pytest.param("<!--" + "<div>" * 2000 + "-->", id="tags in a comment"),
        pytest.param("<ruby>漢<rp>(<rt>かん<rp>)</ruby>" * 2000, id="closed ruby"),
        pytest.param("<ruby>" + "漢<rb>x<rt>y<rp>z" * 2000 + "</ruby>", id="unclosed annotations"),
        pytest.param("<optgroup>x</optgroup>" * 2000, id="closed optgroups"),
        pytest.param("<option>x" * 2000, id="options out of a select"),
        pytest.param(("<select>" + "<option>x" * 5 + "</select>") * 2000, id="small selects"),
        pytest.param("<select>" + "<optgroup>" * 2000 + "</select>", id="groups of a select"),
    ],
)
def test_ordinary_markup_is_within_the_limit(markup: str) -> None:
    assert estimated_tree_depth(markup) < 10
