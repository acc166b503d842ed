"""A real webhook receiver on loopback: an HTTP server in a thread that records every POST.

Given a TLS context, it serves HTTPS (the handshake happens as each connection
is accepted). It answers the statuses it is told to, in order (then ``default``), or hangs:
while ``hanging`` it reads the request, records it and waits, answering nothing,
as a receiver that accepts connections and never replies.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        self.answers: list[int] = []  # statuses to answer, in order
        self.default = 204
        self.retry_after: str | None = None  # a Retry-After header on every answer but 2xx
        self.hanging = threading.Event()
        self.released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_of(self))
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def answer(self) -> int | None:
        """The status for the request just read; None to hang up without answering."""
        if self.hanging.is_set():
            self.released.wait(60)
            return None
        return self.answers.pop(0) if self.answers else self.default

    def ids(self) -> list[str]:
        return [request.headers["X-Docqueue-Delivery"] for request in self.requests]


def _handler_of(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            status = receiver.answer()
            if status is None:
                self.close_connection = True
                return
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", receiver.url("/elsewhere"))
            if receiver.retry_after is not None and not 200 <= status < 300:
                self.send_header("Retry-After", receiver.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


def signature_is_valid(secret: str, request: Received, tolerance: float = 300) -> bool:
    """What a receiver checks (as the README shows): HMAC-SHA256 of "<t>.<body>", t recent."""
    fields = dict(part.split("=", 1) for part in request.headers["X-Docqueue-Signature"].split(","))
    signed = fields["t"].encode() + b"." + request.body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    recent = abs(time.time() - int(fields["t"])) <= tolerance
    return recent and hmac.compare_digest(expected, fields["v1"])


class RawReceiver:
    """A receiver that answers each request with the same raw bytes, then closes.

    For receivers that bend HTTP: interim answers, odd status lines, bytes
    that are no HTTP at all. It counts the requests it read.
    """

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}{path}"

    def start(self) -> RawReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            with connection:
                _read_request(connection)
                self.requests += 1
                with contextlib.suppress(OSError):  # the sender gave up
                    connection.sendall(self.answer)


def _read_request(connection: socket.socket) -> bytes:
    """The whole request, head and body: closing with bytes unread would reset the connection."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = connection.recv(65536)
        if not chunk:
            return request
        request += chunk
    head, body = request.split(b"\r\n\r\n", 1)
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
