"""Uploads: in process (``submit_document``) and over HTTP (gunicorn, 8 keep-alive clients)."""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

from .common import (
    NOOP_PROCESSOR,
    PROJECT_ROOT,
    VENV_BIN,
    bench_env,
    docqueue_env,
    free_port,
    percentile,
    running,
    wait_until,
)
from .databases import Database, docqueue_context

CLIENTS = 8


def small_documents(count: int) -> list[bytes]:
    """Distinct small text documents (distinct across calls too: no duplicates)."""
    tag = uuid.uuid4().hex
    return [f"bench document {tag} {number}\n".encode() for number in range(count)]


def docqueue_enqueue(database: Database, contents: list[bytes]) -> float:
    """Uploads per second of ``submit_document``: one upload transaction each, in process."""
    from docqueue_app.queue import DocumentQueueService

    with docqueue_context(database):
        service = DocumentQueueService()
        started = time.perf_counter()
        for number, data in enumerate(contents):
            service.submit_document(f"{number}.txt", data, "text/plain")
        return len(contents) / (time.perf_counter() - started)


@dataclass(frozen=True)
class HttpResult:
    per_second: float
    p99_ms: float


def _multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _client(port: int, contents: list[bytes], latencies: list[float], errors: list[str]) -> None:
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=60)) as connection:
        for number, data in enumerate(contents):
            body, content_type = _multipart(data, f"{number}.txt")
            started = time.perf_counter()
            connection.request("POST", "/api/documents", body, {"Content-Type": content_type})
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 202:
                errors.append(f"HTTP {response.status}")


def post_uploads(port: int, contents: list[bytes]) -> HttpResult:
    """``CLIENTS`` threads, each on one keep-alive connection, POST the documents."""
    latencies: list[float] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_client, args=(port, contents[n::CLIENTS], latencies, errors))
        for n in range(CLIENTS)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} uploads failed, first: {errors[0]}")
    return HttpResult(len(contents) / elapsed, percentile(latencies, 0.99) * 1000)


def _healthy(port: int) -> bool:
    try:
        with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=1)) as connection:
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
    except OSError:
        return False


@contextmanager
def gunicorn(config: str, app: str, env: dict[str, str]) -> Iterator[int]:
    """A gunicorn server on a free port, ready to answer; its port."""
    port = free_port()
    command = [str(VENV_BIN / "gunicorn"), "-c", config, "--bind", f"127.0.0.1:{port}", app]
    server = subprocess.Popen(
        command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with running([server]):
        wait_until(lambda: _healthy(port), timeout=60, every=0.05)
        yield port


def docqueue_http(database: Database, contents: list[bytes]) -> HttpResult:
    """gunicorn as shipped (``-c gunicorn.conf.py wsgi:app``), scheduler disabled."""
    env = docqueue_env(database.url, NOOP_PROCESSOR, "none")
    with gunicorn("gunicorn.conf.py", "wsgi:app", env) as port:
        return post_uploads(port, contents)


def bare_http(database: Database, contents: list[bytes]) -> HttpResult:
    """The bare endpoint of bench/perf/bare_upload.py under the same gunicorn settings."""
    from .bare_upload import TABLE

    with closing(database.connect()) as connection:
        connection.execute(TABLE[database.kind])
    env = bench_env(DATABASE_URL=database.url)
    with gunicorn("bench/perf/bare_gunicorn.conf.py", "bench.perf.bare_upload:app", env) as port:
        return post_uploads(port, contents)
