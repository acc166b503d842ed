"""One attempt at a delivery, against real servers on loopback: no database needed."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest
import trustme

from docqueue_app.webhooks import sender
from docqueue_app.webhooks.sender import post
from tests.e2e.server import free_port
from tests.webhooks.receiver import Receiver

# The status line, sent a byte at a time: each byte comes well within a socket
# timeout of a second, but the whole takes far longer than the attempt may.
TRICKLED = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
TRICKLE_PAUSE = 0.4


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """A receiver that reads the request, then answers one byte every TRICKLE_PAUSE."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for byte in TRICKLED:
                if stop.wait(TRICKLE_PAUSE):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return  # the sender gave up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    listener.close()


def test_a_receiver_that_trickles_its_answer_times_out_within_the_attempts_cap(trickling_server):
    result = post(trickling_server, b"{}", {}, timeout=1.0, allow_private=True)
    assert not result.delivered
    assert result.error == "timed out after 1 s"


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(receiver):
    receiver.answers = [302]
    result = post(receiver.url(), b"{}", {}, timeout=5, allow_private=True)
    assert (result.delivered, result.status_code, result.permanent) == (False, 302, False)
    assert "redirects are not followed" in result.error
    assert [request.path for request in receiver.requests] == ["/hook"]


def test_the_request_names_the_host_as_written_and_sends_the_body_as_is(receiver):
    body = '{"id":"x","text":"déjà vu"}'.encode()
    result = post(
        receiver.url(host="localhost"),
        body,
        {"Content-Type": "application/json"},
        timeout=5,
        allow_private=True,
    )
    assert (result.delivered, result.status_code) == (True, 204)
    [request] = receiver.requests
    assert request.headers["Host"] == f"localhost:{receiver.port}"
    assert request.body == body


def test_a_closed_port_is_a_refused_connection_to_try_again():
    result = post(f"http://127.0.0.1:{free_port()}/", b"{}", {}, timeout=5, allow_private=True)
    assert (result.delivered, result.permanent) == (False, False)
    assert result.error == "connection refused"


def test_a_name_that_does_not_resolve_fails_for_good_without_a_connection():
    result = post("http://no-such-host.invalid/hook", b"{}", {}, timeout=5, allow_private=True)
    assert (result.delivered, result.permanent) == (False, True)
    assert (
        result.error
        == "not sent: the destination is refused: no-such-host.invalid does not resolve"
    )


@pytest.fixture
def trusted_authority(tmp_path, monkeypatch) -> Iterator[trustme.CA]:
    """A private certificate authority, trusted as a user trusts one: SSL_CERT_FILE."""
    authority = trustme.CA()
    bundle = tmp_path / "private-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    sender._tls_context.cache_clear()  # built once per process, from the roots of then
    yield authority
    sender._tls_context.cache_clear()


@pytest.fixture
def https_receiver() -> Iterator[Callable[[trustme.CA, str], Receiver]]:
    """HTTPS receivers on loopback, each with a certificate for a name from an authority."""
    started: list[Receiver] = []

    def start(authority: trustme.CA, name: str) -> Receiver:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert(name).configure_cert(context)
        started.append(Receiver(tls=context).start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


def test_https_delivers_to_a_receiver_whose_certificate_names_the_host(
    trusted_authority, https_receiver
):
    receiver = https_receiver(trusted_authority, "localhost")
    result = post(receiver.url(host="localhost"), b"{}", {}, timeout=5, allow_private=True)
    assert (result.delivered, result.status_code) == (True, 204)
    [request] = receiver.requests
    assert request.headers["Host"] == f"localhost:{receiver.port}"


def test_https_refuses_a_certificate_for_another_name_and_sends_nothing(
    trusted_authority, https_receiver
):
    # The connection goes to the address checked, but the name checked in the
    # certificate is the URL's: a certificate for another host is refused.
    receiver = https_receiver(trusted_authority, "receiver.example")
    result = post(receiver.url(host="localhost"), b"{}", {}, timeout=5, allow_private=True)
    assert (result.delivered, result.permanent) == (False, False)
    assert result.error.startswith("TLS certificate refused: Hostname mismatch")
    assert receiver.requests == []


def test_https_refuses_a_certificate_from_an_authority_not_trusted(
    trusted_authority, https_receiver
):
    receiver = https_receiver(trustme.CA(), "localhost")
    result = post(receiver.url(host="localhost"), b"{}", {}, timeout=5, allow_private=True)
    assert (result.delivered, result.permanent) == (False, False)
    assert result.error == "TLS certificate refused: unable to get local issuer certificate"
    assert receiver.requests == []


def test_interim_answers_before_the_final_one_are_skipped(raw_receiver):
    # 102 Processing and 103 Early Hints say the final answer is coming: a
    # receiver that sends them and then 204 has taken the delivery.
    receiver = raw_receiver(
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    result = post(receiver.url(), b"{}", {}, timeout=5, allow_private=True)
    assert (result.delivered, result.status_code, result.error) == (True, 204, None)
    assert receiver.requests == 1


@pytest.mark.parametrize(
    "answer, delivered, status, error",
    [
        # The status decides: a body promised and never sent is not waited for.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n", True, 200, None),
        (b"HTTP/1.1 204 No Content\r\n\r\n" + b"x" * 1_000_000, True, 204, None),
        (b"", False, None, "RemoteDisconnected: Remote end closed connection without response"),
        (b"HTTP/1.1 20", False, None, "BadStatusLine: HTTP/1.1 20"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Many: yes\r\n" * 101, False, None, None),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", False, 101, "HTTP 101 Switching Protocols"),
        (b"HTTP/1.1 410 Gone\r\n\r\n", False, 410, "HTTP 410 Gone"),
    ],
)
def test_a_receiver_bending_http_gets_a_verdict_from_its_status_alone(
    raw_receiver, answer, delivered, status, error
):
    result = post(raw_receiver(answer).url(), b"{}", {}, timeout=5, allow_private=True)
    assert (result.delivered, result.status_code, result.permanent) == (delivered, status, False)
    if error is not None:
        assert result.error == error
