"""The admin console (/admin/): queue figures, items and actions, behind the admin login."""

from __future__ import annotations

from flask import Flask

from .views import blueprint


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
