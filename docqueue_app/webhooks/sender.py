"""One attempt at a webhook delivery: a POST to the checked addresses, within a hard deadline.

The destination is checked again at each attempt (``check_destination``: a
name may resolve elsewhere today) and the connection goes to exactly the
addresses that were checked, in turn until one accepts: the socket is
connected here, by address, and handed to ``http.client``, so no second DNS
lookup happens (DNS rebinding cannot slip a private address in). HTTPS wraps
that socket in TLS with SNI and the certificate checked against the URL's
host name, and the ``Host`` header names the host as written.

The time cap covers the whole attempt: resolving the name, connecting, TLS,
sending and reading the answer's head. Socket timeouts alone do not (a
receiver trickling a byte every few seconds resets them forever), so a timer
shuts the socket down when the deadline passes. Redirects are not followed:
a 3xx is a failed attempt, as is any status other than 2xx.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from ..printable import printable
from .destinations import (
    Destination,
    LookupFailedForNow,
    RefusedDestination,
    check_destination,
)


def _user_agent() -> str:
    try:
        return f"docqueue/{version('docqueue')} (webhooks)"
    except PackageNotFoundError:
        return "docqueue (webhooks)"


USER_AGENT = _user_agent()
# The longest error an attempt records (a receiver chooses its reason phrase).
ERROR_CHARS = 300


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt went: delivered (a 2xx), or why not."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    # Never worth trying again: the destination is refused.
    permanent: bool = False
    # Seconds the receiver asked to be left alone (its answer's Retry-After).
    retry_after: float | None = None


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    allow_private: bool = False,
) -> AttemptResult:
    """POST ``body`` to ``url`` once, within ``timeout`` seconds in all; never raises."""
    deadline = _Deadline(timeout)
    try:
        destination = check_destination(url, allow_private, timeout=deadline.remaining())
        status, reason, retry_after = _exchange(destination, body, headers, deadline)
    except RefusedDestination as exc:
        return AttemptResult(
            False, error=f"not sent: the destination is refused: {exc}", permanent=True
        )
    except Exception as exc:  # whatever the network did, it is this attempt's failure
        return AttemptResult(False, error=_readable(deadline.describe(exc)))
    finally:
        deadline.cancel()
    if 200 <= status < 300:
        return AttemptResult(True, status_code=status)
    note = " (redirects are not followed)" if 300 <= status < 400 else ""
    error = _readable(f"HTTP {status} {reason}".strip()) + note
    return AttemptResult(False, status_code=status, error=error, retry_after=retry_after)


def _readable(error: str) -> str:
    """``error`` with control characters as escapes (``\\x00``), cut to ERROR_CHARS.

    The receiver chooses these bytes: PostgreSQL's text refuses NUL (the result
    could not be recorded, so the delivery was sent again past its maximum),
    and an ESC sequence would drive the terminal of whoever reads the log.
    """
    escaped = printable(error)
    if len(escaped) <= ERROR_CHARS:
        return escaped
    return escaped[: ERROR_CHARS - 1] + "…"


def _exchange(
    destination: Destination, body: bytes, headers: Mapping[str, str], deadline: _Deadline
) -> tuple[int, str, float | None]:
    """Send the request and read the answer's head: its status, reason and Retry-After."""
    sock = _connect(destination, deadline)
    deadline.watch(sock)
    if destination.scheme == "https":
        sock = _tls_context().wrap_socket(sock, server_hostname=destination.host)
        deadline.watch(sock)
    connection_class = (
        http.client.HTTPSConnection if destination.scheme == "https" else http.client.HTTPConnection
    )
    # The socket is ours, so http.client never resolves or connects; it writes
    # the Host header from the name (and the port when it is not the default).
    connection = connection_class(destination.host, destination.port)
    connection.sock = sock
    connection.response_class = _FinalResponse
    try:
        connection.request("POST", destination.target, body=body, headers=dict(headers))
        response = connection.getresponse()
        return response.status, response.reason, _seconds(response.getheader("Retry-After"))
    finally:
        connection.close()


def _connect(destination: Destination, deadline: _Deadline) -> socket.socket:
    """A socket connected to the first checked address that accepts, within the deadline.

    As curl or a browser: a name whose first address refuses (an AAAA record
    with nothing listening on IPv6) is reached at its next. A timeout ends the
    attempt, which has no time left for another address.
    """
    failures: list[OSError] = []
    for address in destination.addresses:
        try:
            return socket.create_connection(
                (address, destination.port), timeout=deadline.remaining()
            )
        except TimeoutError:
            raise
        except OSError as exc:  # refused, unreachable: the next address may answer
            failures.append(exc)
    raise failures[0]  # a destination has at least one address


class _FinalResponse(http.client.HTTPResponse):
    """A response read past its interim answers (102 Processing, 103 Early Hints...).

    http.client skips only 100 Continue; any other 1xx would read as the final
    status, and a receiver that answers 204 after it would be sent the delivery
    again. 101 is final: the receiver switched protocols instead of answering.
    """

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's, unused


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After header's seconds from now (seconds or an HTTP date); None if neither."""
    value = (retry_after or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificates verified against the system's roots and the URL's host name."""
    return ssl.create_default_context()


class _Deadline:
    """The attempt's time cap: socket timeouts per operation, and a timer for the whole."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.expired = threading.Event()
        self._socket: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(self.ends - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        """The socket to shut down at the deadline (the TLS one, once it wraps the plain one)."""
        sock.settimeout(self.remaining())
        self._socket = sock
        if self.expired.is_set():
            self._shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def describe(self, error: BaseException) -> str:
        if self.expired.is_set() or isinstance(error, TimeoutError):
            return f"timed out after {self.seconds:g} s"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, LookupFailedForNow):
            return f"name resolution failed for now: {error}"
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"TLS certificate refused: {error.verify_message}"
        return f"{type(error).__name__}: {error}".rstrip(": ")

    def _expire(self) -> None:
        self.expired.set()
        if self._socket is not None:
            self._shut(self._socket)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        # The plain socket's shutdown, even on a TLS socket: it wakes a thread
        # blocked in a read on it, which then fails.
        with contextlib.suppress(OSError):  # closed already
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
