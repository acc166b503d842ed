"""The JSON API: flask-smorest blueprints, their OpenAPI document and JSON errors."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from flask import Flask
from flask_smorest import Api, Blueprint

from ..security import csrf
from . import admin, cron, docs, documents, health, queue
from .blueprint import SECURITY_SCHEMES
from .errors import JsonErrorApi

API_EXTENSION = "docqueue_api"
BLUEPRINTS = (documents.blp, queue.blp, admin.blp, cron.blp, health.blp)


def init_app(app: Flask) -> None:
    """Serve the API, its OpenAPI document at /api/openapi.json and its docs at /api/docs."""
    app.config.setdefault("API_TITLE", "docqueue")
    app.config.setdefault("API_VERSION", _package_version())
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/api")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    api = JsonErrorApi(app)
    app.extensions[API_EXTENSION] = api
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    for blueprint in BLUEPRINTS:
        register_api_blueprint(app, blueprint)
    app.register_blueprint(docs.blueprint)


def register_api_blueprint(app: Flask, blueprint: Blueprint) -> None:
    """Add a blueprint to the API (and its OpenAPI document); bearer tokens, not CSRF, guard it."""
    get_api(app).register_blueprint(blueprint)
    csrf.exempt(blueprint)


def get_api(app: Flask) -> Api:
    return app.extensions[API_EXTENSION]


def _package_version() -> str:
    try:
        return version("docqueue")
    except PackageNotFoundError:
        return "0+unknown"
