"""Requests gunicorn refuses itself, before docqueue sees them, over real sockets.

A bad Content-Length, a broken request line, method or version, a line or headers
over gunicorn's limits, a chunk size that is not one, a transfer coding it does not
know, and the 500 it writes when the app fails where Flask cannot answer for it.
gunicorn chooses the status; the answer is the SPEC's JSON error shape (§4), as
every other error, with gunicorn's own words as the message and its log lines kept.

The server is gunicorn with gunicorn.conf.py, as ``make run`` starts it. No test
here touches the database, so SQLite is enough.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.e2e.failing_app import REFUSED_HEADER_PATH
from tests.e2e.server import Server, migrated_env, wait_for


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def __repr__(self) -> str:  # what a failed assertion shows
        return f"Answer({self.status}, {dict(self.headers)}, {self.body!r})"


class Served(NamedTuple):
    server: Server
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def serve(folder: Path, app: str = "wsgi:app") -> Served:
    env = migrated_env(
        f"sqlite:///{folder / 'docqueue.db'}",
        {"PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics")},
    )
    log_path = folder / "server.log"
    return Served(Server(env, workers=1, log_path=log_path, app=app).start(), log_path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("malformed"))
    try:
        yield served
    finally:
        served.server.stop()


def exchange(server: Server, request: bytes) -> list[Answer]:
    """Send ``request`` while reading every answer until the server closes.

    gunicorn may answer and close before it has read the whole request, so the
    sending goes on in a thread of its own and its hang-up is ignored."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sender = threading.Thread(target=_send_ignoring_hang_up, args=(sock, request))
        sender.start()
        try:
            return parse_answers(_read_until_closed(sock))
        finally:
            sender.join()


def _send_ignoring_hang_up(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _read_until_closed(sock: socket.socket) -> bytes:
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def parse_answers(raw: bytes) -> list[Answer]:
    """The answers on one connection, in order: each has a Content-Length."""
    stream = io.BytesIO(raw)
    answers = []
    while status_line := stream.readline():
        headers = http.client.parse_headers(stream)
        body = stream.read(int(headers["Content-Length"]))
        answers.append(Answer(int(status_line.split()[1]), headers, body))
    return answers


def assert_json_error(answer: Answer, code: int, reason: str) -> str:
    """The SPEC's error shape with gunicorn's status and reason; its message."""
    assert answer.status == code, answer
    assert answer.headers["Content-Type"] == "application/json", answer
    assert answer.headers["Connection"] == "close", answer
    body = answer.json()
    assert set(body) == {"code", "status", "message"}, body
    assert (body["code"], body["status"]) == (code, reason), body
    assert body["message"], body
    return body["message"]


def request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


UPLOAD = "POST /api/documents HTTP/1.1\nHost: 127.0.0.1\nContent-Type: text/plain\n"
BAD_CONTENT_LENGTH = "Invalid HTTP Header: 'CONTENT-LENGTH'"
REFUSED = {
    "Content-Length not a number": (
        request(UPLOAD + "Content-Length: abc\n", b"abc"),
        400,
        "Bad Request",
        BAD_CONTENT_LENGTH,
    ),
    "negative Content-Length": (
        request(UPLOAD + "Content-Length: -1\n"),
        400,
        "Bad Request",
        BAD_CONTENT_LENGTH,
    ),
    "two Content-Lengths that differ": (
        request(UPLOAD + "Content-Length: 3\nContent-Length: 4\n", b"abcd"),
        400,
        "Bad Request",
        BAD_CONTENT_LENGTH,
    ),
    "invalid request line": (
        request("GARBAGE\n"),
        400,
        "Bad Request",
        "Invalid Request Line 'Invalid HTTP request line: 'GARBAGE''",
    ),
    "invalid method": (
        request("G@T /api/documents HTTP/1.1\nHost: 127.0.0.1\n"),
        400,
        "Bad Request",
        "Invalid Method 'Invalid HTTP method: 'G@T''",
    ),
    "HTTP/9.9": (
        request("GET /api/documents HTTP/9.9\nHost: 127.0.0.1\n"),
        400,
        "Bad Request",
        "Invalid HTTP Version 'Invalid HTTP Version: (9, 9)'",
    ),
    "request line over limit_request_line": (
        request(f"GET /api/documents?q={'a' * 5000} HTTP/1.1\nHost: 127.0.0.1\n"),
        414,
        "URI Too Long",
        "Request Line is too large (5030 > 4094)",
    ),
    "too many headers": (
        request("GET /api/documents HTTP/1.1\n" + "".join(f"X-{n}: 1\n" for n in range(101))),
        431,
        "Request Header Fields Too Large",
        "Error parsing headers: 'limit request headers fields'",
    ),
    "a header too large": (
        request(f"GET /api/documents HTTP/1.1\nHost: 127.0.0.1\nX-Big: {'a' * 9000}\n"),
        431,
        "Request Header Fields Too Large",
        "Error parsing headers: 'limit request headers fields size'",
    ),
    "unsupported Transfer-Encoding": (
        request(UPLOAD + "Transfer-Encoding: br, chunked\n"),
        501,
        "Not Implemented",
        "Unsupported transfer coding: 'br, chunked'",
    ),
}


@pytest.mark.parametrize(("sent", "code", "reason", "message"), REFUSED.values(), ids=REFUSED)
def test_a_request_gunicorn_refuses_is_answered_with_the_json_error_shape(
    served: Served, sent: bytes, code: int, reason: str, message: str
) -> None:
    (answer,) = exchange(served.server, sent)

    assert assert_json_error(answer, code, reason) == message


def test_a_chunk_size_gunicorn_cannot_read_after_the_answer_is_a_json_400(served: Served) -> None:
    # The probe answers without reading the body; gunicorn then reads it to the end,
    # to keep the connection, meets the broken chunk and answers that too.
    sent = request(
        "GET /healthz HTTP/1.1\nHost: 127.0.0.1\nTransfer-Encoding: chunked\n", b"zz\r\nabc\r\n"
    )

    probe, refusal = exchange(served.server, sent)

    assert probe.status == 200, probe
    assert assert_json_error(refusal, 400, "Bad Request") == "Invalid chunk size: b'zz'"


def test_gunicorn_still_logs_the_requests_it_refuses(served: Served) -> None:
    log_start = len(served.log())

    exchange(served.server, request(UPLOAD + "Content-Length: abc\n"))

    def logged() -> str:
        return served.log()[log_start:]

    wait_for(lambda: '"POST /api/documents HTTP/1.1" 400' in logged(), "the access log line")
    assert f"Invalid request from ip=127.0.0.1: {BAD_CONTENT_LENGTH}" in logged()


def test_the_500_gunicorn_writes_when_the_app_fails_outside_flask_is_json(
    tmp_path: Path,
) -> None:
    served = serve(tmp_path, app="tests.e2e.failing_app:app")
    try:
        (answer,) = exchange(
            served.server, request(f"GET {REFUSED_HEADER_PATH} HTTP/1.1\nHost: 127.0.0.1\n")
        )
    finally:
        served.server.stop()

    message = assert_json_error(answer, 500, "Internal Server Error")
    assert "log" in message, message
    assert "Bad Name" in served.log()  # gunicorn's own account of the failure
