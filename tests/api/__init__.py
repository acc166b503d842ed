"""API tests; the helpers below check what every API client relies on."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from docqueue_app.queue import process_document_queue


def assert_json_error(response: TestResponse, code: int, status: str) -> dict[str, Any]:
    """The SPEC §4 error shape: JSON with code, status and a message."""
    assert response.status_code == code, response.data[:300]
    assert response.is_json, response.data[:300]
    body = response.get_json()
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"]
    return body


def document_count(client: FlaskClient) -> int:
    return client.get("/api/documents").get_json()["total"]


def run_queue(app: Flask) -> dict[str, int]:
    with app.app_context():
        return process_document_queue()
