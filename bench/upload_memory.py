"""What large uploads cost one gunicorn worker in memory, on each back end.

Run from the project root:

    .venv/bin/python -m bench.upload_memory [--mb 50] [--only sqlite|postgresql]

gunicorn as shipped (gunicorn.conf.py: 4 threads a worker) with one worker, so it
serves every upload, and the scheduler off, so no claim reads a document back into
it. For one upload of ``--mb`` MB, then for 4 at once (one per thread), prints the
growth of the worker's peak RSS (VmHWM, reset before through /proc/PID/clear_refs)
and of its RSS once the uploads were answered (what it keeps), in MB and in copies
of one file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.perf.databases import BACKENDS, templates
from tests.api.test_upload_memory import MB, reset_peak, status_kb, text_file
from tests.e2e.server import Server, migrated_env

THREADS = 4  # gunicorn.conf.py's threads per worker


def measure(server: Server, contents: list[bytes]) -> dict[str, float]:
    """Peak and kept RSS growth of the one worker while it stores ``contents`` at once."""
    [worker] = server.worker_pids()
    reset_peak(worker)
    before = status_kb(worker, "VmRSS")
    with ThreadPoolExecutor(len(contents)) as pool:
        replies = list(
            pool.map(lambda data: server.upload_reply("large.txt", data, timeout=300), contents)
        )
    assert all(reply.status == 202 for reply in replies), [r.status for r in replies]
    size_mb = len(contents[0]) / MB
    peak = (status_kb(worker, "VmHWM") - before) / 1024
    kept = (status_kb(worker, "VmRSS") - before) / 1024
    return {
        "uploads": len(contents),
        "peak_growth_mb": round(peak),
        "peak_copies_per_upload": round(peak / size_mb / len(contents), 2),
        "kept_after_mb": round(kept),
    }


def run(kind: str, size: int) -> list[dict[str, float]]:
    with templates() as made, made.fresh(kind) as database, tempfile.TemporaryDirectory() as logs:
        env = migrated_env(database.url, {"DOCQUEUE_SCHEDULER_ENABLED": "false"})
        server = Server(env, workers=1, log_path=Path(logs) / "server.log").start()
        try:
            server.upload("warm.txt", text_file(MB))
            results = [measure(server, [text_file(size)])]
            results.append(measure(server, [text_file(size) for _ in range(THREADS)]))
        finally:
            server.stop()
    return [{"backend": kind, "file_mb": size // MB, **result} for result in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--only", choices=BACKENDS)
    args = parser.parse_args()
    for kind in [args.only] if args.only else BACKENDS:
        for result in run(kind, args.mb * MB):
            print(json.dumps(result))


if __name__ == "__main__":
    main()
