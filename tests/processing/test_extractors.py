"""Each extractor on small generated documents: structure, metadata, limits, bombs."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from fpdf import FPDF

from docqueue_app.processing import PermanentProcessingError, extract, extraction
from docqueue_app.processing import docx as docx_extractor
from docqueue_app.processing import pdf as pdf_extractor
from docqueue_app.processing.json_syntax import json_syntax_error

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
MC_NS = "http://schemas.openxmlformats.org/markup-compatibility/2006"


def make_pdf(pages: list[str], title: str | None = None, author: str | None = None) -> bytes:
    document = FPDF()
    if title:
        document.set_title(title)
    if author:
        document.set_author(author)
    document.set_font("helvetica", size=12)
    for text in pages:
        document.add_page()
        document.cell(text=text)
    return bytes(document.output())


def word_part(body: str, root: str = "document") -> bytes:
    inner = f"<w:body>{body}</w:body>" if root == "document" else body
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<w:{root} xmlns:w="{W_NS}" xmlns:mc="{MC_NS}">{inner}</w:{root}>'
    ).encode()


def paragraph(text: str) -> str:
    return f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>"


def make_docx(body: str, extra_parts: dict[str, bytes] | None = None, **writestr_kw) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", word_part(body))
        for name, data in (extra_parts or {}).items():
            archive.writestr(name, data, **writestr_kw)
    return buffer.getvalue()


def lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


# --- PDF ----------------------------------------------------------------------


def test_pdf_text_of_every_page_title_and_metadata() -> None:
    content = make_pdf(["Hello page one", "Second page words"], "Quarterly report", "Ada")

    result = extract(content, "report.pdf", PDF)

    assert result["text"] == "Hello page one\n\nSecond page words"
    assert result["title"] == "Quarterly report"
    assert result["page_count"] == 2
    assert result["metadata"]["author"] == "Ada"
    assert result["metadata"]["creation_date"].startswith("D:")


def test_pdf_pages_beyond_the_cap_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf_extractor, "MAX_PAGES", 2)

    result = extract(make_pdf(["one", "two", "three"]), "long.pdf", PDF)

    assert result["page_count"] == 3
    assert result["text"] == "one\n\ntwo"
    assert result["metadata"]["pages_extracted"] == 2


def test_pdf_text_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf_extractor, "MAX_TEXT_CHARS", 10)

    result = extract(make_pdf(["Hello page one", "Second page words"]), "long.pdf", PDF)

    assert result["text"] == "Hello page"
    assert result["metadata"]["text_truncated"] is True


def pdf_with_raw_metadata(**raw_values: bytes) -> bytes:
    """A one-page PDF whose Info dictionary holds ``raw_values`` as written, e.g. a
    UTF-16 hex string with an unpaired surrogate. Each placeholder value is replaced
    by one of the same length, so the cross-reference offsets stay right."""
    document = FPDF()
    placeholders = {key: "X" * (len(value) - 2) for key, value in raw_values.items()}
    document.set_author(placeholders.get("Author", "Ada"))
    document.set_keywords(placeholders.get("Keywords", "none"))
    document.set_font("helvetica", size=12)
    document.add_page()
    document.cell(text="Text is fine")
    content = bytes(document.output())
    for key, value in raw_values.items():
        placeholder = f"/{key} ({placeholders[key]})".encode()
        assert content.count(placeholder) == 1
        content = content.replace(placeholder, f"/{key} ".encode() + value)
    return content


def test_pdf_metadata_with_unpaired_surrogates_keeps_the_document() -> None:
    # pypdfium2 decodes metadata strictly: such a file once failed with a
    # UnicodeDecodeError, retried as transient until the attempts ran out.
    content = pdf_with_raw_metadata(Keywords=b"<FEFFD800>", Author=b"<FEFF0041DC00DC000042>")

    result = extract(content, "odd.pdf", PDF)

    assert result["text"] == "Text is fine"
    assert result["metadata"]["keywords"] == "\ufffd"
    assert result["metadata"]["author"] == "A\ufffd\ufffdB"


def test_pdf_without_encryption_dictionary_is_never_called_encrypted() -> None:
    with pytest.raises(PermanentProcessingError) as failure:
        extract(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF", "x.pdf", PDF)

    assert str(failure.value).startswith("damaged PDF")


# --- DOCX ---------------------------------------------------------------------------


def test_docx_paragraphs_and_tables_in_document_order() -> None:
    table = (
        "<w:tbl><w:tr><w:tc>" + paragraph("cell A1") + "</w:tc><w:tc>" + paragraph("cell B1")
    ) + "</w:tc></w:tr></w:tbl>"
    body = paragraph("Before the table") + table + paragraph("After the table")

    result = extract(make_docx(body), "t.docx", DOCX)

    assert lines(result["text"]) == ["Before the table", "cell A1", "cell B1", "After the table"]


def test_docx_runs_tabs_and_breaks_join_within_a_paragraph() -> None:
    body = (
        '<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>'
        "<w:r><w:t>Split</w:t></w:r><w:r><w:t xml:space='preserve'>word and </w:t></w:r>"
        "<w:r><w:tab/><w:t>tabbed</w:t><w:br/><w:t>next line</w:t></w:r></w:p>"
    )

    result = extract(make_docx(body), "t.docx", DOCX)

    assert result["text"] == "Splitword and \ttabbed\nnext line"


def test_docx_hidden_text_is_left_out() -> None:
    text_box = "<w:txbxContent>" + paragraph("In the box") + "</w:txbxContent>"
    body = (
        "<w:p><w:r><mc:AlternateContent>"
        f"<mc:Choice Requires='wps'>{text_box}</mc:Choice>"
        f"<mc:Fallback>{text_box}</mc:Fallback>"
        "</mc:AlternateContent></w:r><w:r><w:t>Around the box</w:t></w:r></w:p>"
        "<w:p><w:moveFrom><w:r><w:t>moved away</w:t></w:r></w:moveFrom>"
        "<w:del><w:r><w:delText>deleted</w:delText></w:r></w:del>"
        "<w:ins><w:r><w:t>inserted</w:t></w:r></w:ins></w:p>"
    )

    result = extract(make_docx(body), "t.docx", DOCX)

    assert lines(result["text"]) == ["In the box", "Around the box", "inserted"]


def test_docx_headers_footers_and_notes_follow_the_body_once_each() -> None:
    header = word_part(paragraph("Running header"), root="hdr")
    footer = word_part(paragraph("Page footer"), root="ftr")
    footnotes = word_part("<w:footnote>" + paragraph("A footnote") + "</w:footnote>", "footnotes")
    parts = {
        "word/header1.xml": header,
        "word/header2.xml": header,  # the same header in another section
        "word/footer1.xml": footer,
        "word/footnotes.xml": footnotes,
    }

    result = extract(make_docx(paragraph("Body text"), parts), "t.docx", DOCX)

    assert lines(result["text"]) == ["Body text", "Running header", "Page footer", "A footnote"]


def test_docx_title_and_core_properties() -> None:
    core = (
        b'<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/'
        b'metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        b'xmlns:dcterms="http://purl.org/dc/terms/">'
        b"<dc:title>Annual Plan</dc:title><dc:creator>Grace</dc:creator>"
        b"<dcterms:created>2024-01-02T03:04:05Z</dcterms:created></cp:coreProperties>"
    )

    result = extract(make_docx(paragraph("x"), {"docProps/core.xml": core}), "t.docx", DOCX)

    assert result["title"] == "Annual Plan"
    assert result["metadata"] == {"author": "Grace", "creation_date": "2024-01-02T03:04:05Z"}
    assert result["page_count"] is None


def test_docx_entities_are_never_expanded() -> None:
    document = (
        '<?xml version="1.0"?><!DOCTYPE w:document ['
        '<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY secret SYSTEM "file:///etc/hostname">]>'
        f'<w:document xmlns:w="{W_NS}"><w:body>'
        "<w:p><w:r><w:t>a&lol2;b&secret;c</w:t></w:r></w:p></w:body></w:document>"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", document)

    result = extract(buffer.getvalue(), "t.docx", DOCX)

    assert "lol" not in result["text"]
    assert result["text"].startswith("a")


def test_docx_with_a_highly_compressed_entry_is_refused() -> None:
    content = make_docx(paragraph("x"), {"word/media/blank.bin": bytes(8 * 1024 * 1024)})

    with pytest.raises(PermanentProcessingError, match=r"zip bomb: word/media/blank.bin inflates"):
        extract(content, "bomb.docx", DOCX)


def test_docx_inflating_beyond_the_total_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docx_extractor, "MAX_TOTAL_UNCOMPRESSED_BYTES", 1024 * 1024)
    content = make_docx(paragraph("x"), {"word/media/big.txt": b"y" * (1024 * 1024)})

    with pytest.raises(PermanentProcessingError, match="zip bomb: it would inflate to"):
        extract(content, "bomb.docx", DOCX)


def test_docx_with_an_encrypted_entry_is_refused() -> None:
    content = bytearray(make_docx(paragraph("x")))
    # Set the "encrypted" flag of the first central-directory record.
    record = content.index(b"PK\x01\x02")
    content[record + 8] |= 0x1

    with pytest.raises(PermanentProcessingError, match="encrypted or password-protected"):
        extract(bytes(content), "locked.docx", DOCX)


def test_docx_with_broken_xml_is_damaged() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", b"<w:document><w:body><w:p>")

    with pytest.raises(PermanentProcessingError, match="damaged DOCX: invalid XML"):
        extract(buffer.getvalue(), "t.docx", DOCX)


def with_corrupt_stream(package: bytes, part: str) -> bytes:
    """The package with bytes in the middle of ``part``'s compressed data overwritten."""
    data = bytearray(package)
    start = data.find(part.encode()) + len(part) + 50  # past the local header's name
    data[start : start + 40] = b"\xff" * 40
    return bytes(data)


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_docx_with_a_corrupt_compressed_part_is_damaged_not_retried(compression: int) -> None:
    # zipfile lets a broken stream's own error through (zlib.error, OSError from bz2,
    # LZMAError), which no handler took: the document failed as transient and was
    # retried until its attempts ran out.
    body = "".join(paragraph(f"paragraph {number} of the report") for number in range(2000))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        archive.writestr("word/document.xml", word_part(body))
    content = with_corrupt_stream(buffer.getvalue(), "word/document.xml")

    with pytest.raises(
        PermanentProcessingError, match=r"damaged DOCX: cannot read word/document\.xml"
    ):
        extract(content, "t.docx", DOCX)


def test_docx_with_corrupt_compressed_core_properties_keeps_its_text() -> None:
    core = word_part("", root="coreProperties") + b"<!-- padding -->" * 2000
    package = make_docx(paragraph("Body text"), {"docProps/core.xml": core})
    content = with_corrupt_stream(package, "docProps/core.xml")

    result = extract(content, "t.docx", DOCX)

    assert (result["text"], result["title"]) == ("Body text", None)


# --- HTML -----------------------------------------------------------------------------


def test_html_text_leaves_out_invisible_elements() -> None:
    content = (
        b"<html><head><title> The  Title </title><style>p{color:red}</style></head><body>"
        b"<script>var hidden = 1;</script><noscript>enable js</noscript>"
        b"<template><p>later</p></template><p>Visible</p><!-- a comment --></body></html>"
    )

    result = extract(content, "p.html", "text/html")

    assert result["text"] == "Visible"
    assert result["title"] == "The Title"
    assert result["metadata"]["encoding"] == "utf-8"


def test_html_blocks_break_lines_and_inline_tags_do_not_split_words() -> None:
    content = (
        b"<body><h1>Head<em>line</em></h1><p>First   para\n  wraps</p>tail text"
        b"<ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td></tr></table>"
        b"line<br>break</body>"
    )

    result = extract(content, "p.html", "text/html")

    assert result["text"] == "Headline\nFirst para wraps\ntail text\none\ntwo\na\tb\nline\nbreak"


def test_html_declared_charset_is_used_when_it_fits() -> None:
    content = '<meta charset="windows-1251"><p>Привет</p>'.encode("cp1251")

    result = extract(content, "p.html", "text/html")

    assert result["text"] == "Привет"
    assert result["metadata"]["encoding"] == "cp1251"


def test_html_without_title_has_none() -> None:
    assert extract(b"<p>x</p>", "p.html", "text/html")["title"] is None


# --- text, Markdown, CSV, JSON ----------------------------------------------------


def test_plain_text_is_returned_as_decoded() -> None:
    content = "Zeile eins\r\nZeile zwei: Grüße\n".encode("cp1252")

    result = extract(content, "a.txt", "text/plain")

    assert result == {
        "text": "Zeile eins\r\nZeile zwei: Grüße\n",
        "title": None,
        "page_count": None,
        "metadata": {"encoding": "cp1252"},
    }


@pytest.mark.parametrize(
    ("markdown", "title"),
    [
        ("# Release notes\n\nText", "Release notes"),
        ("Intro\n\n## Minor\n\n# Major #\n", "Major"),
        ("```\n# not a heading\n```\n# Real\n", "Real"),
        ("#hashtag only\n", None),
        ("No heading at all\n", None),
    ],
)
def test_markdown_title_is_the_first_level_one_heading(markdown: str, title: str | None) -> None:
    assert extract(markdown.encode(), "a.md", "text/markdown")["title"] == title


def test_csv_is_returned_as_decoded() -> None:
    content = "名前,都市\n佐藤,名古屋\n".encode("cp932")

    result = extract(content, "a.csv", "text/csv")

    assert result["text"] == "名前,都市\n佐藤,名古屋\n"
    assert result["metadata"]["encoding"] == "cp932"


def test_json_text_is_the_document_so_values_are_searchable() -> None:
    document = json.dumps({"name": "Grand Café", "items": [1, 2]}, ensure_ascii=False)

    result = extract(document.encode(), "a.json", "application/json")

    assert result["text"] == document
    assert "Grand Café" in result["text"]


def test_json_with_an_integer_of_thousands_of_digits_is_extracted() -> None:
    # int() refuses more than 4300 digits: such a file once failed with a
    # ValueError, retried as transient until the attempts ran out.
    content = b'{"id": ' + b"7" * 5000 + b', "name": "Ada"}'

    assert extract(content, "a.json", "application/json")["text"] == content.decode()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="arrays"),
        pytest.param(b'{"a": ' * 5000 + b"-1.5e3" + b"}" * 5000, id="objects"),
        pytest.param(b'[{"k": [1, "s", null, true, {}, []], "x": ' * 2000 + b"0" + b"}]" * 2000,
                     id="mixed"),
    ],
)  # fmt: skip
def test_deeply_nested_valid_json_is_extracted(content: bytes) -> None:
    # The json module gives up near 1,000 levels; the JSON standard sets no limit.
    assert extract(content, "a.json", "application/json")["text"] == content.decode()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[" * 100_000 + b"}" * 100_000, id="mismatched brackets"),
        pytest.param(b"[" * 100_000, id="unclosed"),
        pytest.param(b"[" * 5000 + b"1,]" + b"]" * 4999, id="trailing comma"),
        pytest.param(b'{"a": ' * 5000 + b"01" + b"}" * 5000, id="leading zero"),
        pytest.param(b"[" * 5000 + b"]" * 5000 + b"x", id="extra data"),
    ],
)
def test_deeply_nested_invalid_json_fails_permanently(content: bytes) -> None:
    with pytest.raises(PermanentProcessingError, match="invalid JSON"):
        extract(content, "a.json", "application/json")


VALID_JSON = [
    '"a\\u00e9\\n"', "0", "-0.5e+10", "1E3", "NaN", "-Infinity", "true", "null", " [ ] ",
    '{"a": [1, {"b": null}], "c": "d"}', '{"a":1,"a":2}', '"\\ud800"', "[1,\n2]",
]  # fmt: skip
INVALID_JSON = [
    "", " ", "01", "1.", ".5", "-", "+1", "[1,]", '{"a":1,}', "{a:1}", "{'a':1}", "[1 2]",
    '{"a" 1}', '{"a":}', '"\\x"', '"\\u12"', '"tab\tin"', "tru", "nulls", "[1]]", "[}",
    "\ufeff[]", "[1]\x00", "1 2",
]  # fmt: skip


@pytest.mark.parametrize("document", VALID_JSON + INVALID_JSON)
def test_json_syntax_check_agrees_with_the_json_module(document: str) -> None:
    try:
        json.loads(document)
    except ValueError:
        accepted = False
    else:
        accepted = True

    assert (json_syntax_error(document) is None) is accepted


# --- common -------------------------------------------------------------------------


def test_nul_characters_never_reach_the_text() -> None:
    result = extract("a stray\x00NUL in UTF-16".encode("utf-16"), "a.txt", "text/plain")

    assert result["text"] == "a strayNUL in UTF-16"


def test_every_format_caps_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extraction, "MAX_TEXT_CHARS", 5)

    result = extract(b"0123456789", "a.txt", "text/plain")

    assert result["text"] == "01234"
    assert result["metadata"]["text_truncated"] is True


def test_unknown_content_type_is_refused() -> None:
    with pytest.raises(PermanentProcessingError, match="no extractor"):
        extract(b"x", "a.bin", "application/octet-stream")
