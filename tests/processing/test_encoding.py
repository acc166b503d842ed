"""The decoding chain: BOM, UTF-16 without BOM, declared charset, UTF-8, detection."""

from __future__ import annotations

from collections import defaultdict

import pytest

from docqueue_app.processing import extract
from docqueue_app.processing.detection import detect_content_type
from docqueue_app.processing.encoding import NotText, decode_text, find_declared_charset

from .encoding_fresh import FRESH
from .encoding_holdout import HOLDOUT
from .encoding_samples import FRENCH_LETTER, LONG_BYTES, SAMPLES, SHORT_BYTES, Sample

FRENCH = (
    "L'été était très chaud cette année. J'ai acheté un café au lait pour 3,50 €. "
    "C'était délicieux ! Le garçon a répondu : « Très bien, à bientôt ». "
) * 3


@pytest.mark.parametrize(
    ("encoded", "encoding"),
    [
        ("Grüße".encode("utf-8-sig"), "utf-8-sig"),
        ("Grüße".encode("utf-16-le"), "utf-16-le"),
        ("Grüße".encode("utf-16"), "utf-16"),
        (b"\xfe\xff" + "Grüße".encode("utf-16-be"), "utf-16"),
        ("Grüße".encode("utf-32"), "utf-32"),
        ("Grüße".encode("utf-16-be"), "utf-16-be"),
    ],
    ids=["utf-8-bom", "utf-16-le-no-bom", "utf-16-bom", "utf-16-be-bom", "utf-32", "utf-16-be"],
)
def test_byte_order_marks_and_bomless_utf16(encoded: bytes, encoding: str) -> None:
    decoded = decode_text(encoded)

    assert (decoded.text, decoded.encoding) == ("Grüße", encoding)


def test_declared_charset_is_used_when_the_bytes_fit_it() -> None:
    decoded = decode_text("Привет, мир".encode("koi8-r"), declared="KOI8-R")

    assert (decoded.text, decoded.encoding) == ("Привет, мир", "koi8-r")


def test_a_declaration_the_bytes_contradict_is_ignored() -> None:
    arabic = "قرية من القرى التي كانت " * 5

    decoded = decode_text(arabic.encode("cp1256"), declared="utf-8")

    assert decoded.text == arabic


def test_declared_latin1_means_windows_1252_as_in_browsers() -> None:
    decoded = decode_text(b"Price: \x80 5", declared="ISO-8859-1")

    assert (decoded.text, decoded.encoding) == ("Price: € 5", "cp1252")


def test_a_utf16_declaration_in_ascii_readable_bytes_is_ignored() -> None:
    decoded = decode_text(b"<meta charset=utf-16><p>caf\xc3\xa9", declared="utf-16")

    assert decoded.encoding == "utf-8"


@pytest.mark.parametrize("charset", ["cp037", "cp500", "IBM1026"])
def test_an_ebcdic_declaration_in_ascii_readable_bytes_is_ignored(charset: str) -> None:
    # Read as EBCDIC, the ASCII page became control characters: an HTML page with a
    # wrong <meta charset> was refused as binary content (415 at upload).
    page = f'<html><head><meta charset="{charset}"><title>Menu</title></head><body>Soup</body>'
    content = page.encode("ascii")

    assert detect_content_type(content, "menu.html") == "text/html"
    result = extract(content, "menu.html")
    assert (result["title"], result["text"]) == ("Menu", "Soup")


def test_a_utf7_declaration_is_ignored_as_in_browsers() -> None:
    # Browsers never read a page as UTF-7 (it hid markup from filters); decoded as
    # declared, "+AF8-" became "_" and the word was lost.
    content = b'<meta charset="utf-7"><p>Join with +AF8- here</p>'

    assert extract(content, "page.html")["text"] == "Join with +AF8- here"


def test_unknown_declared_charset_is_ignored() -> None:
    assert decode_text(b"plain", declared="x-made-up").encoding == "utf-8"


def test_western_european_text_prefers_cp1252_over_cp1250() -> None:
    decoded = decode_text(FRENCH.encode("cp1252"))

    assert (decoded.text, decoded.encoding) == (FRENCH, "cp1252")


def test_japanese_prefers_cp932_which_has_the_ibm_kanji() -> None:
    japanese = "髙橋淳,名古屋,佐藤太郎\n" * 20

    decoded = decode_text(japanese.encode("cp932"))

    assert (decoded.text, decoded.encoding) == (japanese, "cp932")


@pytest.mark.parametrize(
    "binary",
    [
        b"text with a \x00 NUL that is not UTF-16 at all, not even close",
        b"\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11abc",
    ],
    ids=["nul", "control-characters"],
)
def test_binary_is_not_text(binary: bytes) -> None:
    with pytest.raises(NotText):
        decode_text(binary)


def test_a_sample_may_end_in_the_middle_of_a_character() -> None:
    sample = "naïve café".encode()[:-1]  # cuts the two-byte é in half

    assert decode_text(sample, complete=False).text == "naïve caf"


@pytest.mark.parametrize(
    ("head", "charset"),
    [
        (b'<html><head><meta charset="Shift_JIS">', "Shift_JIS"),
        (b"<META HTTP-EQUIV=Content-Type CONTENT='text/html; charset=iso-8859-6'>", "iso-8859-6"),
        (b'<?xml version="1.0" encoding="windows-1252"?><html>', "windows-1252"),
        (b'<meta http-equiv="Content-Type" content="text/html">', None),
        (b"no markup at all", None),
    ],
)
def test_declared_charset_is_found_in_the_head(head: bytes, charset: str | None) -> None:
    assert find_declared_charset(head) == charset


@pytest.mark.parametrize("encoding", ["latin_1", "cp1252"])
def test_a_french_letter_is_not_read_as_baltic(encoding: str) -> None:
    # Issue 12: about 700 bytes with few accents came out as cp1257, "crčme brūlée".
    decoded = decode_text(FRENCH_LETTER.encode(encoding))

    assert "crème brûlée" in decoded.text
    assert "Genève" in decoded.text
    assert decoded.text == FRENCH_LETTER


def _groups(samples: list[Sample]) -> dict[tuple[str, str], list[Sample]]:
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.encoding, sample.length].append(sample)
    return groups


def _wrong_decodings(samples: list[Sample]) -> dict[str, str]:
    """The start of each sample decoded to other than its text, with what it became."""
    decoded = {sample: decode_text(sample.data).text for sample in samples}
    return {sample.text[:40]: text[:40] for sample, text in decoded.items() if text != sample.text}


# Share of each group's samples decoded to exactly the original text. Every group
# measured 100% with bench/encoding_accuracy.py, and a group holds 1 to 9 samples, so
# any lower bound would let a whole sample slip: every group must stay exact.
MINIMUM_ACCURACY = 1.0


@pytest.mark.parametrize(("encoding", "length"), list(_groups(SAMPLES)), ids=str)
def test_the_labelled_set_decodes_exactly(encoding: str, length: str) -> None:
    samples = _groups(SAMPLES)[encoding, length]

    wrong = _wrong_decodings(samples)

    assert 1 - len(wrong) / len(samples) >= MINIMUM_ACCURACY, wrong


# The held-out set, measured with `bench/encoding_accuracy.py --set holdout`: each
# group's share decoded exactly, rounded down to two places, so one more wrong sample in
# any group fails; groups not listed must stay at 100%. It measured 102 of 111 before
# its nine failures guided the function-word, prior and symbol-in-word rules, and 111 of
# 111 since (so it is tuned on now: FRESH gives the honest figure). Every group is
# at 100%, so nothing is listed; list a group with its figure if a change is accepted
# that costs a sample.
HOLDOUT_MINIMUM_ACCURACY: dict[tuple[str, str], float] = {}

# The fresh set, written before that tuning and never tuned on, measured with
# `bench/encoding_accuracy.py --set fresh` the same way: 37 of 44 exact before the rules
# above, 44 of 44 after (one of them, letters of another script than the text's language
# costing as foreign, was written after seeing the two French samples it fixes fail;
# without it 42 of 44). Every group is at 100%.
FRESH_MINIMUM_ACCURACY: dict[tuple[str, str], float] = {}

MEASURED_SETS = {
    "holdout": (HOLDOUT, HOLDOUT_MINIMUM_ACCURACY),
    "fresh": (FRESH, FRESH_MINIMUM_ACCURACY),
}


@pytest.mark.parametrize(
    ("labelled_set", "encoding", "length"),
    [
        (name, encoding, length)
        for name, (samples, _) in MEASURED_SETS.items()
        for encoding, length in _groups(samples)
    ],
    ids=str,
)
def test_the_measured_sets_decode_as_measured(
    labelled_set: str, encoding: str, length: str
) -> None:
    all_samples, minimum_accuracy = MEASURED_SETS[labelled_set]
    samples = _groups(all_samples)[encoding, length]

    wrong = _wrong_decodings(samples)

    accuracy = 1 - len(wrong) / len(samples)
    assert accuracy >= minimum_accuracy.get((encoding, length), 1.0), wrong


@pytest.mark.parametrize("sample", HOLDOUT + FRESH, ids=lambda sample: sample.language)
def test_the_measured_texts_have_the_length_of_their_class(sample: Sample) -> None:
    assert len(sample.data) in {"short": SHORT_BYTES, "long": LONG_BYTES}[sample.length]


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Привет, как дела? Я в пути.", "cp866"),
        ("Sveiki! Rytoj susitiksime prie ežero, atsineškite maisto ir vandens.", "cp1257"),
    ],
    ids=["dos-cyrillic", "baltic"],
)
def test_a_rare_code_page_still_wins_on_its_own_text(text: str, encoding: str) -> None:
    # cp866 and cp1257 start with a prior cost, which their own text outweighs.
    decoded = decode_text(text.encode(encoding))

    assert (decoded.text, decoded.encoding) == (text, encoding)


@pytest.mark.parametrize(
    "text",
    [
        "Meet me at the Müller office in Zürich on Monday, it is near the station.",
        "—Hola —dijo él—. ¿Qué tal estás? —Bien, gracias, ¿y tú? Vamos al cine.",
        "La col·lecció del museu està oberta de dimarts a diumenge, de 10 a 19 h.",
    ],
    ids=["english-loanwords", "spanish-dialogue-dashes", "catalan-middle-dot"],
)
def test_borrowed_letters_and_joining_punctuation_stay_western(text: str) -> None:
    decoded = decode_text(text.encode("cp1252"))

    assert (decoded.text, decoded.encoding) == (text, "cp1252")
