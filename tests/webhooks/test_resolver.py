"""One attempt against a real resolver: slow, failing, or giving addresses of the test's.

glibc takes its name server from /etc/resolv.conf only, so each attempt runs in
a subprocess with a mount namespace of its own (``unshare -m``, as root) where
/etc/resolv.conf names a DNS server of the test's: a UDP socket on loopback
that never answers, answers every query SERVFAIL, or gives every name the same
IPv4 addresses. ``RES_OPTIONS`` makes
glibc itself wait 30 s for an answer, far past the attempt's time cap.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVFAIL_FLAGS = b"\x81\x82"  # a response, recursion desired and available, rcode 2
OK_FLAGS = b"\x81\x80"  # the same, rcode 0
RECORD_TYPES = {4: 1, 16: 28}  # A and AAAA, by the length of their address
ATTEMPT = """
import dataclasses, json, sys
from docqueue_app.webhooks.sender import post
allow_private = sys.argv[3] == "allow-private"
result = post(sys.argv[1], b"{}", {}, timeout=float(sys.argv[2]), allow_private=allow_private)
print(json.dumps(dataclasses.asdict(result)))
"""
UPLOAD_WITH_CALLBACK_URL = """
import io, json, sys
from flask_migrate import upgrade
from docqueue_app import create_app
from docqueue_app.models import Document, db
app = create_app({"DATABASE_URL": "sqlite:///" + sys.argv[2], "SCHEDULER_ENABLED": False})
with app.app_context():
    upgrade()
    response = app.test_client().post(
        "/api/documents",
        data={"file": (io.BytesIO(b"words"), "a.txt"), "callback_url": sys.argv[1]},
    )
    print(json.dumps({
        "status": response.status_code,
        "retry_after": response.headers.get("Retry-After"),
        "message": response.get_json()["message"],
        "documents": db.session.query(Document).count(),
    }))
"""
IMPORT_WITH_CALLBACK_URL = """
import json, pathlib, sys
from flask_migrate import upgrade
from docqueue_app import create_app
database = pathlib.Path(sys.argv[2])
app = create_app({"DATABASE_URL": f"sqlite:///{database}", "SCHEDULER_ENABLED": False})
folder = database.with_name("to-import")
folder.mkdir()
(folder / "a.txt").write_text("words")
with app.app_context():
    upgrade()
result = app.test_cli_runner().invoke(args=["import", "--callback-url", sys.argv[1], str(folder)])
print(json.dumps({"exit_code": result.exit_code, "output": result.output}))
"""


def _mount_namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def own_resolv_conf() -> None:
    if not _mount_namespaces_work():
        reason = "a mount namespace of its own (unshare -m, as root) is needed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} under CI=true", pytrace=False)
        pytest.skip(reason)


class DnsServer:
    """A DNS server on a loopback address of its own, port 53: it records the queries it reads."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.queries: list[bytes] = []
        self._answer = answer
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.address = _bind_to_a_free_loopback_address(self._socket)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, client = self._socket.recvfrom(4096)
            except OSError:
                return  # closed
            if client is None:
                return  # shut down
            self.queries.append(query)
            reply = self._answer(query)
            if reply is not None:
                self._socket.sendto(reply, client)

    def close(self) -> None:
        # close() alone leaves the thread blocked in recvfrom, and the address bound
        # for the rest of the run; shutdown() wakes it (Linux raises ENOTCONN for an
        # unconnected socket, yet does it).
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._socket.close()


def _bind_to_a_free_loopback_address(server: socket.socket) -> str:
    """Port 53 on a loopback address of its own, drawn afresh while one is taken."""
    draw = random.Random()  # not the global generator, which a test may have seeded
    for _ in range(20):
        address = f"127.{draw.randint(64, 250)}.{draw.randint(1, 250)}.53"
        try:
            server.bind((address, 53))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            continue
        return address
    raise RuntimeError("no free loopback address for a DNS server in 20 draws")


def _servfail(query: bytes) -> bytes:
    return query[:2] + SERVFAIL_FLAGS + query[4:]


def _records(*addresses: str) -> Callable[[bytes], bytes]:
    """Answers giving every name these addresses: A records for IPv4, AAAA for IPv6."""

    def answer(query: bytes) -> bytes:
        question_end = query.index(b"\0", 12) + 5  # the name, its type and class
        (asked_type,) = struct.unpack("!H", query[question_end - 4 : question_end - 2])
        records = [
            b"\xc0\x0c" + struct.pack("!HHIH", asked_type, 1, 60, len(data)) + data
            for data in map(_packed, addresses)
            if RECORD_TYPES[len(data)] == asked_type
        ]
        header = query[:2] + OK_FLAGS + struct.pack("!HHHH", 1, len(records), 0, 0)
        return header + query[12:question_end] + b"".join(records)

    return answer


def _packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


@pytest.fixture
def dns_server(own_resolv_conf) -> Iterator[Callable[[Callable[[bytes], bytes | None]], DnsServer]]:
    started: list[DnsServer] = []

    def start(answer: Callable[[bytes], bytes | None]) -> DnsServer:
        started.append(DnsServer(answer))
        return started[-1]

    yield start
    for server in started:
        server.close()


def attempt_with_resolver(
    server: DnsServer, url: str, timeout: float, tmp_path: Path, allow_private: bool = True
) -> dict:
    """``post(url)`` once in a process whose only name server is ``server``; the result."""
    addresses = "allow-private" if allow_private else "public-only"
    return _with_resolver(server, tmp_path, ATTEMPT, url, str(timeout), addresses)


def upload_with_resolver(server: DnsServer, url: str, tmp_path: Path) -> dict:
    """An API upload with ``callback_url=url``, with ``server`` the only name server."""
    database = str(tmp_path / "docqueue.db")
    return _with_resolver(server, tmp_path, UPLOAD_WITH_CALLBACK_URL, url, database)


def import_with_resolver(server: DnsServer, url: str, tmp_path: Path) -> dict:
    """``docqueue import --callback-url url`` of one file, ``server`` the only name server."""
    database = str(tmp_path / "docqueue.db")
    return _with_resolver(server, tmp_path, IMPORT_WITH_CALLBACK_URL, url, database)


def _with_resolver(server: DnsServer, tmp_path: Path, script: str, *args: str) -> dict:
    """What ``script`` prints (JSON), run with ``server`` as the only name server."""
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {server.address}\n")
    in_namespace = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"']
    completed = subprocess.run(
        [*in_namespace, str(resolv_conf), sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RES_OPTIONS": "timeout:30 attempts:1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_a_resolver_that_never_answers_times_out_within_the_attempts_cap(dns_server, tmp_path):
    server = dns_server(lambda _query: None)
    result = attempt_with_resolver(server, "http://receiver.example/hook", 1, tmp_path)
    assert server.queries  # the name was really looked up, and the lookup hung
    assert (result["delivered"], result["permanent"]) == (False, False)
    assert result["error"] == "timed out after 1 s"


def test_a_resolver_failing_for_now_is_an_attempt_to_try_again(dns_server, tmp_path):
    server = dns_server(_servfail)
    result = attempt_with_resolver(server, "http://receiver.example/hook", 5, tmp_path)
    assert server.queries
    assert (result["delivered"], result["permanent"]) == (False, False)
    assert result["error"] == (
        "name resolution failed for now: receiver.example: Temporary failure in name resolution"
    )


def test_a_name_resolving_to_a_public_and_a_private_address_is_refused(dns_server, tmp_path):
    server = dns_server(_records("93.184.216.34", "127.0.0.1"))
    url = "http://receiver.example/hook"
    result = attempt_with_resolver(server, url, 5, tmp_path, allow_private=False)
    assert (result["delivered"], result["permanent"]) == (False, True)
    assert result["error"] == (
        "not sent: the destination is refused: receiver.example resolves to 127.0.0.1,"
        " which is a loopback address"
    )


def test_a_name_resolving_to_the_receiver_is_delivered_to_it(dns_server, receiver, tmp_path):
    server = dns_server(_records("127.0.0.1"))
    url = receiver.url(host="receiver.example")
    result = attempt_with_resolver(server, url, 5, tmp_path)
    assert (result["delivered"], result["status_code"]) == (True, 204)
    [request] = receiver.requests
    assert request.headers["Host"] == f"receiver.example:{receiver.port}"


@pytest.mark.parametrize(
    "answer, reason",
    [
        (None, "receiver.example did not resolve in time (5 s)"),
        (
            "servfail",
            "receiver.example could not be resolved for now (Temporary failure in name resolution)",
        ),
    ],
)
def test_an_upload_whose_callback_url_cannot_be_resolved_now_is_a_503_soon(
    dns_server, tmp_path, answer, reason
):
    # An upload waited for glibc's whole patience (30 s here, as long as
    # gunicorn's worker timeout with three dead name servers), then said the
    # name "does not resolve", as if it never would; then a 422, which clients
    # take as final, though the name may resolve in a minute.
    server = dns_server(_servfail if answer == "servfail" else lambda _query: None)
    result = upload_with_resolver(server, "http://receiver.example/hook", tmp_path)
    assert server.queries
    assert result == {
        "status": 503,
        "retry_after": "5",
        "message": f"The callback_url could not be checked now: {reason}. Nothing was "
        "stored; try again later.",
        "documents": 0,
    }


def test_an_import_whose_callback_url_cannot_be_resolved_now_says_try_again(dns_server, tmp_path):
    server = dns_server(_servfail)
    result = import_with_resolver(server, "http://receiver.example/hook", tmp_path)
    assert result == {
        "exit_code": 1,
        "output": "Error: --callback-url could not be checked now: receiver.example could not "
        "be resolved for now (Temporary failure in name resolution). Nothing was imported; "
        "try again later.\n",
    }


def test_a_name_whose_first_address_refuses_is_delivered_to_the_next_it_resolves_to(
    dns_server, receiver, tmp_path
):
    # ::1 comes first (IPv6 is preferred) and nothing listens there, as with an
    # AAAA record whose host has no IPv6 receiver: curl tries the next
    # address, and so must a delivery.
    server = dns_server(_records("::1", "127.0.0.1"))
    result = attempt_with_resolver(server, receiver.url(host="receiver.example"), 5, tmp_path)
    assert (result["delivered"], result["status_code"]) == (True, 204)
    assert len(receiver.requests) == 1


def test_an_internationalized_name_is_delivered_with_its_ascii_form_as_host(
    dns_server, receiver, tmp_path
):
    server = dns_server(_records("127.0.0.1"))
    result = attempt_with_resolver(server, receiver.url(host="bücher.example"), 5, tmp_path)
    assert (result["delivered"], result["status_code"]) == (True, 204)
    [request] = receiver.requests
    assert request.headers["Host"] == f"xn--bcher-kva.example:{receiver.port}"


def test_a_closed_dns_server_frees_its_address_for_the_next_test():
    # close() left the serving thread blocked in recvfrom, which kept the address
    # bound for the rest of the run: a later test drawing the same address failed
    # with "Address already in use".
    server = DnsServer(_records("127.0.0.1"))
    server.close()
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        again.bind((server.address, 53))
    finally:
        again.close()
