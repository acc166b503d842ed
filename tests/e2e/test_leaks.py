"""End to end: nothing a long-running docqueue holds grows with time, work or faults.

docqueue runs for months: gunicorn workers (one runs the queue scheduler),
standalone workers, their sandboxes, LISTEN connections, webhook lanes. Each test
repeats real work or a real fault a few times and takes a ``Census`` of the
processes (descriptors, threads, child processes, PostgreSQL sessions) after each
round: what grows with the rounds would grow without bound. ``make stress`` runs
the document rounds with DOCQUEUE_LEAK_DOCUMENTS documents each (2,000) instead of
LEAK_DOCUMENTS; DOCQUEUE_LEAK_ROUNDS runs more rounds than ROUNDS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL
from tests.e2e.process_resources import (
    Census,
    alive,
    descendants,
    postgres_sessions,
    tcp_client_ports,
)
from tests.e2e.processors import HOLD_ENV
from tests.e2e.server import (
    Server,
    migrated_env,
    run_cli,
    start_worker,
    stop_worker,
    wait_for,
)
from tests.e2e.test_one_scheduler_per_host import attempt_pids
from tests.helpers import drop_connections_to

LISTENER = "docqueue-listener"
# A pooled connection's worth of PostgreSQL sessions beyond the pool: SQLAlchemy's
# QueuePool keeps up to 5 (the listener comes on top).
POOL_SIZE = 5
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432


@pytest.fixture
def private_tmpdir() -> Iterator[Path]:
    """A TMPDIR of the test's own, so what the processes leave there can be seen.

    Short, as /tmp is: a socket's path must fit in 108 bytes, and docqueue puts its
    SQLite wake sockets there when the database's own folder is too deep for them.
    """
    folder = Path(tempfile.mkdtemp(prefix="dq-leaks-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def within_slack(
    first: Census, last: Census, descriptors: int, threads: int, children: int = 0
) -> bool:
    """Whether ``last`` holds at most the given numbers of descriptors, threads and
    child processes more than ``first`` (its sockets to PostgreSQL left out: the
    pool's own business, checked on their own), and no zombie."""
    return (
        last.descriptors - last.database_sockets
        <= first.descriptors - first.database_sockets + descriptors
        and last.threads <= first.threads + threads
        and last.children <= first.children + children
        and last.zombies == 0
    )


# -- PostgreSQL sessions cut, again and again -------------------------------------

CUTS = 3
# Long: a document picked up after a cut was claimed on a notification (LISTEN),
# never by the poll, which would come only after the test's patience ran out.
NOTIFIED_POLL_INTERVAL = "600"


@pytest.mark.parametrize("scheduling", ["standalone worker", "gunicorn scheduler"])
def test_sessions_cut_again_and_again_leave_the_processes_as_after_the_first_cut(
    postgresql_clean: str, tmp_path: Path, private_tmpdir: Path, scheduling: str
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
        "TMPDIR": str(private_tmpdir),
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
            drop_connections_to(postgresql_clean, PG_ADMIN_URL)
            if cut == CUTS - 1:
                # Before the LISTEN is back, its notification lost: the look after
                # the reconnect finds it (or, if that pass failed, the next pass).
                unnotified = upload(server, "before-the-listen.txt")
            wait_for(lambda: listeners(database) == 1, f"a LISTEN session again after cut {cut}")
            document = upload(server, f"after-cut-{cut}.txt")
            wait_for(
                lambda document=document: completed(server, document),
                f"the document of cut {cut}",
            )
            if cut == CUTS - 1:
                wait_for(
                    lambda unnotified=unnotified: completed(server, unnotified),
                    "the document sent before the LISTEN",
                )
            sessions = postgres_sessions(PG_ADMIN_URL, database)
            censuses.append({pid: Census.of(pid, sessions, PG_PORT) for pid in pids})
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
        assert last[pid].database_sockets <= POOL_SIZE + 1, last[pid]
        assert not any("idle in transaction" in state for _, state in last[pid].sessions)


def listeners(database: str) -> int:
    """The sessions of ``database`` that LISTEN already (the session shows as soon as
    it connects, before its LISTEN: a notification sent then would be lost)."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = %s AND query LIKE 'LISTEN %%'",
            (database, LISTENER),
        ).fetchone()[0]


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


# -- many documents, many webhook deliveries ---------------------------------------

ROUNDS = 3
LEAK_DOCUMENTS = 120
CONCURRENCY = 2  # the worker's threads, each with a sandbox while it has documents
# What one sandbox costs the worker while it lives (read in /proc/PID/fd): its pidfd,
# the /proc/PID/status its address space is sampled from, the worker's end of their
# socket pair, the sandbox's stderr pipe, multiprocessing's two pipes to the child.
# A sandbox is retired after its 200th document and the next starts with its
# thread's next document, so a round ends with 0, 1 or 2 up (on PostgreSQL 12, 18
# or 24 descriptors and 2, 3 or 4 child processes), whatever leaks or does not.
SANDBOX_DESCRIPTORS = 6
# Each document's text (and so its result) is this large, so that a round writes
# several times SQLite's automatic checkpoint (1,000 pages of 4 KiB) to the WAL.
DOCUMENT_BYTES = 24 * 1024
# The receiver fails one delivery in this many (HTTP 500): some are sent again,
# this soon (the default's 10 s and more would wait in every round).
FAILED_DELIVERY_ONE_IN = 7
RETRY_SECONDS = {"DOCQUEUE_RETRY_BASE_SECONDS": "0.2", "DOCQUEUE_RETRY_MAX_SECONDS": "1"}


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that counts deliveries and fails some."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.received = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, name="receiver", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/hook"


class _Answer(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.received += 1
            failed = self.server.received % FAILED_DELIVERY_ONE_IN == 0
        self.send_response(500 if failed else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.shutdown()
    server.server_close()


def test_rounds_of_documents_and_webhooks_leave_the_worker_as_after_the_first(
    server_env: dict[str, str], tmp_path: Path, private_tmpdir: Path, receiver: Receiver
) -> None:
    """Each round imports documents (sandboxes replaced every 200, a webhook each,
    some sent twice); after every round, at rest (documents done, deliveries
    settled), the worker holds what it held after the first, less its sandboxes
    (0 to one a thread, each with its few descriptors) and its database
    connections (the pool's, bounded), its sandboxes' files are gone, and SQLite's
    WAL was checkpointed."""
    documents = int(os.environ.get("DOCQUEUE_LEAK_DOCUMENTS", LEAK_DOCUMENTS))
    rounds = int(os.environ.get("DOCQUEUE_LEAK_ROUNDS", ROUNDS))
    env = {
        **server_env,
        "TMPDIR": str(private_tmpdir),
        "DOCQUEUE_WEBHOOK_URL": receiver.url,
        "DOCQUEUE_WEBHOOK_ALLOW_PRIVATE": "true",
        "DOCQUEUE_WEBHOOK_TIMEOUT_SECONDS": "5",
        **RETRY_SECONDS,
    }
    url = server_env["DATABASE_URL"]
    # SQLite's database; PurePath("") (no name) on PostgreSQL.
    database = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else Path()
    wal = Path(f"{database}-wal") if database.name else Path()
    worker = start_worker(env, tmp_path / "worker.log", "--concurrency", str(CONCURRENCY))
    censuses, wal_sizes = [], []
    try:
        for round_ in range(rounds):
            folder = tmp_path / f"round-{round_}"
            folder.mkdir()
            filler = "x" * DOCUMENT_BYTES
            for n in range(documents):
                (folder / f"{round_}-{n}.txt").write_text(f"round {round_} document {n}\n{filler}")
            imported = run_cli(env, "import", str(folder))
            assert imported.returncode == 0, imported.stderr
            wait_for(lambda: drained(env), f"round {round_} to be processed", 300)
            # Each document's delivery sent once at least (some again, after a 500).
            sent = (round_ + 1) * documents
            wait_for(lambda sent=sent: receiver.received >= sent, f"round {round_}'s webhooks", 300)
            # At rest: no delivery waiting for its retry, none in flight (its socket).
            wait_for(lambda: deliveries_owed(url) == 0, f"round {round_}'s retries", 120)
            sessions = None if wal.name else postgres_sessions(PG_ADMIN_URL, database_name(url))
            censuses.append(Census.of(worker.pid, sessions, PG_PORT))
            wal_sizes.append(wal.stat().st_size if wal.name and wal.exists() else 0)
    finally:
        exit_code = stop_worker(worker)

    held = [beyond_pool_and_sandboxes(census, database) for census in censuses]
    print(f"\n{documents} documents a round, the census after each:")
    for round_, census in enumerate(censuses):
        print(f"  {round_}: {held[round_]} {census}")
    print(f"WAL after each round {wal_sizes}, {receiver.received} deliveries received")
    # No slack: what the pool and the sandboxes hold is counted apart, so a leak of
    # one descriptor, thread or process in any round fails.
    assert held == [held[0]] * len(held), held
    for census in censuses:
        assert census.grandchildren <= CONCURRENCY and census.zombies == 0, census
        # Each pooled connection holds a socket to PostgreSQL, or opens SQLite's file.
        assert census.database_sockets <= POOL_SIZE + 1, census
        assert all(census.kinds[file] <= POOL_SIZE + 1 for file in sqlite_files(database)), census
    assert exit_code == 0
    assert left_in(private_tmpdir) == [], "the worker left temporary files"
    if wal.name:
        # Without checkpoints the WAL would hold everything the rounds wrote.
        written = rounds * documents * DOCUMENT_BYTES * 2  # each document and its text
        assert wal_sizes[-1] < written / 2, wal_sizes


def beyond_pool_and_sandboxes(census: Census, database: Path) -> tuple[int, int, int]:
    """The worker's descriptors, threads and child processes less its sandboxes' and
    its database connections' (PostgreSQL's sockets; on SQLite, each pooled
    connection's descriptors of the ``database`` and its WAL, and the shared memory
    index they share)."""
    return (
        census.descriptors
        - census.database_sockets
        - sum(census.kinds[file] for file in sqlite_files(database))
        - SANDBOX_DESCRIPTORS * census.grandchildren,
        census.threads,
        census.children - census.grandchildren,
    )


def sqlite_files(database: Path) -> list[str]:
    """SQLite's ``database``, its WAL and its shared memory index; none on PostgreSQL."""
    return [f"{database}{suffix}" for suffix in ("", "-wal", "-shm")] if database.name else []


def deliveries_owed(url: str) -> int:
    """The webhook deliveries not yet delivered nor given up (SPEC §8), read in the database."""
    query = "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return conn.execute(query).fetchone()[0]
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchone()[0]


def left_in(tmpdir: Path) -> list[str]:
    """What is left in ``tmpdir``: every file, less the folder of SQLite's wake
    sockets (one per database; each process removes its own socket)."""
    return sorted(
        str(path.relative_to(tmpdir))
        for path in tmpdir.rglob("*")
        if not (path.is_dir() and path.name.endswith(".wake"))
    )


def stats(env: dict[str, str]) -> dict:
    return json.loads(run_cli(env, "queue", "stats").stdout)


def drained(env: dict[str, str]) -> bool:
    counts = stats(env)
    return counts["pending"] == counts["in_progress"] == 0


# -- processes that die ------------------------------------------------------------


def test_a_killed_worker_leaves_no_process_no_session_and_no_temporary_file(
    server_env: dict[str, str], tmp_path: Path, private_tmpdir: Path
) -> None:
    """SIGKILL a worker with documents in hand: its sandboxes, fork server and
    resource tracker end, its PostgreSQL sessions end (none left in a transaction),
    and once the worker that replaces it has run a document and stopped, nothing of
    either is left in TMPDIR (the killed one could not remove its fork server's
    socket folder itself)."""
    hold = tmp_path / "hold"
    hold.mkdir()
    env = {
        **server_env,
        "TMPDIR": str(private_tmpdir),
        HOLD_ENV: str(hold),
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:held_until_released",
        "DOCQUEUE_BATCH_SIZE": "1",  # a document for each of the two threads
    }
    url = env["DATABASE_URL"]
    postgresql = url.startswith("postgresql")
    import_documents(env, tmp_path / "first", 2)
    killed = start_worker(env, tmp_path / "killed.log", "--concurrency", "2")
    try:
        wait_for(lambda: len(list(hold.glob("started-*"))) == 2, "both documents in hand")
        below = descendants(killed.pid)
        ports = tcp_client_ports(killed.pid) if postgresql else set()
    finally:
        killed.kill()
        killed.wait()
    assert len(below) >= 3, below  # a sandbox per document, the fork server
    wait_for(lambda: not any(alive(child.pid) for child in below), "its children to end")
    if postgresql:
        database = database_name(url)
        wait_for(
            lambda: not {port for port, _, _ in postgres_sessions(PG_ADMIN_URL, database)} & ports,
            "its sessions to end",
        )

    (hold / "release").touch()
    import_documents(env, tmp_path / "second", 1)
    successor = start_worker(env, tmp_path / "successor.log")
    try:
        wait_for(lambda: stats(env)["completed"] == 1, "the successor to process a document")
        if postgresql:
            states = [state for _, _, state in postgres_sessions(PG_ADMIN_URL, database)]
            assert not [state for state in states if "transaction" in state], states
    finally:
        assert stop_worker(successor) == 0
    assert left_in(private_tmpdir) == []


def import_documents(env: dict[str, str], folder: Path, count: int) -> None:
    folder.mkdir()
    for n in range(count):
        (folder / f"{folder.name}-{n}.txt").write_text(f"document {n} of {folder.name}")
    imported = run_cli(env, "import", str(folder))
    assert imported.returncode == 0, imported.stderr


def test_a_server_whose_scheduling_worker_was_killed_leaves_no_temporary_file(
    tmp_path: Path, private_tmpdir: Path
) -> None:
    """gunicorn on SQLite: the worker that runs the scheduler is SIGKILLed, another
    takes over and processes a document; once the server stopped, its TMPDIR holds
    nothing: not the metrics folder gunicorn.conf.py made there, not the killed
    worker's fork server socket folder."""
    database = f"sqlite:///{tmp_path / 'docqueue.db'}"
    env = {**migrated_env(database), "TMPDIR": str(private_tmpdir)}
    log = tmp_path / "server.log"
    server = Server(env, workers=2, log_path=log).start()
    try:
        first = upload(server, "first.txt")
        wait_for(lambda: completed(server, first), "the first document")
        [scheduling] = attempt_pids(database)
        below = descendants(scheduling)
        os.kill(scheduling, signal.SIGKILL)
        wait_for(lambda: len(server.worker_pids() - {scheduling}) == 2, "a new gunicorn worker")
        second = upload(server, "second.txt")
        wait_for(lambda: completed(server, second), "the second document")
        wait_for(lambda: not any(alive(child.pid) for child in below), "its children to end")
    finally:
        server.stop()
    assert left_in(private_tmpdir) == []
