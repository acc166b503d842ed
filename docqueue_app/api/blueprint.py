"""The flask-smorest Blueprint used by docqueue's API modules."""

from __future__ import annotations

import typing

import flask
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser


class JsonBodyParser(FlaskParser):
    """Reads a JSON body whatever its declared Content-Type.

    ``curl -d '{"priority": 9}'`` sends it as a form; silently ignoring that body
    would queue the work with the default priority instead of answering.
    """

    def _raw_load_json(self, req: flask.Request) -> typing.Any:
        body = req.get_data(cache=True)
        if not body.strip():
            return core.missing
        return core.parse_json(body)


class ApiBlueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = JsonBodyParser()
