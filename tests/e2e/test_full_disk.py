"""End to end: the disk fills up for real, and nothing is lost, stuck or processed twice.

Each disk is a tmpfs of a few megabytes that the test fills with a filler file
until the kernel answers ENOSPC, then frees by deleting that file, as an
operator would (``tests/e2e/full_disk.py``). Real gunicorn servers, real
``docqueue queue worker`` processes, real PostgreSQL clusters of the test's own:

- the database on a full disk (SQLite's file; PostgreSQL's database in a
  tablespace there, which answers SQLSTATE 53100 when a file cannot grow):
  uploads are JSON 503s of the "full" kind, nothing half-written, the server
  stays up, and once there is room everything lands and is processed once;
- a worker whose outcome cannot be written when the disk fills keeps it and
  writes it once there is room (README "When the database goes away");
- PostgreSQL whose WAL cannot be written PANICs and goes down: an outage like
  any other, and nothing lost or repeated once it is started again;
- the temporary folder (TMPDIR) full: a large upload, which werkzeug spools to
  a temporary file, is a JSON 503; a worker's processing still ends.
"""

from __future__ import annotations

import base64
import os
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from docqueue_app.database import RETRY_AFTER_SECONDS
from tests.e2e.full_disk import SizeCappedFolder, capped_folder, row_counts
from tests.e2e.pg_cluster import OS_USER, PostgresCluster, owned_cluster
from tests.e2e.processors import HOLD_ENV, RECORD_ENV
from tests.e2e.server import (
    Reply,
    Server,
    document_statuses,
    migrated_env,
    queue_items,
    start_worker,
    stop_worker,
    wait_for,
)

__all__ = ["capped_folder"]  # a fixture

DATABASE_DISK_BYTES = 32 * 1024 * 1024
# Larger than any slack a database keeps in its files (SQLite's WAL is reused
# from its start after a checkpoint; PostgreSQL's pages keep free space).
BIG_BYTES = 2 * 1024 * 1024
# Room for pg_wal of a fresh cluster with 1 MB segments (CREATE DATABASE and the
# migrations write some 10 MB of it).
WAL_DISK_BYTES = 48 * 1024 * 1024
TMP_DISK_BYTES = 8 * 1024 * 1024


def big_text(seed: int) -> bytes:
    """BIG_BYTES of plain text that compresses poorly (base64 of random bytes)."""
    return base64.encodebytes(os.urandom(BIG_BYTES * 3 // 4)) + f"seed {seed}\n".encode()


def assert_json_503(reply: Reply, kind: str) -> None:
    """SPEC §4's error shape, with Retry-After, of the given kind."""
    assert reply.status == 503, (reply.status, reply.body)
    assert reply.headers.get("Retry-After") == str(RETRY_AFTER_SECONDS)
    assert isinstance(reply.body, dict), reply.body
    assert (reply.body["code"], reply.body["status"]) == (503, "Service Unavailable")
    assert kind in reply.body["message"], reply.body


def runs_recorded(record: Path) -> Counter:
    return Counter(record.read_text().split())


def all_completed(server: Server, count: int) -> Callable[[], bool]:
    return lambda: document_statuses(server) == ["completed"] * count


@dataclass
class DatabaseOnSmallDisk:
    url: str
    disk: SizeCappedFolder
    env: dict[str, str]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_on_small_disk(
    request: pytest.FixtureRequest,
    capped_folder: Callable[[int], SizeCappedFolder],
    tmp_path: Path,
) -> DatabaseOnSmallDisk:
    """A migrated database whose data lives on a small disk of its own.

    SQLite: the file (and its WAL) there. PostgreSQL: a cluster of the test's own
    (its WAL on the ordinary disk) whose database ``docqueue`` is moved to a
    tablespace there, so a table that cannot grow raises 53100 (disk_full).
    """
    disk = capped_folder(DATABASE_DISK_BYTES)  # mounted first, so unmounted last
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        url = cluster.url
        move_into_tablespace(cluster, disk.subfolder("tablespace", owner=OS_USER))
    else:
        url = f"sqlite:///{disk.path / 'docqueue.db'}"
    (tmp_path / "processed.log").touch()
    env = migrated_env(url, {RECORD_ENV: str(tmp_path / "processed.log")})
    return DatabaseOnSmallDisk(url, disk, env)


def move_into_tablespace(cluster: PostgresCluster, location: Path) -> None:
    with psycopg.connect(cluster.admin_url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE small_disk LOCATION '{location}'")
        conn.execute("ALTER DATABASE docqueue SET TABLESPACE small_disk")


# -- the database's disk fills -------------------------------------------------------


def test_uploads_to_a_full_disk_are_503_full_and_land_once_there_is_room(
    database_on_small_disk: DatabaseOnSmallDisk, tmp_path: Path
) -> None:
    database, record = database_on_small_disk, Path(database_on_small_disk.env[RECORD_ENV])
    env = {**database.env, "DOCQUEUE_PROCESSOR": "tests.e2e.processors:recording_extract"}
    server = Server(env, workers=2, log_path=tmp_path / "server.log").start()
    try:
        master, workers = server.process.pid, server.worker_pids()
        assert server.upload("before.txt", b"uploaded before the disk filled")[0] == 202
        wait_for(all_completed(server, 1), "the first document to be processed")
        database.disk.fill()
        before = row_counts(database.url)

        refused = {f"big-{n}.txt": big_text(n) for n in range(3)}
        for filename, data in refused.items():
            assert_json_503(server.upload_reply(filename, data), "full")
        assert row_counts(database.url) == before, "a refused upload left rows behind"
        # The database answers and reads are served: a full disk is no health failure.
        assert server.get("/healthz") == (200, {"status": "ok", "database": "ok"})
        assert document_statuses(server) == ["completed"]

        database.disk.free()
        for filename, data in refused.items():
            assert server.upload(filename, data)[0] == 202
        wait_for(all_completed(server, 4), "every document to be processed")
        assert runs_recorded(record) == Counter(["before.txt", *refused])
        assert server.process.poll() is None and server.process.pid == master
        assert server.worker_pids() == workers, "a gunicorn worker was replaced"
    finally:
        server.stop()


def test_an_outcome_the_full_disk_refused_is_written_once_there_is_room(
    database_on_small_disk: DatabaseOnSmallDisk, tmp_path: Path
) -> None:
    """The README: a document in hand when the database cannot take writes is
    finished, its outcome kept and written once it can (within the lease); nothing
    processed twice, nothing left ``processing``."""
    database, record = database_on_small_disk, Path(database_on_small_disk.env[RECORD_ENV])
    hold = tmp_path / "hold"
    hold.mkdir()
    env = {
        **database.env,
        "DOCQUEUE_PROCESSOR": "tests.e2e.full_disk:held_and_recorded",
        HOLD_ENV: str(hold),
        "DOCQUEUE_SCHEDULER_ENABLED": "false",  # the standalone worker alone processes
    }
    server = Server(env, workers=1, log_path=tmp_path / "server.log").start()
    worker_log = tmp_path / "worker.log"
    worker = None
    try:
        # Each result is the whole text, so no outcome fits once the disk is full.
        documents = {f"doc-{n}.txt": big_text(n) for n in range(3)}
        for filename, data in documents.items():
            assert server.upload(filename, data)[0] == 202
        worker = start_worker(env, worker_log, "--concurrency", "1")
        wait_for(lambda: (hold / "started-doc-0.txt").exists(), "the first document to start")
        assert document_statuses(server) == ["processing"] * 3  # one claim took them all

        database.disk.fill()
        (hold / "release").touch()
        wait_for(lambda: len(list(hold.glob("started-*"))) == 3, "every document to be run")
        wait_for(
            lambda: "database outage: the database is full" in worker_log.read_text(),
            "the worker to meet the full disk",
        )
        assert document_statuses(server) == ["processing"] * 3  # kept, not lost, not failed

        database.disk.free()
        wait_for(all_completed(server, 3), "the kept outcomes to be written")
        assert runs_recorded(record) == Counter(list(documents))  # each processed once
        assert queue_items(database.url) == [("completed", 1)] * 3
        assert worker.poll() is None, "the worker exited"
    finally:
        (hold / "release").touch()  # never leave a processor waiting
        if worker is not None:
            stop_worker(worker)
        server.stop()


# -- PostgreSQL's WAL cannot be written ----------------------------------------------


def test_postgresql_that_cannot_write_its_wal_goes_down_and_loses_nothing(
    capped_folder: Callable[[int], SizeCappedFolder], tmp_path: Path
) -> None:
    """PostgreSQL PANICs when it cannot write WAL, and the cluster goes down: an
    outage like a crash. Uploads meanwhile are JSON 503s; once there is room and
    the cluster is started, every upload a client sends again lands, and each
    document is processed once (SPEC §3: the lease, 300 s, holds throughout)."""
    wal_disk = capped_folder(WAL_DISK_BYTES)  # mounted first, so unmounted last
    waldir = wal_disk.subfolder("pg_wal", owner=OS_USER)
    with owned_cluster(["--waldir", str(waldir), "--wal-segsize", "1"]) as cluster:
        record = tmp_path / "processed.log"
        record.touch()
        env = migrated_env(
            cluster.url,
            {
                "DOCQUEUE_PROCESSOR": "tests.e2e.processors:recording_extract",
                RECORD_ENV: str(record),
            },
        )
        server = Server(env, workers=1, log_path=tmp_path / "server.log").start()
        worker = start_worker(env, tmp_path / "worker.log", "--concurrency", "1")
        try:
            assert server.upload("before.txt", b"uploaded before the WAL filled")[0] == 202
            wait_for(all_completed(server, 1), "the first document to be processed")
            wal_disk.fill()

            sent = {f"big-{n}.txt": big_text(n) for n in range(3)}
            replies = {name: server.upload_reply(name, data) for name, data in sent.items()}
            wait_for(lambda: "PANIC" in cluster.log_tail(500), "PostgreSQL to PANIC")
            # Its crash recovery cannot write WAL either: the cluster shuts down.
            wait_for(lambda: not cluster.running(), "PostgreSQL to shut down")
            refused = [name for name, reply in replies.items() if reply.status != 202]
            assert refused, "every upload was accepted with no room for the WAL"
            for name in refused:
                assert_json_503(replies[name], "")
            assert_json_503(server.upload_reply("late.txt", b"sent while down"), "unreachable")
            assert server.get("/healthz") == (503, {"status": "error", "database": "unreachable"})

            wal_disk.free()
            cluster.start()
            wait_for(lambda: healthy(server), "the server to see PostgreSQL again")
            sent["late.txt"] = b"sent while down"
            for name in [*refused, "late.txt"]:  # what a client does with a 503: send it again
                assert server.upload(name, sent[name])[0] in (200, 202)
            wait_for(all_completed(server, 5), "every document to be processed")
            assert runs_recorded(record) == Counter(["before.txt", *sent])
            assert worker.poll() is None, "the standalone worker exited"
        finally:
            stop_worker(worker)
            server.stop()


def healthy(server: Server) -> bool:
    return server.get("/healthz")[0] == 200


# -- the temporary folder fills ------------------------------------------------------


def test_a_large_upload_while_the_temporary_folder_is_full_is_a_json_503(
    capped_folder: Callable[[int], SizeCappedFolder], tmp_path: Path
) -> None:
    """Werkzeug writes a multipart body over 500 KB to a temporary file (TMPDIR)."""
    temporary = capped_folder(TMP_DISK_BYTES)
    env = migrated_env(f"sqlite:///{tmp_path / 'docqueue.db'}", {"TMPDIR": str(temporary.path)})
    server = Server(env, workers=1, log_path=tmp_path / "server.log").start()
    try:
        master, workers = server.process.pid, server.worker_pids()
        temporary.fill()
        before = row_counts(env["DATABASE_URL"])

        assert_json_503(server.upload_reply("large.txt", big_text(0)), "temporary")
        assert row_counts(env["DATABASE_URL"]) == before
        assert server.upload("small.txt", b"a small upload is read in memory")[0] == 202
        assert server.get("/healthz")[0] == 200

        temporary.free()
        assert server.upload("large.txt", big_text(0))[0] == 202
        wait_for(all_completed(server, 2), "both documents to be processed")
        assert server.process.pid == master and server.worker_pids() == workers
    finally:
        server.stop()


def test_a_worker_whose_temporary_folder_is_full_still_processes(
    capped_folder: Callable[[int], SizeCappedFolder], tmp_path: Path
) -> None:
    """Processing needs no room in TMPDIR: the fork server's socket is in Linux's
    abstract namespace, PDFium and Tesseract (OCR) work in memory. So both documents
    complete with TMPDIR full, neither failed nor left stuck; this guard keeps it so."""
    from tests.processing.scanned_pages import render_page, scanned_pdf

    temporary = capped_folder(TMP_DISK_BYTES)
    env = migrated_env(
        f"sqlite:///{tmp_path / 'docqueue.db'}", {"DOCQUEUE_SCHEDULER_ENABLED": "false"}
    )
    server = Server(env, workers=1).start()
    worker = None
    try:
        page = render_page("The ferry runs every hour.", dpi=150, width_inches=4, margin_inches=0.3)
        status, scan = server.upload("scan.pdf", scanned_pdf([page], dpi=150))
        assert status == 202, scan
        scan_id = scan["id"]
        assert server.upload("note.txt", b"plain words")[0] == 202
        temporary.fill()
        worker = start_worker({**env, "TMPDIR": str(temporary.path)}, tmp_path / "worker.log")
        wait_for(all_completed(server, 2), "both documents to be processed")
        assert server.get(f"/api/documents/{scan_id}")[1]["metadata"]["ocr_pages"] == 1
        assert "ferry" in server.get(f"/api/documents/{scan_id}/text")[1]
    finally:
        if worker is not None:
            stop_worker(worker)
        server.stop()


def test_workers_started_while_the_metrics_folder_is_full_serve(
    capped_folder: Callable[[int], SizeCappedFolder], tmp_path: Path
) -> None:
    """prometheus-client maps each worker's counter files into memory as sparse files:
    on a full disk the first write through the mapping killed a new worker with
    SIGBUS, and gunicorn's next one likewise, so the server answered nothing until
    there was room. Workers started then serve and say why their counts are missing."""
    temporary = capped_folder(TMP_DISK_BYTES)
    env = migrated_env(
        f"sqlite:///{tmp_path / 'docqueue.db'}",
        {"PROMETHEUS_MULTIPROC_DIR": str(temporary.subfolder("metrics"))},
    )
    log = tmp_path / "server.log"
    server = Server(env, workers=2, log_path=log).start()
    try:
        assert server.upload("before.txt", b"counted before the disk filled")[0] == 202
        temporary.fill()
        started_with_room = server.worker_pids()
        for pid in started_with_room:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(server.worker_pids() - started_with_room) == 2, "two new workers")
        new_workers = server.worker_pids()

        assert all(server.get("/healthz")[0] == 200 for _ in range(4))
        assert server.upload("after.txt", b"uploaded on a full metrics disk")[0] == 202
        assert server.worker_pids() == new_workers
        assert log.read_text().count("no room for this worker's metrics") == 2

        temporary.free()
        assert server.get("/metrics")[0] == 200
    finally:
        server.stop()
