"""A real docqueue server (gunicorn) in a subprocess, and a tiny HTTP client for it.

Also a standalone worker (``docqueue queue worker``) in a subprocess, and the
helpers the end-to-end tests share: waiting, reading the queue straight from
the database, and finding a gunicorn master's worker processes.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Servers started and not stopped yet: one left running by a failed test would go
# on processing the rows of every later test on the same database.
_RUNNING: set[Server] = set()


class Reply(NamedTuple):
    status: int
    headers: Any  # an email.message.Message: case-insensitive ``.get()``
    body: Any


def admin_headers(password: str) -> dict[str, str]:
    """HTTP Basic as ``admin``, for the queue management API."""
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn serving ``app`` (wsgi:app) with gunicorn.conf.py and the given environment;
    killable like a real crash."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 2,
        log_path: Path | None = None,
        app: str = "wsgi:app",
    ):
        self.port = free_port()
        self.app = app
        self.env = {**os.environ, **env}
        self.workers = workers
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.workers),
                self.app,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group, so a kill takes every worker
        )
        _RUNNING.add(self)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "server exited"
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL the whole server: no shutdown hooks, no cleanup."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        _RUNNING.discard(self)

    def stop(self) -> None:
        _RUNNING.discard(self)
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def worker_pids(self) -> set[int]:
        """The gunicorn worker processes: the master's children."""
        assert self.process is not None
        return child_pids(self.process.pid)

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
        timeout: float = 30,
    ) -> Reply:
        """One request; its status, headers and (JSON-decoded) body. Errors of the
        connection itself (refused, reset, timed out) are raised as OSError."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return Reply(
                    response.status, response.headers, _decode(response.read(), response.headers)
                )
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.headers, _decode(error.read(), error.headers))

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, Any]:
        reply = self.send(method, path, body, headers)
        return reply.status, reply.body

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def upload(self, filename: str, data: bytes) -> tuple[int, Any]:
        reply = self.upload_reply(filename, data)
        return reply.status, reply.body

    def upload_reply(self, filename: str, data: bytes, timeout: float = 30) -> Reply:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self.send(
            "POST",
            "/api/documents",
            body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout,
        )


def _decode(raw: bytes, headers: Any) -> Any:
    if "json" in (headers.get("Content-Type") or ""):
        return json.loads(raw)
    return raw.decode("utf-8", "replace")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run the `docqueue` console script as a user would."""
    return subprocess.run(
        [str(BIN / "docqueue"), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def migrated_env(database_url: str, settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server and its workers (isolated processing, quick polls)
    on ``database_url``, which ``docqueue db upgrade`` has migrated."""
    env = {
        "DATABASE_URL": database_url,
        "DOCQUEUE_SECRET_KEY": "e2e",
        "DOCQUEUE_POLL_INTERVAL": "0.2",
        "DOCQUEUE_PROCESS_ISOLATION": "subprocess",
        **(settings or {}),
    }
    migrated = run_cli(env, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    return env


def start_worker(env: dict[str, str], log_path: Path, *options: str) -> subprocess.Popen:
    """A standalone worker (``docqueue queue worker``) as an operator would start one.

    The checkout is on its PYTHONPATH, so DOCQUEUE_PROCESSOR can name test processors.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [str(BIN / "docqueue"), "queue", "worker", *options],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def stop_worker(worker: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, as systemd would; its exit code (SIGKILL after ``timeout``, then -9)."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
    return worker.wait(timeout=10)


def child_pids(parent: int) -> set[int]:
    """The processes whose parent is ``parent``, from /proc."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == parent:
            children.add(int(stat.parent.name))
    return children


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def document_statuses(server: Server) -> list[str]:
    status, body = server.get("/api/documents?per_page=100")
    assert status == 200, body
    return [document["status"] for document in body["items"]]


def queue_items(database_url: str) -> list[tuple[str, int]]:
    """(status, attempts) of every queue item, read straight from the database."""
    from docqueue_app import create_app
    from docqueue_app.models import QueueItem, db

    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "t", "SCHEDULER_ENABLED": False})
    with app.app_context():
        rows = db.session.execute(
            db.select(QueueItem.status, QueueItem.attempts).order_by(QueueItem.id)
        ).all()
        db.engine.dispose()
    return [tuple(row) for row in rows]


def stop_leftover_servers() -> None:
    """Stop every server a test started and left running (a test that failed midway)."""
    for server in list(_RUNNING):
        server.stop()
