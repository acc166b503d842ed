"""Every document of the shared corpus: detected type, outcome, page count, phrases."""

from __future__ import annotations

import codecs
from pathlib import PurePosixPath

import pytest

from docqueue_app.processing import PermanentProcessingError, detect_content_type, extract
from docqueue_app.processing.encoding import decode_text, find_declared_charset

from .corpus import CONTENT_TYPE_BY_KIND, manifest, missing_phrases, read, requires_corpus

ENTRIES = manifest()
ENCODED_ENTRIES = [entry for entry in ENTRIES if entry["expect"].get("encoding")]

# Codecs that legitimately decode a corpus file differently from the manifest's:
# cp932 is what the WHATWG "Shift_JIS" decoder (every browser) really implements.
ACCEPTED_VARIANTS = {("shift_jis", "cp932")}

pytestmark = requires_corpus


def _id(entry: dict) -> str:
    return entry["file"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_type_is_detected_from_the_bytes(entry: dict) -> None:
    content = read(entry["file"])

    detected = detect_content_type(content, PurePosixPath(entry["file"]).name)

    assert detected == CONTENT_TYPE_BY_KIND[entry["kind"]]


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_extraction_matches_the_manifest(entry: dict) -> None:
    expect = entry["expect"]
    content = read(entry["file"])
    filename = PurePosixPath(entry["file"]).name

    if expect["outcome"] == "failed_permanent":
        with pytest.raises(PermanentProcessingError):
            extract(content, filename)
        return

    result = extract(content, filename)

    assert result["page_count"] == expect["page_count"]
    assert missing_phrases(result["text"], expect["phrases"]) == []
    assert missing_phrases(result["text"], expect.get("hard_phrases", [])) == []


@pytest.mark.parametrize("entry", ENCODED_ENTRIES, ids=_id)
def test_encoding_chain_decodes_like_the_true_encoding(entry: dict) -> None:
    content = read(entry["file"])
    expected_codec = codecs.lookup(entry["expect"]["encoding"]).name

    decoded = decode_text(content, declared=find_declared_charset(content))

    chosen_codec = codecs.lookup(decoded.encoding).name
    assert (
        decoded.text == content.decode(expected_codec)
        or (expected_codec, chosen_codec) in ACCEPTED_VARIANTS
    ), f"decoded as {chosen_codec}, the file is {expected_codec}"


@pytest.mark.parametrize(
    "entry", [entry for entry in ENCODED_ENTRIES if entry["kind"] != "html"], ids=_id
)
def test_text_formats_report_their_encoding(entry: dict) -> None:
    content = read(entry["file"])

    result = extract(content, PurePosixPath(entry["file"]).name)

    assert content.decode(result["metadata"]["encoding"]) == result["text"]


def test_failure_reasons_say_what_is_wrong() -> None:
    reasons = {}
    for path in (
        "pdf/libreoffice-writer-password.pdf",
        "pdf/damaged-poppler-395-fuzzed.pdf",
        "docx/word-password-protected.docx",
        "docx/word-truncated.docx",
    ):
        with pytest.raises(PermanentProcessingError) as failure:
            extract(read(path), PurePosixPath(path).name)
        reasons[path] = str(failure.value)

    assert reasons == {
        "pdf/libreoffice-writer-password.pdf": "PDF is encrypted with a password",
        "pdf/damaged-poppler-395-fuzzed.pdf": "damaged PDF: PDFium cannot parse the file",
        "docx/word-password-protected.docx": "encrypted or password-protected Word file",
        "docx/word-truncated.docx": "damaged DOCX: not a readable ZIP package",
    }


def test_titles_come_from_each_format_own_metadata() -> None:
    def title_of(path: str) -> str | None:
        return extract(read(path), PurePosixPath(path).name)["title"]

    assert title_of("pdf/geotopo-117-pages.pdf") == "Geometrie und Topologie"
    assert title_of("docx/word2007-testWORD.docx") == "Sample Word Document"
    assert title_of("html/tika-arabic-misleading-charset.html") == "Test Arabic"
    assert title_of("markdown/tika-testMARKDOWN.md") == "Title"
    assert title_of("text/cp1252-french.txt") is None
