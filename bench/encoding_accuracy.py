"""How often the decoding chain gets legacy-encoded text exactly right.

Run from the project root:

    .venv/bin/python bench/encoding_accuracy.py [--set {tuning,holdout,fresh}]
        [--module PATH] [--errors]

Decodes every sample of a labelled set (no BOM, no declared charset): by default the
tuning set ``tests/processing/encoding_samples.py`` the cost weights were fitted on;
``--set holdout`` the texts of ``tests/processing/encoding_holdout.py``, held out at first
and tuned on since; ``--set fresh`` the short texts of
``tests/processing/encoding_fresh.py``, written before that tuning and only ever measured,
for an honest figure on unseen text. Prints a markdown table: per encoding and length
class, the number of samples, the share decoded to exactly the original text, and the
character accuracy (difflib's similarity of decoded and original text, averaged).
``--module`` measures another copy of ``encoding.py`` (an older rule, say); ``--errors``
lists each wrong decoding with the codec chosen.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # `tests` is a package of the project, not installed

from docqueue_app.processing import encoding as current_module  # noqa: E402
from tests.processing.encoding_fresh import FRESH  # noqa: E402
from tests.processing.encoding_holdout import HOLDOUT  # noqa: E402
from tests.processing.encoding_samples import LONG_BYTES, SAMPLES, Sample  # noqa: E402

LENGTHS = ("short", "long")
SETS = {"tuning": SAMPLES, "holdout": HOLDOUT, "fresh": FRESH}


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("encoding_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def decode_or_error(decode: Callable, sample: Sample) -> tuple[str, str, float]:
    """The decoded text, the codec chosen (or the error) and the milliseconds it took."""
    started = time.perf_counter()
    try:
        decoded = decode(sample.data)
    except ValueError as error:  # NotText
        return "", f"NotText: {error}", (time.perf_counter() - started) * 1000
    return decoded.text, decoded.encoding, (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", choices=SETS, default="tuning", help="the labelled set (default: tuning)"
    )
    parser.add_argument("--module", type=Path, help="an encoding.py to measure instead")
    parser.add_argument("--errors", action="store_true", help="list the wrong decodings")
    args = parser.parse_args()
    module = load_module(args.module) if args.module else current_module
    samples = SETS[args.set]

    exact: dict[tuple[str, str], list[bool]] = defaultdict(list)
    similarity: dict[str, list[float]] = defaultdict(list)
    errors = []
    module.decode_text("déjà vu".encode("cp1252"))  # warm up: imports and caches
    milliseconds = []
    for sample in samples:
        text, chosen, elapsed = decode_or_error(module.decode_text, sample)
        milliseconds.append(elapsed)
        exact[sample.encoding, sample.length].append(text == sample.text)
        similarity[sample.encoding].append(
            difflib.SequenceMatcher(None, text, sample.text, autojunk=False).ratio()
        )
        if text != sample.text:
            errors.append((sample, chosen, text))

    print(f"Decoding rule: {module.__file__}, {args.set} set\n")
    print("| encoding | short: n | short: exact | long: n | long: exact | char accuracy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    encodings = list(dict.fromkeys(sample.encoding for sample in samples))
    for encoding in encodings:
        cells = []
        for length in LENGTHS:
            results = exact[encoding, length]
            cells += [str(len(results)), f"{sum(results) / len(results):.0%}" if results else "-"]
        char_accuracy = sum(similarity[encoding]) / len(similarity[encoding])
        print(f"| {encoding} | {' | '.join(cells)} | {char_accuracy:.1%} |")
    total = [ok for results in exact.values() for ok in results]
    print(f"\nAll: {sum(total)}/{len(total)} exact ({sum(total) / len(total):.0%}), ", end="")
    print(
        f"decoding took {statistics.median(milliseconds):.2f} ms per sample (median), "
        f"{max(milliseconds):.2f} ms at most."
    )

    if args.errors:
        print()
        for sample, chosen, text in errors:
            shown = text if len(sample.data) < LONG_BYTES.start else text[:80] + "…"
            print(f"- {sample.language} {sample.encoding} {sample.length} -> {chosen}: {shown!r}")


if __name__ == "__main__":
    main()
