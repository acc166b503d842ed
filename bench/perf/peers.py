"""The Python job queues users would pick instead, doing the same no-op work.

pgqueuer (asyncpg) on PostgreSQL and huey with its SQLite storage drain N jobs
queued up front with two workers; procrastinate's single ``defer`` is the enqueue
peer. A peer that cannot be imported or run raises NotMeasured: the table says why
and the rest of the bench goes on.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from pathlib import Path

from .common import NotMeasured, reference_rate, running, start_reference_worker, steady_rate
from .databases import Database

PGQUEUER_BATCH = 10  # as measured in MEASUREMENTS.md
_PGQUEUER_LEFT = "SELECT count(*) FROM pgqueuer"


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise NotMeasured(f"{module} is not installed ({exc})") from exc


async def _pgqueuer_fill(url: str, jobs: int) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    connection = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(connection))
        await queries.install()
        await queries.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
    finally:
        await connection.close()


async def pgqueuer_drain_loop(url: str, batch: int) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    connection = await asyncpg.connect(url)
    manager = QueueManager(Queries(AsyncpgDriver(connection)))

    @manager.entrypoint("noop")
    async def noop(job: object) -> None:
        return None

    try:
        await manager.run(batch_size=batch, mode=QueueExecutionMode.drain)
    finally:
        await connection.close()


def pgqueuer_drain(database: Database, jobs: int, workers: int = 2) -> float:
    """Jobs per second (steady state) of ``workers`` pgqueuer processes draining no-op jobs."""
    _require("pgqueuer")
    _require("asyncpg")
    asyncio.run(_pgqueuer_fill(database.url, jobs))
    with closing(database.connect()) as probe:
        # pgqueuer deletes a job from its queue table when the job is done.
        return reference_rate(
            "pgqueuer",
            (database.url, PGQUEUER_BATCH),
            workers,
            lambda: jobs - probe.execute(_PGQUEUER_LEFT).fetchone()[0],
            jobs,
        )


def make_huey(path: str):  # -> tuple[SqliteHuey, TaskWrapper]
    """huey on SQLite at ``path`` and its no-op task (the same in enqueuer and consumer)."""
    from huey import SqliteHuey

    huey = SqliteHuey(filename=path)

    @huey.task(name="noop")
    def noop() -> None:
        return None

    return huey, noop


def huey_drain(folder: Path, jobs: int, workers: int = 2) -> float:
    """Jobs per second (steady state) of a huey consumer with ``workers`` processes on SQLite."""
    _require("huey")
    path = str(folder / f"huey-{time.monotonic_ns()}.db")
    huey, noop = make_huey(path)
    for _ in range(jobs):
        noop()
    # huey takes a task off its queue when a worker picks it up.
    with running([start_reference_worker("huey", path, workers)]) as processes:
        rate = steady_rate(lambda: jobs - huey.pending_count(), jobs, processes, timeout=120)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rate


def procrastinate_enqueue(database: Database, jobs: int) -> float:
    """Jobs per second of procrastinate's sync ``defer``, one job (one transaction) each."""
    _require("procrastinate")
    from procrastinate import App, SyncPsycopgConnector

    app = App(connector=SyncPsycopgConnector(conninfo=database.url))

    @app.task(name="noop")
    def noop() -> None:
        return None

    with app.open():
        app.schema_manager.apply_schema()
        started = time.perf_counter()
        for _ in range(jobs):
            noop.defer()
        return jobs / (time.perf_counter() - started)
