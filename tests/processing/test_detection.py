"""Content-type detection (SPEC §4): from the bytes; the filename only refines text."""

from __future__ import annotations

import io
import random
import struct
import zipfile

import pytest

from docqueue_app.processing import (
    SUPPORTED_CONTENT_TYPES,
    PermanentProcessingError,
    UnsupportedContentType,
    detect_content_type,
    extract,
)

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
OLE2_HEADER = bytes.fromhex("D0CF11E0A1B11AE1")


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def minimal_docx(body_xml: str = "<w:p><w:r><w:t>Hello</w:t></w:r></w:p>") -> bytes:
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body_xml}</w:body></w:document>"
    )
    return make_zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": document.encode()})


def test_supported_types_are_the_spec_list() -> None:
    assert set(SUPPORTED_CONTENT_TYPES) == {
        PDF,
        DOCX,
        "text/html",
        "text/plain",
        "text/markdown",
        "text/csv",
        "application/json",
        "image/png",
        "image/jpeg",
        "image/tiff",
    }


# --- PDF ----------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["report.pdf", "report.txt", "no-extension"])
def test_pdf_signature_wins_over_the_name(filename: str) -> None:
    assert detect_content_type(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", filename) == PDF


def test_pdf_signature_after_leading_junk_within_1024_bytes() -> None:
    assert detect_content_type(b"x" * 1000 + b"%PDF-1.4\n", "a.pdf") == PDF


def test_pdf_signature_beyond_1024_bytes_is_not_a_pdf() -> None:
    assert detect_content_type(b"x" * 1024 + b"%PDF-1.4\n", "a.pdf") == "text/plain"


def test_damaged_pdf_is_still_a_pdf_and_fails_permanently() -> None:
    content = b"%PDF-1.4\nthis is not a PDF body at all"

    assert detect_content_type(content, "broken.pdf") == PDF
    with pytest.raises(PermanentProcessingError, match="damaged PDF"):
        extract(content, "broken.pdf")


# --- DOCX and other containers ----------------------------------------------


@pytest.mark.parametrize("filename", ["letter.docx", "letter.zip", "letter"])
def test_zip_holding_word_document_is_docx_whatever_its_name(filename: str) -> None:
    assert detect_content_type(minimal_docx(), filename) == DOCX


def test_truncated_zip_named_docx_is_docx_and_fails_permanently() -> None:
    truncated = minimal_docx()[:200]

    assert detect_content_type(truncated, "letter.docx") == DOCX
    with pytest.raises(PermanentProcessingError, match="damaged DOCX: not a readable ZIP"):
        extract(truncated, "letter.docx")


def test_truncated_zip_with_another_name_is_unsupported() -> None:
    with pytest.raises(UnsupportedContentType, match="damaged ZIP"):
        detect_content_type(minimal_docx()[:200], "archive.zip")


def test_encrypted_ole2_named_docx_is_docx_and_fails_permanently() -> None:
    # The directory of an encrypted DOCX names its "EncryptedPackage" stream.
    content = OLE2_HEADER + bytes(500) + "EncryptedPackage".encode("utf-16-le") + bytes(500)

    assert detect_content_type(content, "secret.docx") == DOCX
    with pytest.raises(PermanentProcessingError, match="encrypted or password-protected Word"):
        extract(content, "secret.docx")


def test_other_ole2_files_are_unsupported() -> None:
    with pytest.raises(UnsupportedContentType, match="OLE2"):
        detect_content_type(OLE2_HEADER + bytes(1000), "old.doc")


def with_central_entry_field(package: bytes, name: bytes, offset: int, value: int) -> bytes:
    """The package with a 16-bit field of ``name``'s central directory entry rewritten."""
    data = bytearray(package)
    entry = data.find(b"PK\x01\x02")
    while data[entry + 46 : entry + 46 + len(name)] != name:
        entry = data.find(b"PK\x01\x02", entry + 4)
    struct.pack_into("<H", data, entry + offset, value)
    return bytes(data)


VERSION_NEEDED = 6  # "version needed to extract", in the central directory entry


def test_zip_needing_a_future_version_named_docx_is_docx_and_fails_permanently() -> None:
    # zipfile refuses such an entry with NotImplementedError while listing, which
    # detection let through (an upload's error) and extraction took as transient.
    content = with_central_entry_field(minimal_docx(), b"word/document.xml", VERSION_NEEDED, 99)

    assert detect_content_type(content, "letter.docx") == DOCX
    with pytest.raises(UnsupportedContentType, match="damaged ZIP"):
        detect_content_type(content, "archive.zip")
    with pytest.raises(PermanentProcessingError, match="damaged DOCX"):
        extract(content, "letter.docx", DOCX)


def test_docx_whose_entry_points_before_the_archive_fails_permanently() -> None:
    # The end record puts the directory further on than it is, so an entry's local
    # header lands before the start of the file: zipfile's ValueError ("negative seek
    # value") failed the document as transient, retried to the end.
    data = bytearray(minimal_docx())
    end = data.rfind(b"PK\x05\x06")
    directory_offset = struct.unpack_from("<I", data, end + 16)[0]
    struct.pack_into("<I", data, end + 16, directory_offset + 100_000)

    with pytest.raises(PermanentProcessingError, match="damaged DOCX"):
        extract(bytes(data), "letter.docx")


def test_plain_zip_is_unsupported() -> None:
    content = make_zip({"photo.jpg": b"\xff\xd8\xff" + bytes(100), "notes.txt": b"hi"})

    with pytest.raises(UnsupportedContentType, match=r"ZIP archive without word/document\.xml"):
        detect_content_type(content, "photos.zip")


def test_zip_with_too_many_entries_is_judged_without_listing_it() -> None:
    entries = {f"word/media/{index}.txt": b"" for index in range(1001)}
    entries["word/document.xml"] = b"<w:document/>"

    content = make_zip(entries)

    assert detect_content_type(content, "many.docx") == DOCX
    with pytest.raises(PermanentProcessingError, match="zip bomb: 1002 entries"):
        extract(content, "many.docx")


def zip_hiding_its_directory(
    name: str, copies: int, claimed_entries: int = 1, zip64: bool = False
) -> bytes:
    """A ZIP whose central directory lists ``name`` ``copies`` times while its end
    record claims ``claimed_entries`` (zipfile trusts the directory's size, not the
    count). With ``zip64``, the sizes are in a ZIP64 end record, as large archives do."""
    single = make_zip({name: b"x"})
    directory_size, directory_offset = struct.unpack_from("<II", single, len(single) - 10)
    directory = single[directory_offset : directory_offset + directory_size] * copies
    size = len(directory)
    if not zip64:
        end = struct.pack(
            "<4s4H2IH", b"PK\x05\x06", 0, 0, claimed_entries, claimed_entries,
            size, directory_offset, 0,
        )  # fmt: skip
        return single[:directory_offset] + directory + end
    end64_offset = directory_offset + size
    end64 = struct.pack(
        "<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, claimed_entries, claimed_entries,
        size, directory_offset,
    )  # fmt: skip
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end64_offset, 1)
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return single[:directory_offset] + directory + end64 + locator + end


@pytest.fixture
def unlistable_zips(monkeypatch: pytest.MonkeyPatch) -> None:
    """zipfile may open a ZIP but never list its entries: that is the cost refused."""

    def refuse_to_list(self: zipfile.ZipFile) -> None:
        raise AssertionError("zipfile was asked to list the central directory")

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", refuse_to_list)


@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_zip_directory_larger_than_its_count_is_refused_unlisted(
    unlistable_zips: None, zip64: bool
) -> None:
    # 20,000 entries (1.1 MB) behind a claim of 1: past any directory 1000 entries need.
    content = zip_hiding_its_directory("notes.txt", 20_000, zip64=zip64)

    with pytest.raises(UnsupportedContentType, match="central directory of 1,100,000 bytes"):
        detect_content_type(content, "photos.zip")


def test_docx_with_an_oversized_directory_is_refused_as_a_zip_bomb_unlisted(
    unlistable_zips: None,
) -> None:
    content = zip_hiding_its_directory("word/document.xml", 20_000)

    assert detect_content_type(content, "hostile.docx") == DOCX
    with pytest.raises(PermanentProcessingError, match="zip bomb: a central directory of"):
        extract(content, "hostile.docx")


def test_zip64_entry_count_is_read_from_its_own_record() -> None:
    content = zip_hiding_its_directory("word/document.xml", 3, claimed_entries=1001, zip64=True)

    with pytest.raises(PermanentProcessingError, match="zip bomb: 1001 entries"):
        extract(content, "many.docx")


def test_docx_with_an_ordinary_directory_is_still_listed() -> None:
    content = zip_hiding_its_directory("word/document.xml", 2, claimed_entries=2)

    assert detect_content_type(content, "letter.docx") == DOCX


# --- binary content ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "described_as"),
    [
        (b"GIF89a\x01\x00\x01\x00" + bytes(50), "GIF image"),
        (b"\x7fELF\x02\x01\x01\x00" + bytes(56), "ELF executable"),
        (b"\x1f\x8b\x08\x00" + bytes(40), "gzip archive"),
        (random.Random(42).randbytes(4096), "not a PDF, DOCX or text document"),
    ],
    ids=["gif", "elf", "gzip", "random-bytes"],
)
def test_other_binary_content_is_unsupported(content: bytes, described_as: str) -> None:
    with pytest.raises(UnsupportedContentType, match=described_as):
        detect_content_type(content, "upload.txt")


def test_binary_named_like_text_is_still_unsupported() -> None:
    with pytest.raises(UnsupportedContentType):
        detect_content_type(b"\x7fELF\x02\x01\x01\x00" + bytes(56), "notes.md")


def test_utf8_text_with_nul_bytes_is_binary() -> None:
    with pytest.raises(UnsupportedContentType):
        detect_content_type(b"hello\x00world, a perfectly normal sentence", "notes.txt")


# --- text: by extension, then sniffed -----------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("README.md", "text/markdown"),
        ("notes.MARKDOWN", "text/markdown"),
        ("table.csv", "text/csv"),
        ("data.json", "application/json"),
        ("page.html", "text/html"),
        ("page.HTM", "text/html"),
        ("notes.txt", "text/plain"),
        ("no-extension", "text/plain"),
        ("archive.tar.csv", "text/csv"),
    ],
)
def test_text_is_classified_by_extension(filename: str, expected: str) -> None:
    assert detect_content_type(b"name,value\nalpha,1\n", filename) == expected


@pytest.mark.parametrize(
    "start",
    [
        b"<!DOCTYPE html><title>x</title>",
        b"  \n<!doctype HTML>\n<html>",
        b"<html lang='en'><p>hi</p></html>",
        b"<head><title>x</title></head>",
        b"<body>hello</body>",
        b'<?xml version="1.0"?>\n<html xmlns="http://www.w3.org/1999/xhtml">',
    ],
)
def test_html_is_sniffed_when_the_extension_says_nothing(start: bytes) -> None:
    assert detect_content_type(start, "download.txt") == "text/html"


def test_text_merely_mentioning_html_tags_is_plain_text() -> None:
    content = b"To start a page, write <html> and then <body>.\n"

    assert detect_content_type(content, "tutorial.txt") == "text/plain"


def test_html_named_markdown_keeps_the_extension_type() -> None:
    assert detect_content_type(b"<!doctype html><p>x</p>", "page.md") == "text/markdown"


@pytest.mark.parametrize(
    "encoded",
    [
        "Grüße aus Köln".encode("utf-16"),  # with a BOM
        "Grüße aus Köln".encode("utf-16-le"),  # without
        "Grüße aus Köln".encode("utf-16-be"),
        "Grüße aus Köln".encode("utf-32"),
        "Grüße aus Köln".encode("utf-8-sig"),
        "Grüße aus Köln, très bien".encode("cp1252"),
    ],
    ids=["utf-16-bom", "utf-16-le", "utf-16-be", "utf-32-bom", "utf-8-bom", "cp1252"],
)
def test_text_in_any_common_encoding_is_text(encoded: bytes) -> None:
    assert detect_content_type(encoded, "greeting.txt") == "text/plain"


def test_broken_json_is_json_and_fails_permanently() -> None:
    content = b'{"title": "unterminated'

    assert detect_content_type(content, "data.json") == "application/json"
    with pytest.raises(PermanentProcessingError, match="invalid JSON"):
        extract(content, "data.json")


def test_unsupported_content_type_is_a_permanent_error() -> None:
    # So a processor meeting such bytes fails the document instead of retrying it.
    assert issubclass(UnsupportedContentType, PermanentProcessingError)


def test_extract_detects_the_type_when_not_given() -> None:
    result = extract(b"# Plan\n\nShip it.\n", "plan.md")

    assert result["title"] == "Plan"
    assert result["metadata"]["encoding"] == "utf-8"
