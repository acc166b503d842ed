"""Request guards shared by the API and the pages: CSRF, tokens, admin login, safe headers."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request
from flask_wtf.csrf import CSRFProtect
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Forbidden, Unauthorized

csrf = CSRFProtect()

ADMIN_USER = "admin"
ADMIN_REALM = "docqueue admin"
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values of a request started by another site's page ("same-site" is
# a sibling subdomain: another site all the same for a login it did not ask for).
_OTHER_SITES = frozenset({"cross-site", "same-site"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def init_app(app: Flask) -> None:
    csrf.init_app(app)
    app.after_request(forbid_content_sniffing)


def forbid_content_sniffing(response: Response) -> Response:
    # Browsers must take every Content-Type as given: an uploaded "PDF" or a
    # text preview must never be sniffed into HTML and run as a page.
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def require_api_token() -> None:
    """``before_request`` guard of ``/api/documents*``: a no-op unless API_TOKEN is set."""
    token = current_app.config.get("API_TOKEN")
    if token and not _bearer_matches(token):
        raise _unauthorized("A valid 'Authorization: Bearer <API token>' header is required.")


def require_cron_secret() -> None:
    """The cron endpoint is off (403) without CRON_SECRET, and needs it as a bearer token."""
    secret = current_app.config.get("CRON_SECRET")
    if not secret:
        raise Forbidden("The cron endpoint is disabled: DOCQUEUE_CRON_SECRET is not set.")
    if not _bearer_matches(secret):
        raise _unauthorized("A valid 'Authorization: Bearer <cron secret>' header is required.")


def refuse_cross_site_writes() -> None:
    """``before_request`` guard: a write that a browser sends for another site is 403.

    Browsers resend a cached HTTP Basic login with every request to this host,
    including one that another site's page starts: a form post, or a ``text/plain``
    fetch that needs no CORS preflight (and the API reads JSON whatever the
    Content-Type). Browsers say where such a request comes from, in
    ``Sec-Fetch-Site`` and ``Origin``; curl and scripts send neither, and pass.
    """
    if request.method not in STATE_CHANGING_METHODS:
        return
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    origin = request.headers.get("Origin")
    if site in _OTHER_SITES or (origin is not None and not _is_own_origin(origin)):
        raise Forbidden("Refused: this request was sent by a page of another site.")


def _is_own_origin(origin: str) -> bool:
    """Whether ``Origin`` is this request's own scheme, host and port."""
    own = _origin_of(request.host_url)
    return own is not None and _origin_of(origin) == own


def _origin_of(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a malformed IPv6 host; a port not a number, or out of range
        return None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def require_admin() -> None:
    """``before_request`` guard of the admin API and pages: HTTP Basic as ``admin``.

    Off (403) while ADMIN_PASSWORD is unset, so a fresh install exposes no admin
    action; otherwise a missing or wrong login is 401 with a Basic challenge,
    which makes browsers ask for the password.
    """
    password = current_app.config.get("ADMIN_PASSWORD")
    if not password:
        raise Forbidden("admin API disabled: DOCQUEUE_ADMIN_PASSWORD is not set.")
    if not _basic_login_matches(ADMIN_USER, password):
        raise _unauthorized(
            f"The admin login (HTTP Basic, user '{ADMIN_USER}') is required.",
            scheme="Basic",
            realm=ADMIN_REALM,
        )


def _basic_login_matches(user: str, password: str) -> bool:
    given = request.authorization
    if given is None or given.type != "basic":
        return False
    # Both compared, never short-circuited, so timing tells nothing about the user name.
    user_ok = _same_secret(given.username or "", user)
    password_ok = _same_secret(given.password or "", password)
    return user_ok and password_ok


def _bearer_matches(expected: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # WSGI hands the header's bytes over decoded as Latin-1 (a test client hands
    # over text as typed). A non-ASCII secret arrives as UTF-8 from curl and
    # browsers, as Latin-1 from Python's http.client: either spelling is the secret.
    sent = _latin1_else_utf8(given.strip())
    as_utf8 = hmac.compare_digest(sent, expected.encode())
    as_latin1 = hmac.compare_digest(sent, _latin1_else_utf8(expected))
    return as_utf8 or as_latin1


def _latin1_else_utf8(text: str) -> bytes:
    """``text`` in Latin-1, or in UTF-8 when Latin-1 cannot spell it."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode()


def _same_secret(given: str, expected: str) -> bool:
    # Compared as bytes: compare_digest refuses non-ASCII str, and a constant-time
    # comparison keeps the secret from leaking through response timing.
    return hmac.compare_digest(given.encode(), expected.encode())


def _unauthorized(message: str, scheme: str = "Bearer", realm: str = "docqueue") -> Unauthorized:
    return Unauthorized(message, www_authenticate=WWWAuthenticate(scheme, {"realm": realm}))
