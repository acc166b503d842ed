"""Decode the bytes of a text document, and say which encoding was used.

One chain serves detection and every text format (see MEASUREMENTS.md):

1. a byte-order mark;
2. bytes holding NULs can only be UTF-16 without a BOM (recognised by NULs on
   every other position); anything else with NULs is binary;
3. a charset the document declares (HTML ``<meta>``, XML declaration), if the
   bytes decode strictly with it;
4. strict UTF-8;
5. the least implausible decoding among the regions' usual code pages and
   charset-normalizer's best guess (alone, it reads French as cp1257 or cp775 and
   Polish as cp1252): each candidate's text is scored on its non-ASCII words, for
   letters its language would not use, odd symbols, symbols standing where a
   letter must be, controls, case and script mixed inside words
   (``implausibility``). The language is guessed from the function words of the
   whole text, ASCII words included ("et", "sur": French, so "Paramčtres" is
   implausible); without enough of them, the best-fitting language of the letters.
   Code pages rarely met in documents (DOS, Baltic, and whatever else
   charset-normalizer proposes: Mac, HP Roman-8...) start with a prior cost.

Binary bytes (NULs outside UTF-16/32, mostly control characters, nothing
charset-normalizer accepts) raise ``NotText``.
"""

from __future__ import annotations

import codecs
import functools
import itertools
import operator
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

# charset-normalizer is imported by the two functions that use it, when a text
# is neither declared nor UTF-8: most documents, and a worker's start, never
# need it.

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

# Decoding without a declaration: every candidate that decodes the first
# _DETECTION_BYTES strictly is scored by how implausible its text is, and the least
# implausible wins; ties go to the earlier candidate. The regions' usual code pages
# come first, supersets before their subsets (cp1252 before latin_1, cp932 before
# shift_jis), then what charset-normalizer suggests. Measured on the labelled set of
# tests/processing/encoding_samples.py by bench/encoding_accuracy.py.
_CANDIDATES = (
    "cp1252",  # Western European
    "cp1250",  # Central European
    "iso8859_2",
    "cp1251",  # Cyrillic
    "koi8_r",
    "koi8_u",
    "cp866",
    "cp1253",  # Greek
    "iso8859_7",
    "cp1254",  # Turkish
    "cp1257",  # Baltic
    "cp1256",  # Arabic
    "cp1255",  # Hebrew
    "cp932",  # Japanese
    "cp949",  # Korean
    "gb18030",  # Simplified Chinese
    "big5",  # Traditional Chinese
    "latin_1",  # only when cp1252 fails: bytes 0x81, 0x8D, 0x8F, 0x90, 0x9D
)
_DETECTION_BYTES = 64 * 1024
_SCORED_CHARS = 4000  # of words holding non-ASCII characters, per finalist
_GLANCE_CHARS = 300  # the same, per candidate
_FINALISTS = 3

# Prior cost of code pages rarely met in today's documents: a short text with one
# accented letter gives too little evidence to prefer them ("zur№ckschicken" as
# cp866, "yar»n" as hp_roman8, "—качайте" as mac_cyrillic).
_RARE_CODE_PAGES = {"cp866": 0.5, "cp1257": 0.5}
_UNLISTED_CODE_PAGE = 1.0  # charset-normalizer's guess when not a candidate above
_LISTED_CODECS = frozenset(codecs.lookup(encoding).name for encoding in _CANDIDATES)

# Costs of implausibility (one unit: a letter the text's language would not use).
_FOREIGN_LETTER = 1.0
_COMMON_LETTER = 0.25  # a letter of the language outside its frequency list
_CASE_ANOMALY = 1.0  # "пРИВЕТ", "dÓm"
_ODD_SYMBOL = 0.5  # "¶", "³", "¤" ...
_SYMBOL_IN_WORD = 1.0  # "mas³o", "c¶té"
_CONTROL = 4.0  # C1 controls, unassigned and private-use characters
_MIXED_SCRIPTS = 1.0  # letters of two scripts in one word: "Gr廻e", Latin and Arabic

# Punctuation that costs nothing in any language.
_PLAIN_PUNCTUATION = frozenset(
    "\u00a0\u00ab\u00bb\u2018\u2019\u201a\u201c\u201d\u201e\u2013\u2014\u2026\u2022"
    "\u00b7\u00bf\u00a1\u20ac\u00a3\u00b0\u00a7\u00a9\u00ae\u2122\u00d7\u2116"
    "\u3001\u3002\u300c\u300d\u300e\u300f\u3010\u3011\u30fb\u30fc\uff01\uff08\uff09"
    "\uff0c\uff0e\uff1a\uff1b\uff1f\u301c\u3005"
)
_SCRIPT_LETTERS = tuple(
    re.compile(letters)
    for letters in (
        "[A-Za-z\u00c0-\u024f]",  # Latin
        "[\u0370-\u03ff]",  # Greek
        "[\u0400-\u052f]",  # Cyrillic
        "[\u05d0-\u05ea]",  # Hebrew
        "[\u0620-\u064a]",  # Arabic
        "[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7a3\uf900-\ufaff]",  # CJK, Hangul
    )
)
_CLOSING_QUOTES = frozenset("\u2019\u201d\u00bb")
# Punctuation that may stand between two letters of a word: apostrophes, Catalan's
# middle dot, soft and non-breaking hyphens, dashes and the ellipsis; CJK and
# full-width punctuation (from U+3000) too, as CJK text runs without spaces. Any
# other symbol there stands where a letter must be ("zur№ckschicken", "D£UGIEJ").
_WORD_JOINERS = frozenset("\u2019\u2018\u00b7\u00ad\u2010\u2011\u2013\u2014\u2026")
_WORD_WITH_NON_ASCII = re.compile(r"(?<!\S)\S*[^\x00-\x7f]\S*")


def _letters_between(first: str, last: str) -> str:
    return "".join(filter(str.isalpha, map(chr, range(ord(first), ord(last) + 1))))


# The non-ASCII letters of each language (lower case).
_ALPHABETS = {
    language: frozenset(letters)
    for language, letters in {
        "English": "",
        "French": "àâæçéèêëîïôœùûüÿ",
        "German": "äöüß",
        "Spanish": "áéíñóúü",
        "Portuguese": "àáâãçéêíóôõú",
        "Italian": "àèéìíîòóù",
        "Catalan": "àçèéíïòóúü",
        "Dutch": "áéëïóöü",
        "Danish": "åæéø",
        "Norwegian": "åæéø",
        "Swedish": "åäéö",
        "Finnish": "åäö",
        "Icelandic": "áæðéíóöþúý",
        "Polish": "ąćęłńóśźż",
        "Czech": "áčďéěíňóřšťúůýž",
        "Slovak": "áäčďéíĺľňóôŕšťúýž",
        "Hungarian": "áéíóöőúüű",
        "Romanian": "âăîșşțţ",
        "Croatian": "čćđšž",
        "Slovene": "čšž",
        "Turkish": "âçğıİîöşûü",
        "Lithuanian": "ąčęėįšųūž",
        "Latvian": "āčēģīķļņšūž",
        "Estonian": "äõöšüž",
        "Albanian": "çë",
        "Russian": "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        "Ukrainian": "абвгґдеєжзиіїйклмнопрстуфхцчшщьюя",
        "Belarusian": "абвгдеёжзійклмнопрстуўфхцчшыьэюя",
        "Bulgarian": "абвгдежзийклмнопрстуфхцчшщъьюя",
        "Serbian": "абвгдђежзијклљмнњопрстћуфхцчџш",
        "Macedonian": "абвгдѓежзѕијклљмнњопрстќуфхцчџш",
        "Greek": "αβγδεζηθικλμνξοπρσςτυφχψωάέήίόύώϊϋΐΰ",
        # Scripts of one alphabet: every letter of the Unicode block.
        "Arabic": _letters_between("\u0620", "\u06d3"),
        "Farsi": _letters_between("\u0620", "\u06d3"),
        "Hebrew": _letters_between("\u05d0", "\u05ea"),
        "Thai": _letters_between("\u0e01", "\u0e4e"),
    }.items()
}
# CJK languages: a character is common when its two bytes in the language's
# national charset have a lead byte from the frequent block (GB2312 level 1, Big5's
# frequent characters, JIS X 0208 kana and level 1, KS X 1001 Hangul).
_COMMON_CJK = {
    "Chinese": ("gb2312", range(0xB0, 0xD8)),
    "Traditional Chinese": ("big5", range(0xA4, 0xC7)),
    "Japanese": ("shift_jis", (0x82, 0x83, *range(0x88, 0x99))),
    "Korean": ("euc_kr", range(0xB0, 0xC9)),
}
_LANGUAGES_BY_SCRIPT = {
    "latin": [name for name, letters in _ALPHABETS.items() if max(letters, default="") < "\u0370"],
    "greek": ["Greek"],
    "cyrillic": [
        name
        for name, letters in _ALPHABETS.items()
        if "\u0400" <= min(letters, default="") < "\u0530"
    ],
    "cjk": list(_COMMON_CJK),
    "other": ["Arabic", "Farsi", "Hebrew", "Thai"],
}
_SIMPLIFIED_TO_TRADITIONAL = str.maketrans(
    "这个们来为国说时会对过发后里种现当没动还进样开从实经么学于着",
    "這個們來為國說時會對過發後裡種現當沒動還進樣開從實經麼學於著",
)


# Function words (lower case) by language, for guessing the language of a whole text:
# frequent in any text, and mostly ASCII, so every candidate decoding shows them.
_FUNCTION_WORDS = {
    "English": "the and of to is in that for with you are this be on it was not have from",
    "French": "le la les et des du une est pour sur vous dans que qui pas au aux ce avec ne "
    "il nous je puis mais ou un",
    "German": "der die das und nicht mit zur zum ist den dem ein eine sie ich wir auf für "
    "von auch bitte sich bis an im es",
    "Spanish": "el la los las y de que en un una por con para es no se del al su lo pero",
    "Portuguese": "o a os as e de que em um uma para com não do da dos das no na é ao se",
    "Italian": "il lo la e di che per con non un una è sono del della gli le",
    "Dutch": "de het een en van is niet op te dat met voor zijn",
    "Polish": "w i na nie się jest z do to że o przy od za jak ale dla po",
    "Czech": "a je se na v z do to že o pro jak ale od za by jsem",
    "Slovak": "a je sa na v z do to že o pre ako ale od za by som",
    "Hungarian": "a az és hogy nem egy is meg van már de ha",
    "Romanian": "și în de la cu nu pe un o este din care",
    "Croatian": "i je u na se da za od ne su to",
    "Turkish": "ve bir bu için ile da de çok ne olarak daha gibi",
    "Swedish": "och att det som en är på för med inte av",
    "Lithuanian": "ir į su kad iš yra ne bet tai už prie apie",
    "Latvian": "un ir ar uz no par kas ka bet tas",
    "Estonian": "ja on ei et see ka kui ta",
    "Russian": "и в не на с что я он как по это к но из от за для а то",  # noqa: RUF001 (Cyrillic and Greek letters)
    "Ukrainian": "і в не на з що я як по це до але та й від за для а",  # noqa: RUF001 (Cyrillic and Greek letters)
    "Bulgarian": "и в не на с че за от се да по е а са",  # noqa: RUF001 (Cyrillic and Greek letters)
    "Greek": "και το να η ο της τα του για με που στο από δεν είναι στην",  # noqa: RUF001 (Cyrillic and Greek letters)
}


def _languages_by_function_word() -> dict[str, tuple[str, ...]]:
    languages: defaultdict[str, list[str]] = defaultdict(list)
    for language, words in _FUNCTION_WORDS.items():
        for word in words.split():
            languages[word].append(language)
    return {word: tuple(names) for word, names in languages.items()}


_FUNCTION_WORD_LANGUAGES = _languages_by_function_word()
_LANGUAGE_CHARS = 3000  # of the text, for the guess
_LANGUAGE_EVIDENCE = 1.5  # function words (one shared by n languages counts 1/n)
_LANGUAGE_SHARE = 0.5  # of the best language's evidence, for a close second
_WORD = re.compile(r"[^\W\d_]+")


@functools.cache
def _letter_cost_tables() -> defaultdict[str, dict[str, float]]:
    """Per language, the cost of each of its letters: from 0 for the most frequent
    (charset-normalizer's frequency lists) to ``_COMMON_LETTER`` for the rarest."""
    from charset_normalizer.constant import FREQUENCIES

    lists = {language: "".join(letters) for language, letters in FREQUENCIES.items()}
    lists["Japanese"] = lists["Japanese"] + lists["Japanese——"] + lists["Japanese—"]
    lists["Traditional Chinese"] = lists["Chinese"].translate(_SIMPLIFIED_TO_TRADITIONAL)
    tables: defaultdict[str, dict[str, float]] = defaultdict(dict)
    for language, alphabet in _ALPHABETS.items():
        tables[language] = dict.fromkeys(alphabet, _COMMON_LETTER)
    for language, letters in lists.items():
        for rank, letter in enumerate(letters):
            tables[language][letter] = _COMMON_LETTER * rank / len(letters)
    return tables


# How much of a document the UTF-16 and control-character checks look at.
_SNIFF_BYTES = 4096
_UTF16_NUL_SHARE = 0.3  # ASCII-heavy UTF-16 has a NUL in almost every other byte
_MAX_CONTROL_SHARE = 0.1
# Every printable ASCII character but "~" (an escape in HZ, which WHATWG also refuses).
_PRINTABLE_ASCII = bytes(range(0x20, 0x7E))
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
    return _guess_encoding(data, complete)


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
    if name.startswith(("utf-16", "utf-32")) or not _reads_ascii_as_ascii(name):
        # A declaration we could read as ASCII cannot be true: browsers use UTF-8 then.
        # So with EBCDIC (cp037, cp500...), which made an ASCII page control characters
        # (refused as binary), and UTF-7, whose "+" starts an escape: no browser reads
        # a page as UTF-7 (WHATWG Encoding Standard), and "+AF8-" came out as "_".
        return None
    if name in ("latin-1", "iso8859-1"):
        return "cp1252"  # as browsers do (WHATWG Encoding Standard)
    return name


def _reads_ascii_as_ascii(encoding: str) -> bool:
    try:
        return _PRINTABLE_ASCII.decode(encoding) == _PRINTABLE_ASCII.decode("ascii")
    except (UnicodeDecodeError, LookupError):
        return False


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


def _guess_encoding(data: bytes, complete: bool) -> str:
    from charset_normalizer import from_bytes

    sample = data[:_DETECTION_BYTES]
    sample_complete = complete and len(sample) == len(data)
    best = from_bytes(sample).best()
    if best is None:
        raise NotText("no text encoding fits the bytes")
    decodings: dict[str, str] = {}  # text -> the first candidate that gives it
    for encoding in dict.fromkeys((*_CANDIDATES, best.encoding)):
        try:
            text = _decode(sample, encoding, sample_complete)
        except (UnicodeDecodeError, LookupError):
            continue
        decodings.setdefault(text, encoding)

    def prior(text: str) -> float:
        encoding = decodings[text]
        if codecs.lookup(encoding).name not in _LISTED_CODECS:
            return _UNLISTED_CODE_PAGE
        return _RARE_CODE_PAGES.get(encoding, 0.0)

    # A glance at every decoding, a long look at the few best, each with its code
    # page's prior; sorted() and min() keep the order of equal scores, so the
    # earlier candidate wins a tie.
    finalists = sorted(
        decodings, key=lambda text: prior(text) + implausibility(text, _GLANCE_CHARS)
    )
    best_text = min(
        finalists[:_FINALISTS], key=lambda text: prior(text) + implausibility(text), default=None
    )
    return decodings[best_text] if best_text is not None else best.encoding


def implausibility(text: str, scored_chars: int = _SCORED_CHARS) -> float:
    """How unlikely ``text`` is as a correct decoding; 0 for plain ASCII.

    Only words holding non-ASCII characters are scored, about the first
    ``scored_chars`` characters of them: odd symbols and controls, symbols inside
    words, a capital after a small letter, scripts mixed in a word, and letters
    the text's language would not use (``_FOREIGN_LETTER``) or rarely uses. The
    language is the one whose function words the text uses (``_guess_languages``),
    else the best-fitting one for the letters of each script; upper and lower case
    count alike.
    """
    words = []
    scored = 0
    for match in _WORD_WITH_NON_ASCII.finditer(text):
        words.append(match.group()[: scored_chars - scored])  # CJK runs long without spaces
        scored += len(words[-1])
        if scored >= scored_chars:
            break
    letters_by_script: defaultdict[str, Counter[str]] = defaultdict(Counter)
    odd_symbols = set()
    in_word_symbols = set()  # symbols that may not stand between two letters
    cost = 0.0
    for char, count in Counter("".join(words)).items():
        if char.isascii():
            continue
        category = unicodedata.category(char)
        if (
            (category[0] in "PS" or category == "No")
            and char not in _WORD_JOINERS
            and char < "\u3000"
        ):
            in_word_symbols.add(char)
        if char in _PLAIN_PUNCTUATION:
            continue
        if char.isalpha():
            lower = char.lower()
            letter = lower if len(lower) == 1 else char  # "İ".lower() is two characters
            letters_by_script[_script(char)][letter] += count
        elif category[0] == "C":  # C1 controls, unassigned, private use
            cost += _CONTROL * count
        else:
            cost += _ODD_SYMBOL * count
            odd_symbols.add(char)
    for word in words:
        cost += _word_shape_cost(word, in_word_symbols)
    text_languages = _guess_languages(text) if letters_by_script else None
    for script, letters in letters_by_script.items():
        counts = list(letters.values())
        languages = _LANGUAGES_BY_SCRIPT[script]
        if text_languages is not None:
            languages = [language for language in languages if language in text_languages]
            if not languages:  # Cyrillic "a" for "à" in a French text
                cost += _FOREIGN_LETTER * sum(counts)
                continue
        cost += min(
            sum(map(operator.mul, _letter_costs(tuple(letters), language), counts))
            for language in languages
        )
    return cost


def _guess_languages(text: str) -> frozenset[str] | None:
    """The languages whose function words the start of ``text`` uses most, if enough."""
    words = Counter(_WORD.findall(text[:_LANGUAGE_CHARS].lower()))
    evidence: Counter[str] = Counter()
    for word in words.keys() & _FUNCTION_WORD_LANGUAGES.keys():
        languages = _FUNCTION_WORD_LANGUAGES[word]
        for language in languages:
            evidence[language] += words[word] / len(languages)
    best = max(evidence.values(), default=0.0)
    if best < _LANGUAGE_EVIDENCE:
        return None
    return frozenset(
        language for language, weight in evidence.items() if weight >= best * _LANGUAGE_SHARE
    )


def _word_shape_cost(word: str, in_word_symbols: set[str]) -> float:
    """Costs that depend on where a character stands in its word."""
    cost = 0.0
    if word[0] in _CLOSING_QUOTES and word[1:2].isalpha():
        cost += _ODD_SYMBOL  # a capital read as a closing quote: cp1253 text as ISO-8859-7
    if not (word.islower() or word.isupper() or word.istitle()):
        for previous, char in itertools.pairwise(word):
            if previous.islower() and char.isupper() and not (previous + char).isascii():
                cost += _CASE_ANOMALY  # "пРИВЕТ", "dÓm"
    if not in_word_symbols.isdisjoint(word):
        for before, char, after in zip(word, word[1:], word[2:], strict=False):
            if char in in_word_symbols and before.isalpha() and after.isalpha():
                cost += _SYMBOL_IN_WORD  # "mas³o", "c¶té", "zur№ckschicken", "D£UGIEJ"
    if sum(1 for letters in _SCRIPT_LETTERS if letters.search(word)) > 1:
        cost += _MIXED_SCRIPTS
    return cost


def _script(letter: str) -> str:
    code = ord(letter)
    if code < 0x250 or 0x1E00 <= code < 0x1F00:
        return "latin"
    if 0x370 <= code < 0x400 or 0x1F00 <= code < 0x2000:
        return "greek"
    if 0x400 <= code < 0x530:
        return "cyrillic"
    if 0x3040 <= code < 0xA000 or 0xAC00 <= code < 0xD7B0 or 0xF900 <= code < 0xFB00:
        return "cjk"
    if 0xFF66 <= code < 0xFFA0:
        return "cjk"  # half-width katakana
    return "other"


def _letter_costs(letters: tuple[str, ...], language: str) -> list[float]:
    costs = _letter_cost_tables()[language]
    if language in _COMMON_CJK:
        return [_cjk_letter_cost(letter, language) for letter in letters]
    return list(map(costs.get, letters, itertools.repeat(_FOREIGN_LETTER)))


@functools.lru_cache(maxsize=8192)
def _cjk_letter_cost(letter: str, language: str) -> float:
    rank = _letter_cost_tables()[language].get(letter)
    if rank is not None:
        return rank
    codec, lead_bytes = _COMMON_CJK[language]
    try:
        encoded = letter.encode(codec)
    except UnicodeEncodeError:
        return _FOREIGN_LETTER
    return _COMMON_LETTER if len(encoded) == 2 and encoded[0] in lead_bytes else _FOREIGN_LETTER


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
