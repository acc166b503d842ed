"""Request guards shared by the API and the pages: CSRF, bearer tokens, safe headers."""

from __future__ import annotations

import hmac

from flask import Flask, Response, current_app, request
from flask_wtf.csrf import CSRFProtect
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Forbidden, Unauthorized

csrf = CSRFProtect()


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


def _bearer_matches(expected: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Compared as bytes: compare_digest refuses non-ASCII str, and a constant-time
    # comparison keeps the secret from leaking through response timing.
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def _unauthorized(message: str) -> Unauthorized:
    return Unauthorized(message, www_authenticate=WWWAuthenticate("Bearer", {"realm": "docqueue"}))
