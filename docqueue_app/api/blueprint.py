"""The flask-smorest Blueprint used by docqueue's API modules, and the API's credentials."""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Mapping

import flask
import flask_smorest
from flask_smorest.error_handler import ErrorSchema
from webargs import core
from webargs.flaskparser import FlaskParser

# The credentials of SPEC §4 as the OpenAPI document names them (components.securitySchemes).
API_TOKEN = "apiToken"
ADMIN_LOGIN = "adminLogin"
CRON_SECRET = "cronSecret"
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    API_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": "DOCQUEUE_API_TOKEN; /api/documents* is open while it is not set.",
    },
    ADMIN_LOGIN: {
        "type": "http",
        "scheme": "basic",
        "description": "User 'admin', password DOCQUEUE_ADMIN_PASSWORD.",
    },
    CRON_SECRET: {
        "type": "http",
        "scheme": "bearer",
        "description": "DOCQUEUE_CRON_SECRET.",
    },
}
DATABASE_UNAVAILABLE = (
    "The database is unreachable, read-only, full or busy; nothing was changed. "
    "Retry-After says when to try again."
)


class JsonBodyParser(FlaskParser):
    """Reads a JSON body whatever its declared Content-Type.

    ``curl -d '{"priority": 9}'`` sends it as a form; silently ignoring that body
    would queue the work with the default priority instead of answering.
    """

    def _raw_load_json(self, req: flask.Request) -> typing.Any:
        body = req.get_data(cache=True)
        if not body.strip():
            return core.missing
        try:
            return core.parse_json(body)
        except json.JSONDecodeError:
            raise  # webargs' own 400
        except (RecursionError, ValueError) as exc:
            # JSON that Python will not load (nested too deep, an integer of
            # thousands of digits) is as unusable as invalid JSON: the same 400.
            self._handle_invalid_json_error(exc, req)


class ApiBlueprint(flask_smorest.Blueprint):
    """A blueprint whose operations share one credential and the errors of its guards.

    ``security`` names the scheme its ``before_request`` guard checks, and
    ``guard_errors`` (status code: description) the errors that guard answers;
    both are added to every operation of the blueprint in the OpenAPI document.
    """

    ARGUMENTS_PARSER = JsonBodyParser()

    def __init__(
        self,
        *args: typing.Any,
        security: str | None = None,
        guard_errors: Mapping[int, str] | None = None,
        **kwargs: typing.Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.security = security
        # Every operation reads or writes the database (SPEC §4: 503 when it is away).
        self.guard_errors = {**dict(guard_errors or {}), 503: DATABASE_UNAVAILABLE}
        self._prepare_doc_cbks.append(self._prepare_guard_doc)

    def error_response(self, status_code: int, description: str) -> Callable:
        """Document an error answered with the JSON error shape of SPEC §4."""
        return self.alt_response(status_code, schema=ErrorSchema, description=description)

    def _prepare_guard_doc(
        self, doc: dict[str, typing.Any], doc_info: dict[str, typing.Any], **_: typing.Any
    ) -> dict[str, typing.Any]:
        if self.security is not None:
            doc["security"] = [{self.security: []}]
        responses = doc.setdefault("responses", {})
        for status_code, description in self.guard_errors.items():
            if status_code not in responses and str(status_code) not in responses:
                responses[status_code] = {
                    "description": description,
                    "content": {"application/json": {"schema": ErrorSchema}},
                }
        return doc
