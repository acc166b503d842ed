"""OCR engines side by side: character error rate, pages per second, and what they cost.

Run from the project root (``make bench`` runs it with the defaults):

    .venv/bin/python -m bench.ocr [--pages 2] [--sets all] [--engines tesseract,rapidocr]

The pages are made here, as the tests make theirs (tests/processing/scanned_pages.py):
about 30 lines of 12 pt English prose on an A4 sheet, scanned at 300 dpi
(``clean-300``, the default with ``corpus``) and, with ``--sets all``, at 150 dpi,
tilted 1-3 degrees, and with 30% grey noise. ``corpus`` is the corpus's scanned
book pages (pdf/scanned-ocr-vicksburg.pdf), rendered by PDFium without their
invisible OCR layer and compared with that layer (itself an OCR, so an agreement,
not an error rate), with the corpus phrases of those pages found.

Engines, each on one thread (a sandbox reads one page at a time; two documents use
the two cores):
- tesseract: docqueue's own path, docqueue_app.processing.ocr (libtesseract through
  tesserocr, in this process, Debian's English model);
- pytesseract: the same model through Debian's ``tesseract`` program, a process per
  page (measured only where pytesseract and the program are installed);
- rapidocr: rapidocr-onnxruntime, PP-OCR models inside its wheel, on onnxruntime
  (measured only where installed; the bench extra installs it).

CER = Levenshtein distance / reference length, after folding runs of whitespace to
one space and typographic quotes and dashes to ASCII. Speed is pages per second of
wall-clock time and CPU seconds per page (the engine's process and its children):
on a shared machine the CPU figure is the steadier one. Neither counts loading the
engine, which is timed apart: import and model load, one page, and peak memory (RSS
and address space, which is what DOCQUEUE_PROCESS_MEMORY_MB caps) in a fresh
interpreter, and whether a page is read under a 1024 MB address-space cap.
Last, the render resolution for scanned PDF pages (how pdf.OCR_DPI was chosen): a
scan PDF of 8 pt text through docqueue's PDF path, and the corpus scan, at 150, 200
and 300 dpi; and the address space docqueue takes per pixel of a large RGBA PNG
(ocr.BYTES_PER_PIXEL). Target (issue 16): CER <= 2% at 300 dpi on clean text for
the engine docqueue uses.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image
from rapidfuzz.distance import Levenshtein

from docqueue_app.processing import extract, ocr, pdf
from tests.processing.scanned_pages import (
    A4_HEIGHT_INCHES,
    english_text,
    render_page,
    scanned_pdf,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORPUS = PROJECT_ROOT.parent / "shared" / "corpus"
VICKSBURG = "pdf/scanned-ocr-vicksburg.pdf"
TARGET_CER = 0.02
MEMORY_CAP_MB = 1024
SENTENCES_PER_PAGE = 30
PDF_RENDER_DPIS = (150, 200, 300)
SMALL_PRINT_POINTS = 8
DEFAULT_SETS = ("clean-300", "corpus")
BIG_PAGE_DPI = 720  # an A4 sheet of 12 pt text at this resolution: 50 megapixels

_TYPOGRAPHY = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}
)

Reader = Callable[[Image.Image, int], str]


# --- the engines -----------------------------------------------------------------------


def load_tesseract() -> Reader:
    ocr.read_page(Image.new("L", (32, 32), 255))  # loads the model
    return lambda image, dpi: ocr.read_page(image, dpi)


def load_pytesseract() -> Reader:
    import pytesseract

    os.environ["OMP_THREAD_LIMIT"] = "1"  # Debian's build uses OpenMP: one thread, as above
    return lambda image, dpi: pytesseract.image_to_string(image, config=f"--dpi {dpi}")


def load_rapidocr() -> Reader:
    import numpy
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)

    def read(image: Image.Image, dpi: int) -> str:
        result, _ = engine(numpy.asarray(image.convert("RGB")))
        return "\n".join(line[1] for line in result or [])

    return read


@dataclass(frozen=True)
class Engine:
    name: str
    load: Callable[[], Reader]
    needs: tuple[str, ...]  # modules, and programs on PATH, that must be there

    def missing(self) -> str | None:
        import importlib.util

        for need in self.needs:
            found = shutil.which(need) if need == "tesseract" else importlib.util.find_spec(need)
            if found is None:
                return need
        return None


ENGINES = {
    "tesseract": Engine("tesseract", load_tesseract, ("tesserocr",)),
    "pytesseract": Engine("pytesseract", load_pytesseract, ("pytesseract", "tesseract")),
    "rapidocr": Engine("rapidocr", load_rapidocr, ("rapidocr_onnxruntime",)),
}


# --- the pages -------------------------------------------------------------------------


@dataclass
class Page:
    image: Image.Image
    dpi: int
    reference: str


def made_pages(
    count: int, dpi: int, tilt: bool = False, noise: float = 0.0, points: float = 12
) -> list[Page]:
    pages = []
    for number in range(count):
        # As many sentences as fill the sheet at this size.
        text = english_text(round(SENTENCES_PER_PAGE * (12 / points) ** 2), seed=number)
        image = render_page(
            text,
            dpi=dpi,
            points=points,
            height_inches=A4_HEIGHT_INCHES,
            rotate_degrees=(1 + number % 3) * (-1) ** number if tilt else 0.0,
            noise=noise,
            seed=number,
        )
        pages.append(Page(image, dpi, text))
    return pages


def corpus_pages(count: int, dpi: int = 300) -> list[Page]:
    document = pdfium.PdfDocument(CORPUS / VICKSBURG)
    pages = []
    for index in range(min(count, len(document))):
        page = document[index]
        layer = page.get_textpage().get_text_range()
        # Drawn without the invisible text: the scan alone, as OCR sees a scanned page.
        image = page.render(scale=dpi / 72, grayscale=True).to_pil().convert("L")
        pages.append(Page(image, dpi, layer))
    return pages


PAGE_SETS: dict[str, tuple[str, Callable[[int], list[Page]]]] = {
    "clean-300": ("clean, 300 dpi", lambda count: made_pages(count, 300)),
    "clean-150": ("clean, 150 dpi", lambda count: made_pages(count, 150)),
    "tilted-300": ("tilted 1-3°, 300 dpi", lambda count: made_pages(count, 300, tilt=True)),
    "noisy-300": ("noise 30%, 300 dpi", lambda count: made_pages(count, 300, noise=0.3)),
    "corpus": ("corpus scan (Vicksburg), 300 dpi", corpus_pages),
}


# --- measuring -------------------------------------------------------------------------


def normalized(text: str) -> str:
    return " ".join(text.translate(_TYPOGRAPHY).split())


def character_error_rate(read: str, reference: str) -> float:
    reference = normalized(reference)
    return Levenshtein.distance(normalized(read), reference) / max(1, len(reference))


def cpu_seconds() -> float:
    """CPU time of this process and of its children that ended (pytesseract's)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class Measurement:
    cer: float
    pages_per_second: float
    cpu_seconds_per_page: float
    texts: list[str]

    def cells(self) -> str:
        return f"{self.cer:.2%} | {self.pages_per_second:.2f} | {self.cpu_seconds_per_page:.2f}"


def measure(reader: Reader, pages: list[Page]) -> Measurement:
    texts = []
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for page in pages:
        texts.append(reader(page.image, page.dpi))
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    references = [page.reference for page in pages]
    errors = list(map(character_error_rate, texts, references))
    return Measurement(statistics.mean(errors), len(pages) / seconds, cpu / len(pages), texts)


def measure_extract(content: bytes, filename: str, pages: list[Page]) -> Measurement:
    """docqueue's extractor on one document made of ``pages``."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    text = extract(content, filename)["text"]
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    reference = " ".join(page.reference for page in pages)
    cer = character_error_rate(text, reference)
    return Measurement(cer, len(pages) / seconds, cpu / len(pages), [text])


def corpus_phrases_found(texts: list[str], pages: list[Page]) -> str:
    """Of the corpus phrases printed on these pages, how many were read."""
    manifest = json.loads((CORPUS / "MANIFEST.json").read_text())
    phrases = next(entry for entry in manifest if entry["file"] == VICKSBURG)["expect"]["phrases"]
    printed = normalized(" ".join(page.reference for page in pages))
    on_pages = [normalized(phrase) for phrase in phrases if normalized(phrase) in printed]
    read = normalized(" ".join(texts))
    return f"{sum(phrase in read for phrase in on_pages)}/{len(on_pages)}"


# One engine's cost, in a fresh interpreter: import, model load, one page, peak memory.
_COST_PROBE = """
import json, resource, sys, time
if sys.argv[3] != "0":
    cap = int(sys.argv[3]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from PIL import Image
from bench import ocr as bench
started = time.perf_counter()
reader = bench.ENGINES[sys.argv[1]].load()
loaded = time.perf_counter()
text = reader(Image.open(sys.argv[2]), 300)
read = time.perf_counter()
print(json.dumps({"load_seconds": loaded - started, "page_seconds": read - loaded,
    **bench.peak_memory_mb(), "chars": len(text)}))
"""
_BASELINE_PROBE = """
import json
from bench import ocr
print(json.dumps(ocr.peak_memory_mb()))
"""


def peak_memory_mb() -> dict[str, int]:
    """This process's peak RSS (or its children's, if higher) and peak address space.

    From /proc: getrusage's own maximum RSS survives exec, so a probe started by a
    large process would report its parent's.
    """
    status = Path("/proc/self/status").read_text()
    field = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if "kB" in line}
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "rss_mb": max(int(field["VmHWM"]), children) // 1024,
        "address_space_mb": int(field["VmPeak"]) // 1024,
    }


def probe(code: str, *args: str) -> dict | str:
    completed = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"]
        return lines[-1][:120]
    return json.loads(completed.stdout.splitlines()[-1])


def engine_costs(names: list[str], page_file: Path) -> list[str]:
    baseline = probe(_BASELINE_PROBE)
    assert isinstance(baseline, dict), baseline
    rows = [
        "| engine | load s (import + model) | one page s | peak RSS MB | peak address space MB "
        f"| reads a page under a {MEMORY_CAP_MB} MB address-space cap |",
        "|---|---:|---:|---:|---:|---|",
        f"| (interpreter, Pillow, PDFium, the bench) | | | {baseline['rss_mb']} "
        f"| {baseline['address_space_mb']} | |",
    ]
    for name in names:
        free = probe(_COST_PROBE, name, str(page_file), "0")
        capped = probe(_COST_PROBE, name, str(page_file), str(MEMORY_CAP_MB))
        verdict = "yes" if isinstance(capped, dict) else f"no: {capped}"
        if isinstance(free, str):
            rows.append(f"| {name} | failed: {free} | | | | {verdict} |")
            continue
        rows.append(
            f"| {name} | {free['load_seconds']:.2f} | {free['page_seconds']:.2f} "
            f"| {free['rss_mb']} | {free['address_space_mb']} | {verdict} |"
        )
    return rows


_PIXEL_PROBE = """
import json, sys
from PIL import Image
from docqueue_app.processing import extract, ocr
ocr.read_page(Image.new("L", (32, 32), 255))  # the model, loaded before the baseline
content = open(sys.argv[1], "rb").read()
def peak():
    return int(open("/proc/self/status").read().split("VmPeak:")[1].split()[0]) * 1024
before = peak()
result = extract(content, "big.png")
print(json.dumps({"bytes": peak() - before, "chars": len(result["text"])}))
"""


def address_space_per_pixel() -> str:
    """What reading a large RGBA PNG adds to docqueue's peak address space, per pixel."""
    page = made_pages(1, BIG_PAGE_DPI)[0].image
    pixels = page.width * page.height
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "big.png"
        page.convert("RGBA").save(path)
        del page
        measured = probe(_PIXEL_PROBE, str(path))
    if isinstance(measured, str):
        return f"address space per pixel: failed: {measured}"
    return (
        f"address space per pixel, a {pixels / 1e6:.0f} MP RGBA PNG page read by docqueue: "
        f"{measured['bytes'] / pixels:.1f} bytes (ocr.BYTES_PER_PIXEL = {ocr.BYTES_PER_PIXEL})"
    )


def pdf_render_rows(count: int) -> list[str]:
    pages = made_pages(count, 300, points=SMALL_PRINT_POINTS)
    content = scanned_pdf([page.image for page in pages], dpi=300)
    rows = [
        f"| scanned PDF pages rendered at | {SMALL_PRINT_POINTS} pt scan PDF: CER | pages/s "
        "| CPU s/page | corpus scan: CER | pages/s | CPU s/page |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    reader = load_tesseract()
    chosen = pdf.OCR_DPI
    try:
        for dpi in PDF_RENDER_DPIS:
            pdf.OCR_DPI = dpi  # the module's setting, changed for this measurement only
            through_docqueue = measure_extract(content, "scan.pdf", pages)
            corpus = measure(reader, corpus_pages(count, dpi))
            mark = " (docqueue's)" if dpi == chosen else ""
            rows.append(f"| {dpi} dpi{mark} | {through_docqueue.cells()} | {corpus.cells()} |")
    finally:
        pdf.OCR_DPI = chosen
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2, help="pages per set (default 2)")
    parser.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help=f"comma-separated, of {', '.join(PAGE_SETS)}; or all (default: %(default)s)",
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated")
    args = parser.parse_args()
    sets = list(PAGE_SETS) if args.sets == "all" else args.sets.split(",")

    names = []
    for name in args.engines.split(","):
        missing = ENGINES[name].missing()
        if missing is None:
            names.append(name)
        elif name == "tesseract":
            sys.exit(f"docqueue's OCR engine is not installed ({missing}): run `make install`")
        else:
            print(f"{name}: skipped, {missing} is not installed (the bench extra installs it)")
    readers = {name: ENGINES[name].load() for name in names}

    print(f"OCR, {args.pages} pages per set, one thread per engine ({ocr.engine_name()})")
    print()
    print("| pages | engine | CER | pages/s | CPU s/page |")
    print("|---|---|---:|---:|---:|")
    clean_cer = None
    for key in sets:
        label, make = PAGE_SETS[key]
        pages = make(args.pages)
        for name in names:
            result = measure(readers[name], pages)
            if key == "corpus":
                found = corpus_phrases_found(result.texts, pages)
                label = f"corpus scan, 300 dpi (phrases read: {found})"
            if name == "tesseract" and key == "clean-300":
                clean_cer = result.cer
            print(f"| {label} | {name} | {result.cells()} |")
    print()

    with tempfile.TemporaryDirectory() as scratch:
        page_file = Path(scratch) / "page.png"
        made_pages(1, 300)[0].image.save(page_file)
        print("\n".join(engine_costs(names, page_file)))
    print()
    print("\n".join(pdf_render_rows(args.pages)))
    print()
    print(address_space_per_pixel())
    if clean_cer is not None:
        verdict = "met" if clean_cer <= TARGET_CER else "NOT met"
        print(f"target: CER <= {TARGET_CER:.0%} at 300 dpi, clean text: {clean_cer:.2%}, {verdict}")


if __name__ == "__main__":
    main()
