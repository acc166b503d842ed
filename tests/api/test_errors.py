"""Every API error is JSON in one shape; no HTML, no traceback; safe headers everywhere."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from docqueue_app.queue import DocumentQueueService
from tests.api import assert_json_error
from tests.helpers import upload


def test_unknown_api_path_is_a_json_404(client: FlaskClient) -> None:
    assert_json_error(client.get("/api/nothing-here"), 404, "Not Found")


def test_wrong_method_is_a_json_405_naming_the_allowed_ones(client: FlaskClient) -> None:
    response = client.put("/api/documents/1")

    assert_json_error(response, 405, "Method Not Allowed")
    assert "DELETE" in response.headers["Allow"]


@pytest.mark.parametrize(
    "body",
    [
        "[1,",
        "[" * 100_000 + "]" * 100_000,  # valid, but deeper than Python's recursion limit
        '{"priority": ' + "9" * 5000 + "}",  # valid, but over Python's 4,300 digits
    ],
    ids=["invalid", "nested-too-deep", "huge-integer"],
)
def test_invalid_json_body_is_a_json_400(client: FlaskClient, body: str) -> None:
    document_id = upload(client).get_json()["id"]

    response = client.post(
        f"/api/documents/{document_id}/reprocess", data=body, content_type="application/json"
    )

    body = assert_json_error(response, 400, "Bad Request")
    assert body["errors"] == {"json": ["Invalid JSON body."]}


def test_validation_error_has_the_flask_smorest_errors_shape(client: FlaskClient) -> None:
    response = client.get("/api/documents?per_page=500")

    body = assert_json_error(response, 422, "Unprocessable Entity")
    assert body["errors"] == {
        "query": {"per_page": ["Must be greater than or equal to 1 and less than or equal to 100."]}
    }
    assert "per_page" in body["message"]


def test_unexpected_exception_is_a_json_500_without_details(
    make_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: DocumentQueueService) -> dict:
        raise RuntimeError("secret internals at /srv/db")

    monkeypatch.setattr(DocumentQueueService, "get_queue_stats", explode)
    client = make_app(PROPAGATE_EXCEPTIONS=False).test_client()

    response = client.get("/api/queue/stats")

    body = assert_json_error(response, 500, "Internal Server Error")
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert set(body) == {"code", "status", "message"}


@pytest.mark.parametrize(
    "path", ["/api/documents", "/api/nothing", "/", "/documents", "/metrics", "/healthz"]
)
def test_every_response_forbids_content_sniffing(client: FlaskClient, path: str) -> None:
    assert client.get(path).headers["X-Content-Type-Options"] == "nosniff"


def test_openapi_document_describes_the_api(client: FlaskClient) -> None:
    response = client.get("/api/openapi.json")

    spec = response.get_json()
    assert spec["openapi"] == "3.0.3"
    assert spec["info"]["title"] == "docqueue"
    assert {
        "/api/documents",
        "/api/documents/{document_id}",
        "/api/documents/{document_id}/text",
        "/api/documents/{document_id}/file",
        "/api/documents/{document_id}/reprocess",
        "/api/queue/stats",
        "/api/cron/process-queue",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    upload_body = spec["paths"]["/api/documents"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload_body


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_a_wrong_method_on_a_probe_is_a_json_405(client: FlaskClient, path: str) -> None:
    # Probes and scrapers are programs: they get the API's JSON error, not a page.
    response = client.post(path)

    assert_json_error(response, 405, "Method Not Allowed")
    assert "GET" in response.headers["Allow"]


def test_an_unknown_api_docs_asset_is_a_json_404(client: FlaskClient) -> None:
    assert_json_error(client.get("/api/docs/assets/nothing.js"), 404, "Not Found")
