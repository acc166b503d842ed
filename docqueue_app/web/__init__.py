"""The HTML pages: upload form, document list and document detail."""

from __future__ import annotations

from flask import Flask

from .. import security
from .pages import blueprint


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
    # CSRF for every HTML form (the API blueprints are exempt) and nosniff headers.
    security.init_app(app)
