"""The one place where the API turns exceptions into its JSON error shape.

``{"code": 404, "status": "Not Found", "message": "..."}``, plus ``errors`` for
validation failures (422, and 400 for a body that is not JSON) as webargs
reports them. Flask hands every ``HTTPException`` here, including werkzeug's own
(404, 405, 413 while parsing a form) and the 500 it makes of an unexpected
exception, whose traceback goes to the log only.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from ..schemas import describe_validation_errors


class JsonErrorApi(Api):
    """flask-smorest's Api, with a message in every error and the exception's headers kept."""

    def handle_http_exception(self, error: HTTPException) -> Response:
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
    return error.description or error.name
