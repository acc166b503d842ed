"""A light start: commands and workers load nothing that serves HTTP, and a parser
only for a document that needs it; a worker stopped while it starts exits 0.

Each check runs the ``docqueue`` console script's entry point in a fresh
interpreter (the test process has imported everything already), which reports
the heavy modules it has loaded as it exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from flask import Flask

from docqueue_app.queue import DocumentQueueService
from tests.e2e.server import BIN, free_port
from tests.helpers import wait_until
from tests.test_config import unwritable

CHECKOUT = Path(__file__).resolve().parent.parent

# Document parsers (PDFium, lxml, selectolax, python-docx, charset-normalizer, Pillow),
# the OCR engine (tesserocr), Alembic, which only the `db` commands need, and
# APScheduler, which only a server runs.
PARSERS_AND_TOOLS = (
    "pypdfium2",
    "lxml",
    "selectolax",
    "docx",
    "charset_normalizer",
    "PIL",
    "tesserocr",
    "alembic",
    "apscheduler",
)
# What only serves requests: the API (flask-smorest, apispec, webargs), the forms'
# CSRF (flask-wtf), the pages, the admin console and the in-app scheduler.
HTTP_PARTS = (
    "flask_smorest",
    "apispec",
    "webargs",
    "flask_wtf",
    "docqueue_app.api",
    "docqueue_app.web",
    "docqueue_app.admin",
    "docqueue_app.queue.scheduler",
)
HEAVY_MODULES = PARSERS_AND_TOOLS + HTTP_PARTS

# `docqueue ARGS...`; its last line on stdout lists the heavy modules it loaded.
DOCQUEUE = """
import atexit, gc, json, sys

heavy = json.loads(sys.argv.pop(1))
# (atexit runs the last registered first: these print in the opposite order)
atexit.register(lambda: print(json.dumps({"collecting": gc.isenabled()})))
atexit.register(lambda: print(json.dumps(sorted(set(heavy) & set(sys.modules)))))
sys.argv[0] = "docqueue"
from docqueue_app.cli import main

main()
"""

# `docqueue queue worker` meeting SIGTERM while it builds its app (a deploy, a restart).
WORKER_STOPPED_WHILE_STARTING = """
import os, signal
from docqueue_app import create_app
from docqueue_app.cli import DocqueueGroup

def create_app_meeting_sigterm(**options):
    os.kill(os.getpid(), signal.SIGTERM)
    return create_app(**options)

DocqueueGroup(create_app=create_app_meeting_sigterm)(["queue", "worker"], prog_name="docqueue")
"""


def worker_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DOCQUEUE_SCHEDULER_ENABLED": "false",
        "DOCQUEUE_PROCESS_ISOLATION": "none",
    }


def start_docqueue(database_url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DOCQUEUE, json.dumps(HEAVY_MODULES), *args],
        env=worker_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> dict[str, Any]:
    """Wait for ``docqueue`` to exit 0; its output and the heavy modules it loaded."""
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    *output, loaded, garbage = stdout.splitlines()
    return {"output": "\n".join(output), "loaded": json.loads(loaded), **json.loads(garbage)}


def run_command(database_url: str, *args: str) -> dict[str, Any]:
    return finish(start_docqueue(database_url, *args))


def submit(app: Flask, filename: str, content: bytes, content_type: str) -> None:
    with app.app_context():
        DocumentQueueService().submit_document(filename, content, content_type)


def queue_stats(app: Flask) -> dict[str, Any]:
    with app.app_context():
        return DocumentQueueService().get_queue_stats()


def test_queue_stats_loads_neither_parsers_nor_the_web_app(app: Flask, database_url: str) -> None:
    submit(app, "a.txt", b"some words", "text/plain")
    report = run_command(database_url, "queue", "stats")
    assert json.loads(report["output"])["pending"] == 1
    assert report["loaded"] == []


def test_worker_loads_only_the_parsers_of_its_documents(app: Flask, database_url: str) -> None:
    submit(app, "notes.txt", "plain words, café".encode(), "text/plain")
    report = run_command(database_url, "queue", "process")
    assert json.loads(report["output"])["completed"] == 1
    assert report["loaded"] == []

    submit(app, "page.html", b"<html><title>T</title><p>a page</p></html>", "text/html")
    report = run_command(database_url, "queue", "process")
    assert json.loads(report["output"])["completed"] == 1
    assert "pypdfium2" not in report["loaded"]
    assert "docx" not in report["loaded"]
    assert not set(report["loaded"]) & set(HTTP_PARTS)


def test_standalone_worker_runs_without_the_web_app(app: Flask, database_url: str) -> None:
    submit(app, "notes.txt", b"a few plain words", "text/plain")
    worker = start_docqueue(database_url, "queue", "worker")
    try:
        wait_until(lambda: queue_stats(app)["completed"] == 1, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
    report = finish(worker)
    assert report["loaded"] == []
    # The collector, off while the worker starts, runs again once it works.
    assert report["collecting"] is True


def test_sigterm_while_the_worker_starts_exits_0_with_nothing_claimed(
    app: Flask, database_url: str
) -> None:
    submit(app, "notes.txt", b"a few plain words", "text/plain")
    worker = subprocess.run(
        [sys.executable, "-c", WORKER_STOPPED_WHILE_STARTING],
        env=worker_env(database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    stats = queue_stats(app)
    assert (stats["pending"], stats["in_progress"]) == (1, 0)


def run_gunicorn(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` on a free port, as `make run` starts it."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'docqueue.db'}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        **settings,
    }
    bind = f"127.0.0.1:{free_port()}"
    return subprocess.run(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind", bind, "wsgi:app"],
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_refused_before_any_worker(server: subprocess.CompletedProcess, refusal: str) -> None:
    assert server.returncode == 2, server.stderr
    assert f"Error: {refusal}" in server.stderr
    assert "Traceback" not in server.stderr
    assert "Booting worker" not in server.stderr


def test_gunicorn_refuses_a_bad_setting_in_one_line_before_starting_workers(tmp_path) -> None:
    server = run_gunicorn(tmp_path, DOCQUEUE_BATCH_SIZE="[1]")
    refusal = "DOCQUEUE_BATCH_SIZE must be a whole number >= 1 and <= 2147483647, got '[1]'"
    assert_refused_before_any_worker(server, refusal)


def test_gunicorn_refuses_a_sqlite_folder_it_cannot_write_before_starting_workers(
    tmp_path,
) -> None:
    # Every worker died of a PermissionError traceback (its wake socket), then HaltServer.
    with unwritable(tmp_path / "locked") as folder:
        server = run_gunicorn(tmp_path, DATABASE_URL=f"sqlite:///{folder}/docqueue.db")
    refusal = (
        f"DATABASE_URL names a SQLite database in {folder}, a folder that this user cannot write"
    )
    assert_refused_before_any_worker(server, refusal)


def test_gunicorn_refuses_a_metrics_folder_it_cannot_make_in_one_line(tmp_path) -> None:
    # gunicorn.conf.py's on_starting hook died with a PermissionError traceback.
    with unwritable(tmp_path / "locked") as folder:
        server = run_gunicorn(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(folder / "metrics"))
    refusal = f"PROMETHEUS_MULTIPROC_DIR names {folder / 'metrics'}, a folder that cannot be made"
    assert_refused_before_any_worker(server, refusal)


def test_gunicorn_refuses_to_start_without_workers(tmp_path) -> None:
    # WEB_CONCURRENCY=0 started a master that listened and booted no worker: every
    # request waited for ever.
    server = run_gunicorn(tmp_path, WEB_CONCURRENCY="0")
    assert_refused_before_any_worker(
        server, "gunicorn needs at least 1 worker (WEB_CONCURRENCY or --workers), got 0"
    )
