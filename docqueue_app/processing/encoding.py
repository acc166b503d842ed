"""Decode the bytes of a text document, and say which encoding was used.

One chain serves detection and every text format (see MEASUREMENTS.md):

1. a byte-order mark;
2. bytes holding NULs can only be UTF-16 without a BOM (recognised by NULs on
   every other position); anything else with NULs is binary;
3. a charset the document declares (HTML ``<meta>``, XML declaration), if the
   bytes decode strictly with it;
4. strict UTF-8;
5. charset-normalizer, nudged towards the more common member of the charsets it
   confuses (it reads Western European text as cp1250, for example).

Binary bytes (NULs outside UTF-16/32, mostly control characters, nothing
charset-normalizer accepts) raise ``NotText``.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from charset_normalizer import from_bytes

_BOM_ENCODINGS = (
    # UTF-32 first: its little-endian BOM starts with the UTF-16 one.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# Declarations live in the head of a document; browsers look at the first 1024
# bytes, but Word's HTML export puts long comments first.
_DECLARATION_WINDOW = 4096
_XML_DECLARATION = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)""", re.I)
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)

# charset-normalizer's guess -> the charset to use instead when it also decodes the
# bytes strictly: the preferred one is the more common, or a superset.
_PREFERRED_OVER_GUESS = {
    "cp1250": "cp1252",  # Western European text is guessed as Central European
    "latin_1": "cp1252",  # 0x80-0x9F are C1 controls in Latin-1, punctuation in cp1252
    "shift_jis": "cp932",  # Microsoft's superset, what Japanese files really use
    "cp1125": "cp866",  # decode the same Cyrillic letters; cp866 is the DOS standard
    "gb2312": "gb18030",  # superset
}

# How much of a document the UTF-16 and control-character checks look at.
_SNIFF_BYTES = 4096
_UTF16_NUL_SHARE = 0.3  # ASCII-heavy UTF-16 has a NUL in almost every other byte
_MAX_CONTROL_SHARE = 0.1
_TEXT_CONTROLS = frozenset("\t\n\r\f\v\x1a\x1b")


class NotText(ValueError):
    """The bytes do not look like text in any encoding."""


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str
    """A Python codec name; ``bytes.decode(encoding)`` gives ``text`` back."""


def decode_text(data: bytes, *, declared: str | None = None, complete: bool = True) -> DecodedText:
    """Decode ``data`` through the chain above.

    ``declared`` is a charset named by the document itself (see
    ``find_declared_charset``). Pass ``complete=False`` when ``data`` is only the
    start of a document, so a character cut at the end is not an error.
    Raises ``NotText`` for binary data.
    """
    encoding = _choose_encoding(data, declared, complete)
    try:
        text = _decode(data, encoding, complete)
    except UnicodeDecodeError:
        # Only a BOM or charset-normalizer's guess reaches here; both are strong
        # enough evidence to keep the text with a few replacement characters.
        text = _decode(data, encoding, complete, errors="replace")
    if _looks_binary(text[:_SNIFF_BYTES]):
        raise NotText("the bytes decode mostly to control characters")
    return DecodedText(text, encoding)


def find_declared_charset(data: bytes) -> str | None:
    """The charset named by an XML declaration or HTML ``<meta>`` near the start, if any."""
    head = data[:_DECLARATION_WINDOW]
    match = _XML_DECLARATION.search(head) or _META_CHARSET.search(head)
    return match.group(1).decode("ascii") if match else None


def _choose_encoding(data: bytes, declared: str | None, complete: bool) -> str:
    bom_encoding = _encoding_from_bom(data)
    if bom_encoding:
        return bom_encoding
    if b"\x00" in data:
        utf16 = _utf16_without_bom(data)
        if utf16 and _decodes_strictly(data, utf16, complete):
            return utf16
        raise NotText("the bytes hold NULs and are not UTF-16 or UTF-32")
    for candidate in (_usable_declared_charset(declared), "utf-8"):
        if candidate and _decodes_strictly(data, candidate, complete):
            return candidate
    return _guess_with_charset_normalizer(data, complete)


def _encoding_from_bom(data: bytes) -> str | None:
    for bom, encoding in _BOM_ENCODINGS:
        if data.startswith(bom):
            return encoding
    return None


def _usable_declared_charset(declared: str | None) -> str | None:
    if not declared:
        return None
    try:
        name = codecs.lookup(declared).name
    except LookupError:
        return None
    if name.startswith(("utf-16", "utf-32")):
        # A declaration we could read as ASCII cannot be true: browsers use UTF-8 then.
        return None
    if name in ("latin-1", "iso8859-1"):
        return "cp1252"  # as browsers do (WHATWG Encoding Standard)
    return name


def _utf16_without_bom(data: bytes) -> str | None:
    sample = data[: _SNIFF_BYTES - _SNIFF_BYTES % 2]
    pairs = len(sample) // 2
    if pairs == 0:
        return None
    nuls_at_even = sample[0::2].count(0) / pairs
    nuls_at_odd = sample[1::2].count(0) / pairs
    if nuls_at_even >= _UTF16_NUL_SHARE and nuls_at_odd == 0:
        return "utf-16-be"
    if nuls_at_odd >= _UTF16_NUL_SHARE and nuls_at_even == 0:
        return "utf-16-le"
    return None


def _guess_with_charset_normalizer(data: bytes, complete: bool) -> str:
    best = from_bytes(data).best()
    if best is None:
        raise NotText("no text encoding fits the bytes")
    guess = best.encoding
    preferred = _PREFERRED_OVER_GUESS.get(guess)
    if preferred and _decodes_strictly(data, preferred, complete):
        return preferred
    return guess


def _decodes_strictly(data: bytes, encoding: str, complete: bool) -> bool:
    try:
        _decode(data, encoding, complete)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def _decode(data: bytes, encoding: str, complete: bool, errors: str = "strict") -> str:
    if complete:
        return data.decode(encoding, errors)
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    return decoder.decode(data, final=False)


def _looks_binary(sample: str) -> bool:
    if not sample:
        return False
    controls = sum(1 for char in sample if char < " " and char not in _TEXT_CONTROLS)
    return controls / len(sample) > _MAX_CONTROL_SHARE
