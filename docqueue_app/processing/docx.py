"""DOCX: body paragraphs and tables in document order, then headers, footers and notes.

The XML parts are streamed with lxml ``iterparse`` rather than read through
python-docx: python-docx lists paragraphs and tables apart (losing their order),
has no footnotes, and builds the whole tree, while the streaming parse keeps
order, reads any part, and was 2.5-5x faster on the corpus (MEASUREMENTS.md).

A DOCX is a ZIP, so the package is checked for zip-bomb shapes before any part is
inflated: CPython stops inflating at an entry's declared size (measured), which
makes the declared sizes a sound bound.
"""

from __future__ import annotations

import io
import lzma
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import PermanentProcessingError

# lxml is imported by the functions that parse: detection imports this module for
# its ZIP checks, and an upload or a worker that meets no DOCX never needs lxml.
if TYPE_CHECKING:
    from lxml import etree

MAX_ENTRIES = 1000
# zipfile builds an object for every entry its central directory holds, whatever
# count the end record claims, so the directory's size is what bounds listing it.
# An entry takes 46 bytes and its name (corpus DOCX: 64-86 bytes an entry in all);
# 1 KB an entry leaves room for long names and extra fields.
MAX_CENTRAL_DIRECTORY_BYTES = MAX_ENTRIES * 1024
MAX_TOTAL_UNCOMPRESSED_BYTES = 200 * 1024 * 1024
MAX_COMPRESSION_RATIO = 200
# Below this size an entry cannot hurt, whatever its ratio; tiny XML parts of
# repeated markup legitimately compress very well.
RATIO_CHECK_MIN_BYTES = 1024 * 1024
_ZIP_BOMB = "DOCX refused as a possible zip bomb:"

MAIN_PART = "word/document.xml"
CORE_PROPERTIES_PART = "docProps/core.xml"
_SECONDARY_PART = re.compile(r"word/(header|footer)(\d*)\.xml|word/(footnotes|endnotes)\.xml")
_SECONDARY_ORDER = {"header": 0, "footer": 1, "footnotes": 2, "endnotes": 3}

# What opening a damaged ZIP (listing its central directory) raises; the upload's
# type detection and the extractor both take these as "not a readable ZIP".
UNREADABLE_ZIP = (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError)
# What reading a damaged entry raises: a bad CRC or header (BadZipFile), data cut
# short (EOFError), an unknown compression method (NotImplementedError), and a broken
# compressed stream, which zipfile lets through as its decompressor raised it
# (zlib.error; OSError from bz2; LZMAError), and a local header placed before the
# file's start (ValueError: negative seek). The ZIP is in memory: no other I/O.
_DAMAGED_ENTRY = (
    zipfile.BadZipFile,
    EOFError,
    NotImplementedError,
    zlib.error,
    OSError,
    lzma.LZMAError,
    ValueError,
)

OLE2_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ENCRYPTED_PACKAGE_STREAM = "EncryptedPackage".encode("utf-16-le")

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
_PARAGRAPH = f"{_W}p"
_RUN = f"{_W}r"
_TEXT = f"{_W}t"
_RUN_CHARACTERS = {f"{_W}tab": "\t", f"{_W}br": "\n", f"{_W}cr": "\n"}
# Text not shown in the document as it stands: a markup-compatibility fallback
# repeats its preferred alternative (text boxes), and a tracked move keeps the
# moved text at its old place too. (Tracked deletions use w:delText, never read.)
_HIDDEN_CONTAINERS = frozenset((f"{_MC}Fallback", f"{_W}moveFrom"))
_STREAMED_TAGS = (_PARAGRAPH, _TEXT, *_HIDDEN_CONTAINERS, *_RUN_CHARACTERS)

_CORE_PROPERTIES = {
    "{http://purl.org/dc/elements/1.1/}creator": "author",
    "{http://purl.org/dc/elements/1.1/}subject": "subject",
    "{http://purl.org/dc/elements/1.1/}description": "description",
    "{http://schemas.openxmlformats.org/package/2006/metadata/core-properties}keywords": (
        "keywords"
    ),
    "{http://schemas.openxmlformats.org/package/2006/metadata/core-properties}category": (
        "category"
    ),
    "{http://schemas.openxmlformats.org/package/2006/metadata/core-properties}lastModifiedBy": (
        "last_modified_by"
    ),
    "{http://purl.org/dc/terms/}created": "creation_date",
    "{http://purl.org/dc/terms/}modified": "modification_date",
}
_TITLE = "{http://purl.org/dc/elements/1.1/}title"


def extract_docx(content: bytes) -> dict:
    with _open_package(content) as package:
        names = package.namelist()
        if MAIN_PART not in names:
            raise PermanentProcessingError(f"not a DOCX: the package has no {MAIN_PART}")
        text = "\n".join(_part_texts(package, [MAIN_PART, *_secondary_parts(names)]))
        title, metadata = _core_properties(package, names)
    return {"text": text, "title": title, "page_count": None, "metadata": metadata}


@dataclass(frozen=True)
class _CentralDirectory:
    """What a ZIP's end record (or its ZIP64 form) declares of the central directory."""

    entry_count: int
    size: int


def _declared_central_directory(content: bytes) -> _CentralDirectory | None:
    """The central directory's entry count and size, read without listing it.

    The end record is found by zipfile's own finder, so this is the very record
    ``ZipFile`` trusts next (a finder of our own could pick another signature, one
    hidden in a field or a comment). None when there is none (a truncated ZIP).
    """
    try:
        # Private, but unchanged since Python 2.6; it reads the end of the file only.
        record = zipfile._EndRecData(io.BytesIO(content))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if record is None:
        return None
    return _CentralDirectory(record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE])


def zip_listing_refusal(content: bytes) -> str | None:
    """Why listing the ZIP's central directory is refused as a possible zip bomb
    (too many entries, or a directory larger than that many could need), or None."""
    directory = _declared_central_directory(content)
    if directory is None:
        return None
    if directory.entry_count > MAX_ENTRIES:
        return _too_many_entries(directory.entry_count)
    if directory.size > MAX_CENTRAL_DIRECTORY_BYTES:
        return (
            f"a central directory of {directory.size:,} bytes "
            f"(the limit is {MAX_CENTRAL_DIRECTORY_BYTES:,})"
        )
    return None


def _open_package(content: bytes) -> zipfile.ZipFile:
    if content.startswith(OLE2_SIGNATURE):
        raise PermanentProcessingError(_describe_ole2_file(content))
    refusal = zip_listing_refusal(content)
    if refusal is not None:
        raise PermanentProcessingError(f"{_ZIP_BOMB} {refusal}")
    try:
        package = zipfile.ZipFile(io.BytesIO(content))
    except UNREADABLE_ZIP:
        raise PermanentProcessingError("damaged DOCX: not a readable ZIP package") from None
    try:
        _check_zip_bomb_limits(package.infolist())
    except PermanentProcessingError:
        package.close()
        raise
    return package


def _describe_ole2_file(content: bytes) -> str:
    # Word saves a password-protected DOCX inside an OLE2 container whose
    # directory names an "EncryptedPackage" stream; other OLE2 files are .doc.
    if _ENCRYPTED_PACKAGE_STREAM in content:
        return "encrypted or password-protected Word file"
    return "a legacy Word 97-2003 (.doc) or other OLE2 file, not a DOCX"


def _too_many_entries(count: int) -> str:
    return f"{count} entries (the limit is {MAX_ENTRIES})"


def _check_zip_bomb_limits(entries: list[zipfile.ZipInfo]) -> None:
    if len(entries) > MAX_ENTRIES:
        raise PermanentProcessingError(f"{_ZIP_BOMB} {_too_many_entries(len(entries))}")
    total = sum(entry.file_size for entry in entries)
    if total > MAX_TOTAL_UNCOMPRESSED_BYTES:
        raise PermanentProcessingError(
            f"{_ZIP_BOMB} it would inflate to {total // 2**20} MB "
            f"(the limit is {MAX_TOTAL_UNCOMPRESSED_BYTES // 2**20} MB)"
        )
    for entry in entries:
        if entry.flag_bits & 0x1:
            raise PermanentProcessingError(
                f"encrypted or password-protected Word file (entry {entry.filename})"
            )
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size >= RATIO_CHECK_MIN_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise PermanentProcessingError(
                f"{_ZIP_BOMB} {entry.filename} inflates {ratio:.0f}x "
                f"(the limit is {MAX_COMPRESSION_RATIO}x)"
            )


def _secondary_parts(names: list[str]) -> list[str]:
    """Header, footer, footnote and endnote parts, headers first, each kind by number."""
    found = []
    for name in names:
        match = _SECONDARY_PART.fullmatch(name)
        if match:
            kind = match.group(1) or match.group(3)
            # Numeric order without int(): a part name may hold more digits than
            # int() converts (ValueError past 4300), and ZIP names run to 64 KB.
            digits = (match.group(2) or "").lstrip("0")
            found.append((_SECONDARY_ORDER[kind], len(digits), digits, name))
    return [name for *_, name in sorted(found)]


def _part_texts(package: zipfile.ZipFile, parts: list[str]) -> Iterator[str]:
    seen = set()
    for part in parts:
        text = "\n".join(_paragraphs(package, part))
        # Sections often repeat the same header or footer in several parts.
        if text and text not in seen:
            seen.add(text)
            yield text


def _paragraphs(package: zipfile.ZipFile, part: str) -> Iterator[str]:
    """The text of each paragraph of ``part`` (table cells included), in document order."""
    from lxml import etree

    open_paragraphs: list[list[str]] = []
    hidden_depth = 0
    try:
        with package.open(part) as stream:
            for event, element in _safe_iterparse(stream):
                tag = element.tag
                if tag in _HIDDEN_CONTAINERS:
                    hidden_depth += 1 if event == "start" else -1
                elif tag == _PARAGRAPH:
                    if event == "start":
                        open_paragraphs.append([])
                        continue
                    pieces = open_paragraphs.pop()
                    element.clear()  # keep memory flat on long documents
                    if not hidden_depth:
                        yield "".join(pieces)
                elif event == "end" and open_paragraphs and not hidden_depth:
                    open_paragraphs[-1].append(_run_text(element))
    except etree.XMLSyntaxError as exc:
        raise PermanentProcessingError(f"damaged DOCX: invalid XML in {part}: {exc}") from None
    except _DAMAGED_ENTRY as exc:
        raise PermanentProcessingError(f"damaged DOCX: cannot read {part}: {exc}") from None


def _run_text(element: etree._Element) -> str:
    if element.tag == _TEXT:
        return element.text or ""
    # w:tab and w:br also define tab stops and breaks in paragraph properties.
    parent = element.getparent()
    return _RUN_CHARACTERS[element.tag] if parent is not None and parent.tag == _RUN else ""


def _safe_iterparse(stream) -> etree.iterparse:
    from lxml import etree

    # No entity expansion, DTD or network access: a DOCX needs none of them.
    return etree.iterparse(
        stream,
        events=("start", "end"),
        tag=_STREAMED_TAGS,
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        huge_tree=False,
    )


def _core_properties(package: zipfile.ZipFile, names: list[str]) -> tuple[str | None, dict]:
    """The title and the other core properties (author, dates...) from docProps/core.xml."""
    from lxml import etree

    if CORE_PROPERTIES_PART not in names:
        return None, {}
    title = None
    metadata = {}
    try:
        with package.open(CORE_PROPERTIES_PART) as stream:
            for _, element in _safe_iterparse_all(stream):
                value = (element.text or "").strip()
                if not value:
                    continue
                if element.tag == _TITLE:
                    title = value
                elif element.tag in _CORE_PROPERTIES:
                    metadata[_CORE_PROPERTIES[element.tag]] = value
    except (etree.XMLSyntaxError, *_DAMAGED_ENTRY):
        # Metadata is a nicety; the text was readable, so keep it.
        return None, {}
    return title, metadata


def _safe_iterparse_all(stream) -> etree.iterparse:
    from lxml import etree

    return etree.iterparse(
        stream, resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False
    )
