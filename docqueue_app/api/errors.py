"""The one place where the API turns exceptions into its JSON error shape.

``{"code": 404, "status": "Not Found", "message": "..."}``, plus ``errors`` for
validation failures (422, and 400 for a body that is not JSON) as webargs
reports them. Flask hands every ``HTTPException`` here, including werkzeug's own
(404, 405, 413 while parsing a form) and the 500 it makes of an unexpected
exception, whose traceback goes to the log only. The one exception: a request
outside /api that matched no route gets the pages' HTML error page, unless its
path is a probe's (/healthz, /readyz, /metrics), which programs read.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from ..schemas import describe_validation_errors
from ..uploads import refused_unread, request_and_file_limits_mb
from ..web.pages import render_unrouted_error_page

API_PATH_PREFIX = "/api"
# Read by programs (load balancers, orchestrators, Prometheus), not people: even
# a request that matched no rule there (a wrong method) gets the JSON error.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class JsonErrorApi(Api):
    """flask-smorest's Api, with a message in every error and the exception's headers kept.

    flask-smorest makes this the app's handler, so it also meets the errors of
    requests that matched no route (an unknown path, a wrong method): those
    belong to no blueprint, so the pages' own handler never sees them. Outside
    /api they are answered as pages, like every other error there.
    """

    def handle_http_exception(self, error: HTTPException) -> Response:
        if request.url_rule is None and not _is_api_path(request.path):
            return render_unrouted_error_page(error)
        return json_error_response(error)


def json_error_response(error: HTTPException) -> Response:
    # Set by webargs' abort(): validation messages and extra headers.
    data: dict[str, Any] = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    payload: dict[str, Any] = {
        "code": error.code,
        "status": error.name,
        "message": data.get("message") or _message(error, errors),
    }
    if errors:
        payload["errors"] = errors
    response = jsonify(payload)
    response.status_code = error.code or 500
    for name, value in error.get_headers():
        # Keep Allow (405) and WWW-Authenticate (401); the body is JSON, not HTML.
        if name.lower() != "content-type":
            response.headers[name] = value
    response.headers.update(data.get("headers") or {})
    return response


def _message(error: HTTPException, errors: Any) -> str:
    if errors:
        return describe_validation_errors(errors)
    if refused_unread(error):
        request_mb, file_mb = request_and_file_limits_mb()
        # A chunked body has no Content-Length to refuse it by: it is read up to the limit.
        read = (
            "not read" if request.content_length is not None else "refused once that much was read"
        )
        return (
            f"The request was over {request_mb:.3g} MB, so it was {read}: the file may "
            f"have up to {file_mb:g} MB. Nothing was stored."
        )
    return error.description or error.name


def _is_api_path(path: str) -> bool:
    return path == API_PATH_PREFIX or path.startswith(API_PATH_PREFIX + "/") or path in PROBE_PATHS
