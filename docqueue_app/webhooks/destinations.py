"""Where a webhook may be sent: the SSRF guard of SPEC §8.

A destination is an ``http`` or ``https`` URL whose host resolves only to public
addresses. The guard resolves the name once and hands back the addresses it
checked, and the sender connects to exactly those: a second lookup, which a
DNS rebinding attack could answer differently, never happens.
``DOCQUEUE_WEBHOOK_ALLOW_PRIVATE=true`` lifts the address check (receivers on
loopback or the local network), not the URL check.

A delivery attempt resolves within its own time cap: a resolver that hangs
must not hold a sender past it (glibc's own patience is seconds per server and
try), and a resolver that fails for now is worth another attempt, unlike a
name that does not exist.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from urllib.parse import urlsplit

_SCHEMES = {"http": 80, "https": 443}
MAX_URL_LENGTH = 2048
# The longest an upload waits for its callback_url's name to resolve: one of
# glibc's tries, where three dead name servers would take 30 s, gunicorn's
# worker timeout.
UPLOAD_LOOKUP_SECONDS = 5.0


class RefusedDestination(ValueError):
    """The URL is not one a webhook may be sent to; the message says why."""


class CannotCheckNow(RuntimeError):
    """The resolver gave no answer in time, or failed for now: the URL may be fine."""


class LookupFailedForNow(OSError):
    """The resolver could not answer now (no answer from a server, SERVFAIL): try again later."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


class LookupTimedOut(TimeoutError):
    """The name was not resolved within the time given."""

    def __init__(self, host: str, seconds: float) -> None:
        super().__init__(f"{host} did not resolve in time ({seconds:g} s)")


@dataclass(frozen=True)
class Destination:
    """A checked URL: where to connect (``addresses``, in turn) and what to ask for there."""

    url: str
    scheme: str
    host: str  # as written: the Host header and the name TLS verifies
    port: int
    target: str  # path and query
    addresses: tuple[str, ...]  # every address the name resolved to, each checked


def check_destination(
    url: str, allow_private: bool = False, timeout: float | None = None
) -> Destination:
    """The destination of ``url``, resolved and checked; raises RefusedDestination.

    With a ``timeout`` (a delivery attempt's), a name not resolved within it
    raises LookupTimedOut (a TimeoutError), and a resolver failing for now
    (EAI_AGAIN) LookupFailedForNow; without one, both count as not resolving.
    """
    scheme, host, port, target = parse_url(url)
    addresses = _resolve(host, port, timeout)
    if not addresses:
        if allow_private:
            raise RefusedDestination(f"{host} does not resolve")
        raise RefusedDestination(f"{host} does not resolve to a public address")
    if not allow_private:
        for address in addresses:
            kind = non_public_kind(address)
            if kind is not None:
                named = host if host == address else f"{host} resolves to {address}, which"
                raise RefusedDestination(f"{named} is a {kind} address")
    return Destination(url, scheme, host, port, target, tuple(addresses))


def checked_callback_url(raw: str | None, allow_private: bool = False) -> str | None:
    """A ``callback_url`` as given at upload or import: trimmed, blank = None, checked.

    Raises RefusedDestination for a URL webhooks may not be sent to, and
    CannotCheckNow when the resolver cannot answer within UPLOAD_LOOKUP_SECONDS
    (the uploader waits for the answer) or fails for now.
    """
    url = (raw or "").strip()
    if url:
        try:
            check_destination(url, allow_private, timeout=UPLOAD_LOOKUP_SECONDS)
        except LookupTimedOut as exc:
            raise CannotCheckNow(str(exc)) from None
        except LookupFailedForNow as exc:
            reason = f"{exc.host} could not be resolved for now ({exc.reason})"
            raise CannotCheckNow(reason) from None
    return url or None


def non_public_kind(address: str) -> str | None:
    """What kind of non-public address this is ("loopback", "private"...), None when public.

    An IPv4 address written as IPv6 (``::ffff:127.0.0.1``) or carried by a
    6to4 prefix (``2002:7f00:1::``, routed to that IPv4 address where 6to4 is
    set up) is judged as the IPv4 address it names.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    for kind in _NON_PUBLIC_KINDS:
        if getattr(ip, f"is_{kind}", False):  # site_local is IPv6's only
            return kind.replace("_", "-")
    if not ip.is_global:
        return "non-public"
    return None


# Python's is_global lets IPv6 site-local (fec0::/10) through: deprecated,
# still routed in places.
_NON_PUBLIC_KINDS = (
    "loopback",
    "link_local",
    "site_local",
    "multicast",
    "unspecified",
    "reserved",
    "private",
)


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an http or https URL; RefusedDestination
    says why another is refused. Resolves nothing (``check_destination`` does)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise RefusedDestination(
            f"must be an http or https URL of at most {MAX_URL_LENGTH} characters"
        )
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise RefusedDestination("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedDestination(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise RefusedDestination("must be an http or https URL")
    if not parts.hostname:
        raise RefusedDestination("must name a host")
    if parts.username is not None or parts.password is not None:
        raise RefusedDestination("must not carry a user name or password")
    if port == 0:
        raise RefusedDestination("must not name port 0")
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return scheme, parts.hostname, port or _SCHEMES[scheme], target


def _resolve(host: str, port: int, timeout: float | None) -> list[str]:
    """Every address the name resolves to (an address literal resolves to itself)."""
    try:
        infos = _getaddrinfo(host, port, timeout)
    except socket.gaierror as exc:
        if timeout is not None and exc.errno == socket.EAI_AGAIN:
            raise LookupFailedForNow(host, exc.strerror) from None
        return []
    except TimeoutError:
        raise LookupTimedOut(host, timeout or 0) from None
    except UnicodeError:
        return []
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        if sockaddr[0] not in addresses:
            addresses.append(sockaddr[0])
    return addresses


def _getaddrinfo(host: str, port: int, timeout: float | None) -> list[tuple]:
    """``getaddrinfo``, given up after ``timeout`` seconds (TimeoutError) when one is given.

    getaddrinfo cannot be interrupted, so it runs in a daemon thread of its own,
    left to end when the resolver gives up.
    """
    if timeout is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    answer: Future[list[tuple]] = Future()

    def look_up() -> None:
        try:
            answer.set_result(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the waiting attempt
            answer.set_exception(exc)

    threading.Thread(target=look_up, name="docqueue-webhook-dns", daemon=True).start()
    return answer.result(timeout)
