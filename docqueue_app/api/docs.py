"""/api/docs: Swagger UI over /api/openapi.json, every asset served by the app itself.

The assets come from the ``swagger-ui-bundle`` package, so the page works offline
and under a Content-Security-Policy without inline script: flask-smorest's own
Swagger UI page starts the UI from an inline script and loads it from a CDN, so
this page has its own template and a small initialiser (``static/js/api_docs.js``).
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template, send_from_directory
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound

blueprint = Blueprint("api_docs", __name__, url_prefix="/api/docs")

# Swagger UI's stylesheet draws its icons as data: URLs and sets styles through
# the DOM; nothing is loaded from, or sent to, another origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The only files of the bundle the page uses.
ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})


@blueprint.after_request
def add_docs_security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@blueprint.get("")
def api_docs() -> str:
    return render_template("api_docs.html")


@blueprint.get("/assets/<name>")
def api_docs_asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"The API documentation has no asset named {name!r}.")
    return send_from_directory(str(swagger_ui_path), name, max_age=3600)
