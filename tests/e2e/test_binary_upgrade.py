"""End to end: gunicorn's binary upgrade, as the README's operations section gives it.

``kill -USR2 <master>`` starts a new master (gunicorn executes itself again) beside
the old one, on the same listening socket; once its workers serve, SIGTERM to the old
master stops the old generation as a plain stop does. While uploads go on and a
scraper reads /metrics throughout:

- every upload is answered 202 and counted: /metrics never goes down nor fails, in
  whichever generation answers it, and ends at the number of uploads;
- every document is processed once (one attempt, one processor run), none is lost;
- the metrics folder gunicorn.conf.py made is removed when the last master exits
  (one given by the operator is kept), and a plain restart counts from zero.

The master starts fresh, after a reload (SIGHUP: the settings are read again, with
the folder's variables set), or with a folder the operator gave.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from pathlib import Path

import pytest

from tests.e2e.processors import RECORD_ENV, WORK_ENV
from tests.e2e.server import ROOT, Server, child_pids, queue_items, wait_for
from tests.test_metric_files import Scraper, uploads_total

WORKERS = 2
UPLOADS_PER_STEP = 6  # uploads answered between two steps of the upgrade


class Uploader(threading.Thread):
    """Uploads small documents one after another, noting them on the scraper."""

    def __init__(self, server: Server, scraper: Scraper):
        super().__init__(daemon=True)
        self.server, self.scraper = server, scraper
        self.stopping = threading.Event()
        self.refused: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            n = self.scraper.sent
            self.scraper.sent += 1
            try:
                status, body = self.server.upload(f"upgrade-{n}.txt", f"document {n}".encode())
            except OSError as error:
                self.refused.append(f"upload {n}: {error!r}")
                continue
            if status != 202:
                self.refused.append(f"upload {n}: {status} {body}")
                continue
            self.scraper.answered += 1
            self.stopping.wait(0.03)

    def wait_for_more(self, what: str) -> None:
        target = self.scraper.answered + UPLOADS_PER_STEP
        wait_for(lambda: self.scraper.answered >= target or self.refused, what)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaps (an orphan's parent is init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def reload(server: Server) -> None:
    old_workers = server.worker_pids()
    os.kill(server.process.pid, signal.SIGHUP)
    wait_for(
        lambda: len(server.worker_pids()) == WORKERS and not server.worker_pids() & old_workers,
        "the reload to replace the workers",
    )
    server.wait_healthy()


def new_master_of(old_master: int, old_workers: set[int], log: Path) -> int:
    """The master SIGUSR2 started (the old master's child that has workers of its
    own), once its workers serve: each has started its scheduler, or stands by."""
    found: list[int] = []

    def started() -> bool:
        found[:] = [
            pid for pid in child_pids(old_master) - old_workers if len(child_pids(pid)) == WORKERS
        ]
        return bool(found)

    wait_for(started, "the new master and its workers")
    workers = child_pids(found[0])
    wait_for(
        lambda: all(f"[{pid}] [INFO] queue scheduler" in log.read_text() for pid in workers),
        "the new workers to serve",
    )
    return found[0]


@pytest.mark.parametrize("origin", ["fresh", "reloaded", "given folder"])
def test_binary_upgrade_counts_on_and_processes_every_document_once(server_env, origin, tmp_path):
    record = tmp_path / "processed.txt"
    record.touch()
    given = tmp_path / "metrics"
    with tempfile.TemporaryDirectory(prefix="dq-upgrade-", dir="/tmp") as tmpdir:
        env = {
            **server_env,
            "TMPDIR": tmpdir,  # short, as /tmp: the scheduler's host lock is a socket there
            "PYTHONPATH": str(ROOT),
            "DOCQUEUE_PROCESSOR": "tests.e2e.processors:recording_extract",
            RECORD_ENV: str(record),
            WORK_ENV: "0.05",
        }
        if origin == "given folder":
            env["PROMETHEUS_MULTIPROC_DIR"] = str(given)
        server = Server(env, workers=WORKERS, log_path=tmp_path / "server.log").start()
        old_master = server.process.pid
        new_master = final = None
        scraper = Scraper(server)
        uploader = Uploader(server, scraper)
        try:
            if origin == "reloaded":
                reload(server)
            scraper.start()
            uploader.start()
            uploader.wait_for_more("uploads before the upgrade")

            old_workers = server.worker_pids()
            os.kill(old_master, signal.SIGUSR2)
            new_master = new_master_of(old_master, old_workers, server.log_path)
            uploader.wait_for_more("uploads served by both generations")

            os.kill(old_master, signal.SIGTERM)
            assert server.process.wait(timeout=60) == 0
            uploader.wait_for_more("uploads served by the new generation alone")
            assert not gone(new_master)
            assert scraper.is_alive(), "a scrape failed: see the scraper's exception"
            uploader.stopping.set()
            uploader.join(timeout=60)
            wait_for(
                lambda: (
                    queue_items(server_env["DATABASE_URL"]).count(("completed", 1))
                    >= scraper.answered
                ),
                "every document to be processed",
            )
        finally:
            uploader.stopping.set()
            uploader.join(timeout=60)
            scraper.stopping.set()
            scraper.join(timeout=30)
            if new_master is None or gone(new_master):
                server.stop()
            else:
                final = server.get("/metrics")
                os.kill(new_master, signal.SIGTERM)
                wait_for(lambda: gone(new_master), "the new master to exit")
            server.stop()  # anything left of the process group

        assert not uploader.refused, uploader.refused[:5]
        assert not scraper.wrong, scraper.wrong[:5]
        uploads = scraper.answered
        assert final[0] == 200, final[1]
        assert uploads_total(final[1]) == uploads
        processed = record.read_text().splitlines()
        assert sorted(processed) == sorted(f"upgrade-{n}.txt" for n in range(uploads))
        assert queue_items(server_env["DATABASE_URL"]) == [("completed", 1)] * uploads
        if origin == "given folder":
            assert given.is_dir(), "the operator's metrics folder was removed"
            restarted = Server(env, workers=1).start()
            try:
                assert uploads_total(restarted.get("/metrics")[1]) == 0
            finally:
                restarted.stop()
        else:
            assert not list(Path(tmpdir).glob("docqueue-metrics-*")), "a metrics folder was left"


def test_an_upgrade_backed_out_leaves_the_old_master_counting_in_its_folder(server_env, tmp_path):
    """SIGTERM to the new master instead (the new code is bad): the old generation
    serves on, /metrics still counts every upload, and the folder goes with the old
    master, the last to exit."""
    with tempfile.TemporaryDirectory(prefix="dq-upgrade-", dir="/tmp") as tmpdir:
        env = {**server_env, "TMPDIR": tmpdir}
        server = Server(env, workers=WORKERS, log_path=tmp_path / "server.log").start()
        try:
            [folder] = Path(tmpdir).glob("docqueue-metrics-*")
            uploads = 0
            for n in range(3):
                assert server.upload(f"before-{n}.txt", f"before {n}".encode())[0] == 202
                uploads += 1
            old_master, old_workers = server.process.pid, server.worker_pids()
            os.kill(old_master, signal.SIGUSR2)
            new_master = new_master_of(old_master, old_workers, server.log_path)
            os.kill(new_master, signal.SIGTERM)
            wait_for(lambda: new_master not in child_pids(old_master), "the new master to exit")
            for n in range(3):
                assert server.upload(f"after-{n}.txt", f"after {n}".encode())[0] == 202
                uploads += 1
            status, body = server.get("/metrics")
            assert status == 200, body
            assert uploads_total(body) == uploads
            assert folder.is_dir()
        finally:
            server.stop()
        assert not folder.exists(), "the old master left its metrics folder"
