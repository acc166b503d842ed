"""Per-document cost of process isolation: the same PDF, N times in a row, per mode.

Run from the project root:

    .venv/bin/python bench/isolation_overhead.py [--documents 20] [--rounds 5] [PDF]

Prints the median milliseconds per document of each round for ``isolation="none"``
and ``isolation="subprocess"`` (a fresh fork-server child per document), and the
difference. The fork server is started before timing, as it is once per worker.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from docqueue_app.processing import run_processor

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PDF = PROJECT_ROOT.parent / "shared" / "corpus" / "pdf" / "libreoffice-writer-trivial.pdf"
PROCESSOR = "docqueue_app.processing:extract"


def ms_per_document(content: bytes, isolation: str, documents: int) -> float:
    started = time.perf_counter()
    for _ in range(documents):
        run_processor(
            content,
            "bench.pdf",
            "application/pdf",
            processor=PROCESSOR,
            isolation=isolation,
            memory_mb=1024,
            timeout_seconds=60,
        )
    return (time.perf_counter() - started) * 1000 / documents


def median_ms_per_document(content: bytes, isolation: str, documents: int, rounds: int) -> float:
    ms_per_document(content, isolation, 2)  # warm-up: imports, fork server start
    return statistics.median(ms_per_document(content, isolation, documents) for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pdf", nargs="?", type=Path, default=DEFAULT_PDF)
    parser.add_argument("--documents", type=int, default=20, help="documents in a row per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    args = parser.parse_args()
    content = args.pdf.read_bytes()

    in_process = median_ms_per_document(content, "none", args.documents, args.rounds)
    isolated = median_ms_per_document(content, "subprocess", args.documents, args.rounds)

    print(
        f"document: {args.pdf.name} ({len(content)} bytes), {args.documents} in a row, "
        f"median of {args.rounds} rounds"
    )
    print(f"isolation=none        {in_process:8.2f} ms per document")
    print(f"isolation=subprocess  {isolated:8.2f} ms per document")
    print(f"overhead of isolation {isolated - in_process:8.2f} ms per document")


if __name__ == "__main__":
    main()
