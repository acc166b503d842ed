"""Worker processes of the reference systems: ``python -m bench.perf.workers KIND ARGS``.

Each reference worker starts as a fresh interpreter, as ``docqueue queue worker``
does, so both sides run alike (start-up is left out of the rates: common.steady_rate);
imports stay inside the functions so that a worker loads only what it uses.

- ``raw-postgresql URL BATCH`` / ``raw-sqlite PATH BATCH``: claim-and-complete loops
  (see bench/perf/raw.py), until nothing is left.
- ``raw-docqueue-writes KIND URL-OR-PATH BATCH``: the same loop writing docqueue's rows.
- ``pgqueuer URL BATCH``: a pgqueuer QueueManager in drain mode.
- ``huey PATH WORKERS``: a huey consumer with WORKERS worker processes.
"""

from __future__ import annotations

import sys


def _raw_postgresql(url: str, batch: str) -> None:
    from .raw import drain_postgresql

    drain_postgresql(url, int(batch))


def _raw_sqlite(path: str, batch: str) -> None:
    from .raw import drain_sqlite

    drain_sqlite(path, int(batch))


def _raw_docqueue_writes(kind: str, where: str, batch: str) -> None:
    from .raw import drain_with_docqueue_writes

    drain_with_docqueue_writes(kind, where, int(batch))


def _pgqueuer(url: str, batch: str) -> None:
    import asyncio

    from .peers import pgqueuer_drain_loop

    asyncio.run(pgqueuer_drain_loop(url, int(batch)))


def _huey(path: str, workers: str) -> None:
    from .peers import make_huey

    huey, _ = make_huey(path)
    huey.create_consumer(workers=int(workers), worker_type="process", periodic=False).run()


WORKERS = {
    "raw-postgresql": _raw_postgresql,
    "raw-sqlite": _raw_sqlite,
    "raw-docqueue-writes": _raw_docqueue_writes,
    "pgqueuer": _pgqueuer,
    "huey": _huey,
}

if __name__ == "__main__":
    WORKERS[sys.argv[1]](*sys.argv[2:])
