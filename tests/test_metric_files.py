"""gunicorn's metric files of dead workers are merged, not kept for ever.

prometheus-client's multiprocess mode keeps a counter file and a histogram file
(64 KiB each, allocated in full) of every worker that ever ran, and every scrape
reads them all: months of reloads made thousands of files, and slower and slower
scrapes. The master now merges a dead worker's files into one archive per kind;
no count may be lost, counted twice, or seen to go down (Prometheus would take
that for a reset), also by a scrape running while a merge does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import ROOT, Server, wait_for

RELOADS = 4
UPLOADS_PER_RELOAD = 2
WORKERS = 2


def uploads_total(body: str) -> float:
    match = re.search(r'^docqueue_uploads_total\{result="accepted"\} (\S+)$', body, re.MULTILINE)
    assert match, "docqueue_uploads_total is not in /metrics"
    return float(match.group(1))


def metric_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("*.db"))


class Scraper(threading.Thread):
    """Scrapes /metrics over and over, as Prometheus would, and checks each count
    against the uploads answered before the scrape and those sent before its answer."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server = server
        self.sent = self.answered = 0
        self.stopping = threading.Event()
        self.seen: list[float] = []
        self.wrong: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            answered = self.answered
            try:
                status, body = self.server.get("/metrics")
            except OSError:
                continue  # a connection cut while workers are replaced
            sent = self.sent
            if status != 200:
                self.wrong.append(f"/metrics answered {status}: {body[:300]}")
                continue
            total = uploads_total(body)
            if not answered <= total <= sent:
                self.wrong.append(f"{total} uploads counted, {answered} to {sent} made")
            if self.seen and total < self.seen[-1]:
                self.wrong.append(f"the count went down from {self.seen[-1]} to {total}")
            self.seen.append(total)
            time.sleep(0.02)


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A TMPDIR of the test's own, short as /tmp is (a socket's path fits 108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="dq-metric-files-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_reloads_keep_every_upload_counted_in_a_bounded_folder(
    database_url, tmp_path, short_tmpdir
):
    """Also: the metrics folder gunicorn.conf.py made in TMPDIR is removed when the
    master exits, after reloads too (a reload read the settings again, and they then
    took the folder for one given by the operator, and left it)."""
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    env = {
        "DATABASE_URL": database_url,
        "DOCQUEUE_SECRET_KEY": "metric-files",
        "TMPDIR": str(short_tmpdir),
    }
    server = Server(env, workers=WORKERS, log_path=tmp_path / "server.log").start()
    [folder] = short_tmpdir.glob("docqueue-metrics-*")
    scraper = Scraper(server)
    scraper.start()
    try:
        for reload in range(RELOADS):
            for n in range(UPLOADS_PER_RELOAD):
                scraper.sent += 1
                status, body = server.upload(f"r{reload}-{n}.txt", f"{reload} {n}".encode())
                assert status == 202, body
                scraper.answered += 1
            old_workers = server.worker_pids()
            os.kill(server.process.pid, signal.SIGHUP)  # a reload replaces every worker
            wait_for(
                lambda old=old_workers: (
                    len(server.worker_pids()) == WORKERS and not server.worker_pids() & old
                ),
                "the workers to be replaced",
            )
            server.wait_healthy()
        wait_for(lambda: len(scraper.seen) > RELOADS, "scrapes during the reloads")
    finally:
        scraper.stopping.set()
        scraper.join(timeout=30)
        files = metric_files(folder)
        final = server.get("/metrics")
        server.stop()

    assert not scraper.wrong, scraper.wrong[:5]
    assert final[0] == 200
    assert uploads_total(final[1]) == RELOADS * UPLOADS_PER_RELOAD
    # The live workers' files (two kinds each) and one archive per kind: nothing of
    # the 2 x RELOADS workers that exited stays behind.
    assert len(files) <= 2 * WORKERS + 2, files
    assert b"Metrics:" not in (tmp_path / "server.log").read_bytes()  # no merge failed
    assert not folder.exists(), "the master left its metrics folder in TMPDIR"


# Real processes counting through prometheus-client, and real concurrent scrapes:
# a "master" forks waves of workers that count and exit, and merges their files
# after each wave as gunicorn's child_exit does, while scrapers read the folder
# through the app's own collector as fast as they can.
WAVES = 30
WORKERS_PER_WAVE = 4
OBSERVED = (0.25, 0.5, 2.0)  # exact in binary: sums do not depend on the order


def run_master(folder: str) -> None:
    """Fork, count, reap, merge; /metrics' text must be the same before and after
    each merge. Runs in its own process, with PROMETHEUS_MULTIPROC_DIR set."""
    import logging

    from prometheus_client import generate_latest

    from docqueue_app import metrics
    from docqueue_app.metrics_files import merge_dead_processes

    for wave in range(WAVES):
        workers = []
        for n in range(WORKERS_PER_WAVE):
            pid = os.fork()
            if pid == 0:
                metrics.record_upload(duplicate=False)
                metrics.record_outcome(("completed", "retried", "failed")[n % 3])
                metrics.PROCESSING_SECONDS.observe(OBSERVED[(wave + n) % 3])
                os._exit(0)
            workers.append(pid)
        for pid in workers:
            os.waitpid(pid, 0)
        before = generate_latest(metrics._process_registry())
        merge_dead_processes(folder, logging.getLogger("master"))
        after = generate_latest(metrics._process_registry())
        assert sorted(before.splitlines()) == sorted(after.splitlines()), (before, after)
        print(" ".join(sorted(os.listdir(folder))), flush=True)


def run_scraper(stop: str) -> None:
    """Scrape until ``stop`` exists, then once more; each scrape's counts on a line."""
    from prometheus_client import generate_latest

    from docqueue_app import metrics

    while True:
        last = os.path.exists(stop)
        body = generate_latest(metrics._process_registry()).decode()
        count = re.search(r"^docqueue_processing_seconds_count (\S+)$", body, re.MULTILINE)
        print(uploads_total(body), float(count.group(1)), flush=True)
        if last:
            return


def start(function: str, argument: str, folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from tests.test_metric_files import {function}; {function}({argument!r})",
        ],
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_scrapes_during_merges_never_count_twice_nor_lose_a_count(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    stop = tmp_path / "stop"
    scrapers = [start("run_scraper", str(stop), folder) for _ in range(2)]
    time.sleep(0.5)  # the scrapers started
    master = start("run_master", str(folder), folder)
    master_out, master_err = master.communicate(timeout=120)
    stop.touch()
    results = [scraper.communicate(timeout=60) for scraper in scrapers]

    assert master.returncode == 0, master_err[-3000:]
    total = WAVES * WORKERS_PER_WAVE
    for scraper, (out, err) in zip(scrapers, results, strict=True):
        assert scraper.returncode == 0, err[-3000:]  # no scrape failed
        seen = [tuple(map(float, line.split())) for line in out.splitlines()]
        assert len(seen) > WAVES, "the scrapes did not overlap the merges"
        for counts in zip(*seen, strict=True):  # the uploads counter, the histogram's count
            assert list(counts) == sorted(counts), "a count went down: counted twice?"
            assert max(counts) <= total
        assert seen[-1] == (total, total)
    # After each merge: the archives, the lock, and the living processes' files only.
    for line in master_out.splitlines():
        names = line.split()
        assert len(names) <= 2 + 2 + 2 * 3, names
