"""``python -m bench.perf``: measure every target of issue 14 and print one table.

Run from the project root (``make bench`` does). PostgreSQL is the server at
127.0.0.1:5432 (user postgres; BENCH_POSTGRES_URL overrides the admin URL); SQLite
databases are temporary files. Writes bench-results/bench.json and bench.png.
Settings also come from the environment: BENCH_JOBS, BENCH_ROUNDS.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from .common import PROJECT_ROOT
from .databases import BACKENDS
from .harness import run
from .targets import DRAIN_JOBS, PICKUP_SAMPLES, TARGETS, Settings


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__)
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("BENCH_JOBS", DRAIN_JOBS)))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    parser.add_argument("--backends", type=_list, default=list(BACKENDS))
    parser.add_argument(
        "--only", type=_list, default=list(TARGETS), help=f"some of: {', '.join(TARGETS)}"
    )
    parser.add_argument("--production-documents", type=int, default=400)
    parser.add_argument("--enqueue-documents", type=int, default=500)
    parser.add_argument("--http-uploads", type=int, default=400)
    parser.add_argument("--pickup-samples", type=int, default=PICKUP_SAMPLES)
    parser.add_argument(
        "--backlog-sizes",
        type=lambda text: [int(size) for size in _list(text)],
        default=[1_000, 10_000, 100_000, 1_000_000],
    )
    parser.add_argument(
        "--rss-documents",
        type=lambda text: tuple(int(size) for size in _list(text)),
        default=(100, 10_000),
        help="EARLY,LATE: worker RSS after this many documents",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench-results")
    return parser


def main() -> None:
    args = _parser().parse_args()
    unknown = set(args.only) - set(TARGETS) or set(args.backends) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown: {', '.join(sorted(unknown))}")
    logging.disable(logging.INFO)  # the migrations' log lines would bury the table
    # A stopped bench still stops its workers and servers and drops its databases.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings(
        backends=args.backends,
        rounds=args.rounds,
        jobs=args.jobs,
        production_documents=args.production_documents,
        enqueue_documents=args.enqueue_documents,
        http_uploads=args.http_uploads,
        pickup_samples=args.pickup_samples,
        backlog_sizes=args.backlog_sizes,
        rss_documents=args.rss_documents,
    )
    run(settings, args.only, args.out)


if __name__ == "__main__":
    main()
