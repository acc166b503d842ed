"""End to end: nothing a long-running docqueue holds grows with time, work or faults.

docqueue runs for months: gunicorn workers (one runs the queue scheduler),
standalone workers, their sandboxes, LISTEN connections, webhook lanes. Each test
repeats real work or a real fault a few times and takes a ``Census`` of the
processes (descriptors, threads, child processes, PostgreSQL sessions) after the
first round and after the last: what grows with the rounds would grow without
bound. ``make stress`` runs the document rounds with DOCQUEUE_LEAK_DOCUMENTS
documents each (2,000) instead of LEAK_DOCUMENTS.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL
from tests.e2e.process_resources import Census, postgres_sessions
from tests.e2e.server import (
    Server,
    start_worker,
    stop_worker,
    wait_for,
)
from tests.e2e.test_one_scheduler_per_host import attempt_pids

LISTENER = "docqueue-listener"
# A pooled connection's worth of PostgreSQL sessions beyond the pool: SQLAlchemy's
# QueuePool keeps up to 5 (the listener comes on top).
POOL_SIZE = 5


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def within_slack(first: Census, last: Census, descriptors: int, threads: int) -> bool:
    """Whether ``last`` holds at most the given number of descriptors and threads more
    than ``first`` (those of PostgreSQL sessions left out: the pool's own business),
    no more child processes, and no zombie."""
    return (
        last.descriptors - last.session_count()
        <= first.descriptors - first.session_count() + descriptors
        and last.threads <= first.threads + threads
        and last.children <= first.children
        and last.zombies == 0
    )


# -- PostgreSQL sessions cut, again and again -------------------------------------

CUTS = 4
# Long: a document picked up after a cut was claimed on a notification (LISTEN),
# never by the poll, which would come only after the test's patience ran out.
NOTIFIED_POLL_INTERVAL = "600"


def cut_every_session(database: str) -> None:
    """pg_terminate_backend on every session of ``database``: the LISTEN ones too."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )


@pytest.mark.parametrize("scheduling", ["standalone worker", "gunicorn scheduler"])
def test_sessions_cut_again_and_again_leave_the_processes_as_after_the_first_cut(
    postgresql_clean: str, tmp_path: Path, scheduling: str
) -> None:
    """After each cut every process reconnects (one LISTEN session each, the pool
    within its size), holds what it held after the first cut, and a document
    uploaded then is picked up on its notification by the process that schedules."""
    database = database_name(postgresql_clean)
    standalone = scheduling == "standalone worker"
    env = {
        "DATABASE_URL": postgresql_clean,
        "DOCQUEUE_SECRET_KEY": "e2e",
        "DOCQUEUE_POLL_INTERVAL": NOTIFIED_POLL_INTERVAL,
        "DOCQUEUE_SCHEDULER_ENABLED": "false" if standalone else "true",
        "DOCQUEUE_CONCURRENCY": "1",
        "TMPDIR": str(tmp_path),
    }
    server = Server(env, workers=2, log_path=tmp_path / "server.log").start()
    worker = (
        start_worker(env, tmp_path / "worker.log", "--concurrency", "1") if standalone else None
    )
    try:
        wait_for(lambda: listeners(database) == 1, "the scheduling process to LISTEN")
        pids = [worker.pid] if worker else sorted(server.worker_pids())
        censuses = []
        for cut in range(CUTS):
            cut_every_session(database)
            wait_for(lambda: listeners(database) == 1, f"a LISTEN session again after cut {cut}")
            document = upload(server, f"after-cut-{cut}.txt")
            wait_for(
                lambda document=document: completed(server, document),
                f"the document of cut {cut}",
            )
            sessions = postgres_sessions(PG_ADMIN_URL, database)
            censuses.append({pid: Census.of(pid, sessions) for pid in pids})
        scheduler_pids = set(attempt_pids(postgresql_clean))
    finally:
        if worker is not None:
            stop_worker(worker)
        server.stop()

    print(f"\n{scheduling}: after the first cut {censuses[0]}\nafter the last {censuses[-1]}")
    # One process did all the work: the one that schedules.
    assert len(scheduler_pids) == 1 and scheduler_pids <= set(pids), (scheduler_pids, pids)
    first, last = censuses[0], censuses[-1]
    for pid in first:
        assert within_slack(first[pid], last[pid], descriptors=1, threads=1), (
            pid,
            first[pid],
            last[pid],
        )
        assert last[pid].sessions[(LISTENER, "idle")] <= 1, last[pid]
        assert last[pid].session_count() <= POOL_SIZE + 1, last[pid]
        assert not any("idle in transaction" in state for _, state in last[pid].sessions)


def listeners(database: str) -> int:
    sessions = postgres_sessions(PG_ADMIN_URL, database)
    return sum(name == LISTENER for _, name, _ in sessions)


def upload(server: Server, filename: str) -> int:
    """Upload as a client does: a 503 (a pooled connection that was cut) is sent again."""
    for _ in range(5):
        status, body = server.upload(filename, f"contents of {filename}".encode())
        if status != 503:
            break
    assert status == 202, body
    return body["id"]


def completed(server: Server, document: int) -> bool:
    status, body = server.get(f"/api/documents/{document}")
    return status == 200 and body["status"] == "completed"
