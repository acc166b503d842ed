"""A light start: commands and workers load a document parser only for a document that needs it.

Each check runs in a fresh interpreter (the test process has imported everything
already) that builds the app, runs a command and reports which of the heavy
modules it has loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from flask import Flask

from docqueue_app.queue import DocumentQueueService

# Document parsers (PDFium, lxml, selectolax, python-docx, charset-normalizer, Pillow),
# the OCR engine (tesserocr), Alembic, which only the `db` commands need, and
# APScheduler, which only a server runs.
HEAVY_MODULES = (
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

RUN_COMMAND = """
import json, sys
from docqueue_app import create_app

result = create_app().test_cli_runner().invoke(args=sys.argv[2:])
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"exit_code": result.exit_code, "output": result.stdout, "loaded": loaded}))
"""


def run_command(database_url: str, *args: str) -> dict[str, Any]:
    """Run a CLI command in a fresh interpreter: its exit code, output and heavy modules."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DOCQUEUE_SCHEDULER_ENABLED": "false",
        "DOCQUEUE_PROCESS_ISOLATION": "none",
    }
    completed = subprocess.run(
        [sys.executable, "-c", RUN_COMMAND, json.dumps(HEAVY_MODULES), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.splitlines()[-1])
    assert report["exit_code"] == 0, report["output"]
    return report


def submit(app: Flask, filename: str, content: bytes, content_type: str) -> None:
    with app.app_context():
        DocumentQueueService().submit_document(filename, content, content_type)


def test_queue_stats_loads_no_parser(app: Flask, database_url: str) -> None:
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
