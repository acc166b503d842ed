"""Hostile and broken HTTP clients against gunicorn as shipped, over real sockets.

Clients that hang up or reset mid-upload, bodies whose framing is broken (chunked
encoding, Content-Length), ``Expect: 100-continue``, the upload limit with and
without Content-Length, and malformed multipart bodies. Each must be answered
(or dropped) cleanly: a 4xx, never a 500 or a traceback in the server's log,
nothing stored, and the worker's threads free for the next client.

The server is gunicorn with gunicorn.conf.py (gthread, 4 threads) and ONE
worker, so a thread a hostile client kept would starve every later request
rather than only those the kernel happened to hand to the same worker.
Hand-written requests (``socket``) and ``http.client`` say exactly what goes
on the wire; ``curl`` is the one real client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from sqlalchemy import create_engine, text

from docqueue_app.config import normalize_database_url
from docqueue_app.form_parsing import IN_MEMORY_BYTES
from tests.conftest import TABLES
from tests.e2e.server import Server, migrated_env, wait_for

LIMIT_MB = 1
LIMIT = LIMIT_MB * 1024 * 1024  # MAX_UPLOAD_MB in bytes: the largest file accepted
# gunicorn.conf.py's threads per worker
THREADS = 4
# Enough hostile requests to take every thread twice over, were any of them kept.
ROUNDS = 2 * THREADS
STORED = ("documents", "document_contents", "queue_items")
UPLOAD_LINE = '"POST /api/documents HTTP/1.1"'


class Answer(NamedTuple):
    status: int
    content_type: str
    body: Any  # decoded JSON, or the text of another type


class Served(NamedTuple):
    server: Server
    database_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp(f"hostile-{request.param}")
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_url")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    else:
        database_url = f"sqlite:///{folder / 'docqueue.db'}"
    env = migrated_env(
        database_url,
        {
            "DOCQUEUE_MAX_UPLOAD_MB": str(LIMIT_MB),
            "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
        },
    )
    log_path = folder / "server.log"
    server = Server(env, workers=1, log_path=log_path).start()
    try:
        yield Served(server, database_url, log_path)
    finally:
        server.stop()


@pytest.fixture
def fresh(served: Served) -> Iterator[Served]:
    """The module's server; after the test its log holds no traceback (Flask's
    500s, gunicorn's socket errors), and a normal upload is still stored."""
    log_start = len(served.log())
    yield served
    assert_still_serving(served.server)
    written = served.log()[log_start:]
    assert "Traceback" not in written, written


def stored_rows(database_url: str) -> dict[str, int]:
    engine = create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as conn:
            return {table: conn.scalar(text(f"SELECT count(*) FROM {table}")) for table in STORED}
    finally:
        engine.dispose()


def text_file(size: int) -> bytes:
    """``size`` bytes of text no other upload of the run has (no duplicate answers)."""
    unique = uuid.uuid4().hex.encode() + b"\n"
    return (unique + b"lorem ipsum " * (size // 12 + 1))[:size]


def multipart(
    content: bytes, filename: str = "note.txt", boundary: str = "hostile-boundary"
) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: text/plain\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )


def request_head(
    path: str = "/api/documents",
    framing: str = "",
    content_type: str = "multipart/form-data; boundary=hostile-boundary",
    extra: str = "",
) -> bytes:
    """A request's line and headers; ``framing`` is its Content-Length or
    Transfer-Encoding header line, or nothing."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"{framing}{extra}\r\n"
    ).encode()


def length(body: bytes) -> str:
    return f"Content-Length: {len(body)}\r\n"


CHUNKED = "Transfer-Encoding: chunked\r\n"


def chunked(body: bytes, size: int = 64 * 1024) -> bytes:
    chunks = [body[at : at + size] for at in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket) -> Answer:
    response = http.client.HTTPResponse(sock)  # skips a "100 Continue" by itself
    response.begin()
    raw = response.read()
    content_type = response.getheader("Content-Type", "")
    body = json.loads(raw) if "json" in content_type else raw.decode("utf-8", "replace")
    return Answer(response.status, content_type, body)


def exchange(server: Server, request: bytes) -> Answer:
    """Send ``request`` whole, while reading the answer: a server that answers
    before reading the body is heard even if it then stops reading."""
    with connect(server) as sock:
        sender = threading.Thread(target=_send_ignoring_hang_up, args=(sock, request))
        sender.start()
        try:
            return read_answer(sock)
        finally:
            sender.join()


def _send_ignoring_hang_up(sock: socket.socket, data: bytes) -> None:
    # The server may answer and close first; its answer is read all the same.
    with contextlib.suppress(OSError):
        sock.sendall(data)


def assert_json_error(answer: Answer, code: int) -> str:
    assert answer.status == code, answer
    assert answer.content_type == "application/json", answer
    assert answer.body["code"] == code, answer
    assert answer.body["message"], answer
    return answer.body["message"]


def assert_still_serving(server: Server) -> None:
    status, body = server.upload("after.txt", text_file(100))
    assert status == 202, body


def wait_until_answered(served: Served, before: int) -> None:
    """gunicorn writes a request's access line once its thread is done with it."""
    wait_for(lambda: served.log().count(UPLOAD_LINE) > before, "the server to end the request")


# -- clients that go away mid-upload --------------------------------------------------


@pytest.mark.parametrize("size", [IN_MEMORY_BYTES // 2, IN_MEMORY_BYTES + 200_000])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_gone_mid_upload_stores_nothing_and_keeps_no_thread(
    fresh: Served, how: str, size: int
) -> None:
    # Small bodies are read whole by form_parsing, larger ones streamed by Werkzeug.
    # "Expect: 100-continue" makes gunicorn say when it hands the request to the app,
    # so the hang-up comes while the app reads the body, not while gunicorn reads
    # the headers.
    before = stored_rows(fresh.database_url)
    for _ in range(ROUNDS):
        body = multipart(text_file(size))
        lines = fresh.log().count(UPLOAD_LINE)
        sock = connect(fresh.server)
        sock.sendall(request_head(framing=length(body), extra="Expect: 100-continue\r\n"))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body[: len(body) // 2])
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        wait_until_answered(fresh, lines)

    assert stored_rows(fresh.database_url) == before


@pytest.mark.parametrize("size", [IN_MEMORY_BYTES // 2, IN_MEMORY_BYTES + 200_000])
def test_a_body_shorter_than_its_content_length_is_a_json_400(fresh: Served, size: int) -> None:
    # The client stops sending (shuts its side) half-way, and waits for the answer.
    before = stored_rows(fresh.database_url)
    body = multipart(text_file(size))
    with connect(fresh.server) as sock:
        sock.sendall(request_head(framing=length(body)) + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)
        message = assert_json_error(read_answer(sock), 400)

    assert "closing --hostile-boundary--" in message, message
    assert stored_rows(fresh.database_url) == before


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_gone_mid_chunk_stores_nothing(fresh: Served, how: str) -> None:
    before = stored_rows(fresh.database_url)
    for _ in range(ROUNDS):
        lines = fresh.log().count(UPLOAD_LINE)
        sock = connect(fresh.server)
        sock.sendall(request_head(framing=CHUNKED, extra="Expect: 100-continue\r\n"))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(chunked(multipart(text_file(1000)))[:300])  # cut inside its one chunk
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        wait_until_answered(fresh, lines)

    assert stored_rows(fresh.database_url) == before


# -- broken framing -------------------------------------------------------------------

BAD_CHUNKS = {
    "chunk size not hexadecimal": b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk without its CRLF": b"3\r\nabcdef\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("framing", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_a_broken_chunked_upload_is_a_json_400(fresh: Served, framing: bytes) -> None:
    before = stored_rows(fresh.database_url)
    first_chunk = chunked(multipart(text_file(300))[:200])[: -len(b"0\r\n\r\n")]

    answer = exchange(fresh.server, request_head(framing=CHUNKED) + first_chunk + framing)

    message = assert_json_error(answer, 400)
    assert "chunk" in message.lower() and "Nothing was stored" in message, message
    assert stored_rows(fresh.database_url) == before


def test_a_broken_chunked_json_body_is_a_json_400(fresh: Served) -> None:
    status, document = fresh.server.upload("reprocessed.txt", text_file(200))
    assert status == 202, document
    path = f"/api/documents/{document['id']}/reprocess"
    before = stored_rows(fresh.database_url)

    answer = exchange(
        fresh.server,
        request_head(path, CHUNKED, "application/json") + b'5\r\n{"pri\r\nzz\r\n',
    )

    assert_json_error(answer, 400)
    assert stored_rows(fresh.database_url) == before


def test_a_broken_chunked_form_post_is_a_400_page(fresh: Served) -> None:
    answer = exchange(fresh.server, request_head("/", CHUNKED) + b"5\r\n--hos\r\nzz\r\n")

    assert answer.status == 400, answer
    assert answer.content_type.startswith("text/html"), answer


BAD_LENGTHS = {
    "negative": "Content-Length: -5\r\n",
    "not a number": "Content-Length: five\r\n",
    "two that differ": "Content-Length: 5\r\nContent-Length: 6\r\n",
    "and chunked": "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
}


@pytest.mark.parametrize("framing", BAD_LENGTHS.values(), ids=BAD_LENGTHS.keys())
def test_an_unreadable_content_length_is_refused_and_stores_nothing(
    fresh: Served, framing: str
) -> None:
    # gunicorn refuses these itself, before docqueue sees them, in the JSON error shape
    # (README, "Running it for real"; tests/e2e/test_malformed_requests.py).
    before = stored_rows(fresh.database_url)

    answer = exchange(fresh.server, request_head(framing=framing) + multipart(text_file(100)))

    assert_json_error(answer, 400)
    assert stored_rows(fresh.database_url) == before


# -- the upload limit, with and without Content-Length ------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_file_of_exactly_the_limit_is_stored_and_one_byte_more_is_413(
    fresh: Served, framing: str
) -> None:
    def send(content: bytes) -> Answer:
        body = multipart(content)
        if framing == "chunked":
            return exchange(fresh.server, request_head(framing=CHUNKED) + chunked(body))
        return exchange(fresh.server, request_head(framing=length(body)) + body)

    at_the_limit = text_file(LIMIT)
    accepted = send(at_the_limit)
    assert accepted.status == 202, accepted
    assert accepted.body["size"] == LIMIT
    before = stored_rows(fresh.database_url)

    message = assert_json_error(send(text_file(LIMIT + 1)), 413)

    assert f"upload limit of {LIMIT_MB} MB" in message, message
    assert stored_rows(fresh.database_url) == before
    stored = fresh.server.send("GET", f"/api/documents/{accepted.body['id']}/file")
    assert stored.body.encode() == at_the_limit


def test_a_chunked_body_far_over_the_limit_is_413_without_storing(fresh: Served) -> None:
    # No Content-Length to refuse it by: the limit must hold while the body streams in.
    before = stored_rows(fresh.database_url)
    body = multipart(text_file(3 * LIMIT))

    message = assert_json_error(
        exchange(fresh.server, request_head(framing=CHUNKED) + chunked(body)), 413
    )

    # Its first 2 MB were read: "so it was not read" would be untrue.
    assert message == (
        "The request was over 2 MB, so it was refused once that much was read: the file "
        "may have up to 1 MB. Nothing was stored."
    )
    assert stored_rows(fresh.database_url) == before


def test_expect_100_continue_over_the_limit_is_refused_before_the_body_is_sent(
    fresh: Served,
) -> None:
    # curl sends "Expect: 100-continue" for large bodies; the 413 must come without
    # a byte of the body (none is ever sent here).
    head = request_head(framing="Content-Length: 100000000\r\n", extra="Expect: 100-continue\r\n")
    with connect(fresh.server) as sock:
        sock.sendall(head)
        answer = read_answer(sock)

    message = assert_json_error(answer, 413)
    assert "not read" in message and "Nothing was stored" in message, message


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_uploads_a_file_of_the_limit_with_expect_100_continue(
    fresh: Served, tmp_path: Path
) -> None:
    path = tmp_path / "limit.txt"
    path.write_bytes(text_file(LIMIT))

    url = f"{fresh.server.url}/api/documents"
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--verbose", "--form", f"file=@{path}", url],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "> Expect: 100-continue" in result.stderr  # curl's own choice for this size
    document = json.loads(result.stdout)
    assert (document["filename"], document["size"]) == ("limit.txt", LIMIT)


# -- malformed multipart bodies -------------------------------------------------------


def part(headers: str, content: bytes = b"some text") -> bytes:
    return f"--hostile-boundary\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"


END = b"--hostile-boundary--\r\n"
FILE_PART = 'Content-Disposition: form-data; name="file"; filename="a.txt"'
MALFORMED = {
    "two file parts": part(FILE_PART) + part(FILE_PART.replace("a.txt", "b.txt"), b"b") + END,
    "CRLF inside the filename": part(FILE_PART.replace("a.txt", "a.txt\r\nX-Injected: 1")) + END,
    "no parts at all": END,
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_multipart_body_is_a_json_400_storing_nothing(
    fresh: Served, body: bytes
) -> None:
    before = stored_rows(fresh.database_url)

    assert_json_error(exchange(fresh.server, request_head(framing=length(body)) + body), 400)

    assert stored_rows(fresh.database_url) == before


# Werkzeug's parser streams a body past IN_MEMORY_BYTES; looking for the first
# boundary it keeps at most MAX_FORM_MEMORY_SIZE (500 KB), then answers 413.
NOT_FOLLOWING = {
    "never closed": ("hostile-boundary", b"", 100, 400),
    "never closed, streamed": ("hostile-boundary", b"", IN_MEMORY_BYTES + 100, 400),
    "not the body's": ("another-boundary", END, 100, 400),
    "not the body's, streamed": ("another-boundary", END, IN_MEMORY_BYTES + 100, 413),
}


@pytest.mark.parametrize(
    ("boundary", "ending", "size", "code"), NOT_FOLLOWING.values(), ids=NOT_FOLLOWING.keys()
)
def test_a_body_that_does_not_follow_its_boundary_is_refused_saying_so(
    fresh: Served, boundary: str, ending: bytes, size: int, code: int
) -> None:
    # Werkzeug's parser read such a body as no fields at all: "The multipart field
    # 'file' is missing", to a client that had sent one; or, past 500 KB, "The
    # request was over 2 MB" of a body of 0.5 MB.
    before = stored_rows(fresh.database_url)
    body = part(FILE_PART, text_file(size)) + ending
    head = request_head(
        framing=length(body), content_type=f"multipart/form-data; boundary={boundary}"
    )

    message = assert_json_error(exchange(fresh.server, head + body), code)

    assert f"--{boundary}" in message and "Nothing was stored" in message, message
    assert stored_rows(fresh.database_url) == before


def test_a_file_sent_as_a_text_field_is_a_400_that_says_how_to_send_it(fresh: Served) -> None:
    # curl -F "file=<report.txt" (not file=@report.txt) sends the text without a
    # filename: the answer was "The multipart field 'file' is missing".
    before = stored_rows(fresh.database_url)
    body = part('Content-Disposition: form-data; name="file"', text_file(100)) + END

    answer = exchange(fresh.server, request_head(framing=length(body)) + body)

    message = assert_json_error(answer, 400)
    assert "without a filename" in message and "curl -F file=@path" in message, message
    assert stored_rows(fresh.database_url) == before


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_file_sent_as_a_text_field_past_500_kb_is_not_called_over_the_limit(
    fresh: Served, framing: str
) -> None:
    # curl -F "file=<report.txt" sends the file's text as a field, without a filename.
    body = part('Content-Disposition: form-data; name="file"', text_file(600_000)) + END
    if framing == "chunked":
        request = request_head(framing=CHUNKED) + chunked(body)
    else:
        request = request_head(framing=length(body)) + body

    message = assert_json_error(exchange(fresh.server, request), 413)

    assert "text field" in message and "curl -F file=@path" in message, message
    assert "The request was over" not in message, message


MULTIPART = "multipart/form-data; boundary=hostile-boundary"
LATIN_1_FILENAME = FILE_PART.replace("a.txt", "café.txt").encode("latin-1")
UNREADABLE_PARTS = {
    # What requests sends when the caller sets the Content-Type of files= himself.
    "Content-Type without its boundary": ("multipart/form-data", part(FILE_PART), "no boundary"),
    "part without Content-Disposition": (
        MULTIPART,
        part("Content-Type: text/plain"),
        "Content-Disposition",
    ),
    "filename not in UTF-8": (
        MULTIPART,
        b"--hostile-boundary\r\n" + LATIN_1_FILENAME + b"\r\n\r\nsome text\r\n",
        "UTF-8",
    ),
}


@pytest.mark.parametrize(
    ("content_type", "parts", "named"), UNREADABLE_PARTS.values(), ids=UNREADABLE_PARTS.keys()
)
def test_a_multipart_body_that_cannot_be_split_is_a_400_that_says_why(
    fresh: Served, content_type: str, parts: bytes, named: str
) -> None:
    before = stored_rows(fresh.database_url)
    body = parts + END
    head = request_head(framing=length(body), content_type=content_type)

    message = assert_json_error(exchange(fresh.server, head + body), 400)

    assert named in message and "Nothing was stored" in message, message
    assert stored_rows(fresh.database_url) == before


def test_control_characters_of_an_encoded_filename_never_reach_a_header(fresh: Served) -> None:
    encoded = "UTF-8''a%0D%0AX-Injected%3A%201.txt"
    body = part(f'Content-Disposition: form-data; name="file"; filename*={encoded}', text_file(100))
    body += END

    answer = exchange(fresh.server, request_head(framing=length(body)) + body)

    assert answer.status == 202, answer
    assert answer.body["filename"] == "aX-Injected: 1.txt"
    download = fresh.server.send("GET", f"/api/documents/{answer.body['id']}/file")
    assert download.headers.get("X-Injected") is None
    assert "\r" not in download.headers["Content-Disposition"]


# -- idle connections -----------------------------------------------------------------


def test_idle_keep_alive_connections_hold_no_thread(fresh: Served) -> None:
    # A kept-alive connection waits in gunicorn's poller, not in a thread: far more
    # of them than threads leave the server answering.
    idle = []
    try:
        for _ in range(3 * THREADS):
            connection = http.client.HTTPConnection("127.0.0.1", fresh.server.port, timeout=30)
            connection.request("GET", "/healthz")
            assert connection.getresponse().read()
            idle.append(connection)

        assert_still_serving(fresh.server)
    finally:
        for connection in idle:
            connection.close()
