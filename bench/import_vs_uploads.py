"""10,000 small files through ``docqueue import`` against HTTP uploads of the same files.

Run from the project root (``make bench`` does):

    .venv/bin/python -m bench.import_vs_uploads [--files 10000] [--uploads 10000]
        [--only sqlite|postgresql]

Each side gets a fresh database per back end (a PostgreSQL database made from a
migrated template, a copied SQLite file) and the scheduler off, so only storing
is measured. The import is the console script as users run it, timed from its
start to its exit (its start-up included, and given apart). The uploads go to
gunicorn as shipped (``gunicorn -c gunicorn.conf.py wsgi:app``) from 8 clients on
keep-alive connections, timed from the first request to the last answer: the
first ``--uploads`` of the files (all 10,000 by default, about a minute per back
end on 2 cores; ``--uploads 2000`` for a quicker look).
Prints documents per second of each and the ratio; writes bench-results/import.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.perf.common import NOOP_PROCESSOR, PROJECT_ROOT, VENV_BIN, docqueue_env
from bench.perf.databases import BACKENDS, Database, templates
from bench.perf.uploads import CLIENTS, docqueue_http

# Words to make text files of; each file also carries its number, so all are distinct.
_WORDS = [
    "queue",
    "document",
    "durable",
    "upload",
    "import",
    "worker",
    "lease",
    "retry",
    "batch",
    "commit",
    "folder",
    "invoice",
    "report",
    "letter",
    "contract",
    "minutes",
    "summary",
    "draft",
    "table",
    "figure",
    "appendix",
]


def small_text_files(count: int, seed: int = 15) -> list[bytes]:
    """``count`` distinct text documents of 1 to 4 KB."""
    chooser = random.Random(seed)
    files = []
    for number in range(count):
        size = chooser.randint(1024, 4096)
        words = [f"document {number}:"]
        length = len(words[0])
        while length < size:
            word = chooser.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        files.append(" ".join(words)[:size].encode() + b"\n")
    return files


def write_folder(folder: Path, contents: list[bytes]) -> None:
    for number, content in enumerate(contents):
        (folder / f"{number:05d}.txt").write_bytes(content)


def run_import(database: Database, folder: Path) -> tuple[float, dict[str, int]]:
    """Seconds ``docqueue import FOLDER`` takes, start to exit, and its summary line."""
    env = docqueue_env(database.url, NOOP_PROCESSOR, "none")
    started = time.perf_counter()
    completed = subprocess.run(
        [str(VENV_BIN / "docqueue"), "import", str(folder)],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"docqueue import failed ({completed.returncode}): {completed.stderr}")
    return elapsed, json.loads(completed.stdout)


def measure(
    kind: str, made: Any, folder: Path, empty: Path, contents: list[bytes], uploads: int
) -> dict:
    with made.fresh(kind) as database:
        startup_seconds, _ = run_import(database, empty)  # start-up and nothing to store
    with made.fresh(kind) as database:
        import_seconds, counts = run_import(database, folder)
    if counts != {"imported": len(contents), "duplicates": 0, "rejected": 0}:
        raise RuntimeError(f"the import did not store every file: {counts}")
    with made.fresh(kind) as database:
        posted = docqueue_http(database, contents[:uploads])
    import_rate = len(contents) / import_seconds
    return {
        "import_per_second": round(import_rate, 1),
        "import_seconds": round(import_seconds, 2),
        "import_startup_seconds": round(startup_seconds, 2),
        "http_uploads_per_second": round(posted.per_second, 1),
        "http_upload_p99_ms": round(posted.p99_ms, 1),
        "ratio": round(import_rate / posted.per_second, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="files imported")
    parser.add_argument("--uploads", type=int, default=10_000, help="of them, uploaded over HTTP")
    parser.add_argument("--only", choices=BACKENDS, help="one back end (default: both)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench-results")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the migrations' log lines would bury the figures
    backends = [args.only] if args.only else list(BACKENDS)

    contents = small_text_files(args.files)
    uploads = min(args.uploads, args.files)
    results = {}
    with (
        tempfile.TemporaryDirectory(prefix="docqueue-import-bench-") as scratch,
        templates() as made,
    ):
        folder, empty = Path(scratch) / "files", Path(scratch) / "empty"
        folder.mkdir()
        empty.mkdir()
        write_folder(folder, contents)
        for kind in backends:
            results[kind] = row = measure(kind, made, folder, empty, contents, uploads)
            print(
                f"{kind:>10}: docqueue import {row['import_per_second']:8.1f} documents/s "
                f"({row['import_seconds']} s, {row['import_startup_seconds']} s of it start-up) | "
                f"{uploads} HTTP uploads ({CLIENTS} clients) {row['http_uploads_per_second']:8.1f} "
                f"documents/s | import is {row['ratio']}x",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "files": args.files,
        "http_uploads": uploads,
        "file_sizes": "1-4 KB text",
        "clients": CLIENTS,
        **results,
    }
    (args.out / "import.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out / 'import.json'}")


if __name__ == "__main__":
    main()
