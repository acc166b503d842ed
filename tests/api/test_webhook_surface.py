"""The webhook side of /api/documents (SPEC §4, §8): an upload's callback_url, the
document's metadata and callback_url in its JSON, and its list of deliveries."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from docqueue_app.models import utcnow
from tests.api import assert_json_error, document_count, run_queue
from tests.delivery_rows import record_delivery
from tests.helpers import statements_sent, upload

# Nothing listens on the discard port: a delivery there would be refused.
LOOPBACK_HOOK = "http://127.0.0.1:9/hook"
DELIVERY_FIELDS = {
    "id", "event", "url", "status", "attempts", "last_status_code", "last_error",
    "created_at", "delivered_at",
}  # fmt: skip


def upload_with_callback(
    client: FlaskClient, callback_url: str, data: bytes = b"tell me when done"
) -> TestResponse:
    return client.post(
        "/api/documents",
        data={"file": (io.BytesIO(data), "note.txt"), "callback_url": callback_url},
        content_type="multipart/form-data",
    )


@pytest.fixture
def private_client(make_app: Callable[..., Flask]) -> FlaskClient:
    """A client of an app that allows webhooks to loopback and private hosts."""
    return make_app(WEBHOOK_ALLOW_PRIVATE=True).test_client()


# -- callback_url at upload ---------------------------------------------------------


@pytest.mark.parametrize(
    ("callback_url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://localhost:9/", "loopback"),  # a name, resolved before it is judged
        ("http://10.1.2.3/hook", "private"),
        ("ftp://x", "http or https"),
        ("not a url", "spaces"),
    ],
)
def test_a_refused_callback_url_is_422_and_stores_nothing(
    client: FlaskClient, callback_url: str, reason: str
) -> None:
    response = upload_with_callback(client, callback_url)

    body = assert_json_error(response, 422, "Unprocessable Entity")
    [message] = body["errors"]["form"]["callback_url"]
    assert list(body["errors"]) == ["form"] and list(body["errors"]["form"]) == ["callback_url"]
    assert reason in message
    assert document_count(client) == 0


def test_allow_private_lifts_the_address_check_not_the_url_check(
    private_client: FlaskClient,
) -> None:
    refused = upload_with_callback(private_client, "ftp://127.0.0.1/")

    assert_json_error(refused, 422, "Unprocessable Entity")
    assert document_count(private_client) == 0


def test_an_accepted_callback_url_is_shown_with_metadata_once_processed(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(WEBHOOK_ALLOW_PRIVATE=True)
    client = app.test_client()

    created = upload_with_callback(client, LOOPBACK_HOOK)
    document_id = created.get_json()["id"]
    pending = client.get(f"/api/documents/{document_id}").get_json()
    run_queue(app)
    completed = client.get(f"/api/documents/{document_id}").get_json()
    [listed] = client.get("/api/documents").get_json()["items"]

    assert created.status_code == 202
    for document in (created.get_json(), pending):
        assert (document["callback_url"], document["metadata"]) == (LOOPBACK_HOOK, None)
    assert completed["status"] == "completed"
    assert completed["callback_url"] == LOOPBACK_HOOK
    assert isinstance(completed["metadata"], dict) and "encoding" in completed["metadata"]
    assert listed["metadata"] == completed["metadata"]


def test_without_a_callback_url_it_is_null(client: FlaskClient) -> None:
    blank = upload_with_callback(client, "  ").get_json()
    absent = upload(client, b"no callback field").get_json()

    assert blank["callback_url"] is None
    assert absent["callback_url"] is None


def test_a_duplicate_upload_keeps_the_first_callback_url(private_client: FlaskClient) -> None:
    first = upload_with_callback(private_client, LOOPBACK_HOOK, b"same bytes")

    again = upload_with_callback(private_client, "http://127.0.0.1:10/other", b"same bytes")
    without = upload_with_callback(private_client, "", b"same bytes")

    assert first.status_code == 202
    for response in (again, without):
        assert response.status_code == 200
        assert response.get_json()["duplicate"] is True
        assert response.get_json()["callback_url"] == LOOPBACK_HOOK


def test_listing_documents_loads_their_metadata_with_them(app: Flask, client: FlaskClient) -> None:
    """No query per document for its metadata: a page of 5 costs what a page of 1 does."""

    def statements_to_list(count: int) -> int:
        with statements_sent(app) as sent:
            body = client.get(f"/api/documents?per_page={count}").get_json()
        assert len(body["items"]) == count and all("metadata" in d for d in body["items"])
        return len(sent)

    for n in range(5):
        upload(client, f"document {n}".encode())
    run_queue(app)

    assert statements_to_list(5) == statements_to_list(1)


# -- GET /api/documents/<id>/deliveries --------------------------------------------


def test_deliveries_are_listed_newest_first_with_every_field(
    app: Flask, client: FlaskClient
) -> None:
    document_id = upload(client).get_json()["id"]
    other_id = upload(client, b"another document").get_json()["id"]
    earlier = utcnow() - timedelta(minutes=5)
    failed = record_delivery(app, document_id, "failed", created_at=earlier)
    delivered = record_delivery(app, document_id, "delivered", url="https://example.com/hook")
    record_delivery(app, other_id, "pending")

    body = client.get(f"/api/documents/{document_id}/deliveries").get_json()

    assert list(body) == ["items"]
    assert [d["id"] for d in body["items"]] == [delivered, failed]
    newest, oldest = body["items"]
    assert set(newest) == DELIVERY_FIELDS
    assert newest["event"] == "document.completed"
    assert newest["url"] == "https://example.com/hook"
    assert (newest["status"], newest["attempts"], newest["last_status_code"]) == (
        "delivered",
        1,
        204,
    )
    assert newest["delivered_at"] is not None and newest["last_error"] is None
    assert (oldest["status"], oldest["attempts"], oldest["last_error"]) == (
        "failed",
        8,
        "connection refused",
    )
    assert oldest["delivered_at"] is None
    assert oldest["created_at"].startswith(earlier.strftime("%Y-%m-%dT%H:%M:%S"))
    assert oldest["created_at"].endswith("+00:00")


def test_processing_records_a_delivery_per_destination(make_app: Callable[..., Flask]) -> None:
    """Through the real path: the outcome's transaction records both deliveries, listed."""
    app = make_app(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_URL="http://127.0.0.1:9/global")
    client = app.test_client()
    document_id = upload_with_callback(client, LOOPBACK_HOOK).get_json()["id"]

    before = client.get(f"/api/documents/{document_id}/deliveries").get_json()
    run_queue(app)
    after = client.get(f"/api/documents/{document_id}/deliveries").get_json()

    assert before == {"items": []}
    assert {d["url"] for d in after["items"]} == {LOOPBACK_HOOK, "http://127.0.0.1:9/global"}
    assert len({d["id"] for d in after["items"]}) == 2
    for delivery in after["items"]:
        assert set(delivery) == DELIVERY_FIELDS
        assert (delivery["event"], delivery["status"]) == ("document.completed", "pending")
        assert delivery["delivered_at"] is None


def test_a_document_without_deliveries_lists_none(client: FlaskClient) -> None:
    document_id = upload(client).get_json()["id"]

    assert client.get(f"/api/documents/{document_id}/deliveries").get_json() == {"items": []}


def test_deliveries_of_an_unknown_document_are_404(client: FlaskClient) -> None:
    assert_json_error(client.get("/api/documents/999/deliveries"), 404, "Not Found")


def test_deliveries_need_the_api_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(API_TOKEN="hook-token").test_client()
    headers = {"Authorization": "Bearer hook-token"}
    document_id = upload(client, headers=headers).get_json()["id"]
    path = f"/api/documents/{document_id}/deliveries"

    assert_json_error(client.get(path), 401, "Unauthorized")
    assert client.get(path, headers=headers).status_code == 200


def test_openapi_documents_deliveries_and_the_callback_url(client: FlaskClient) -> None:
    spec = client.get("/api/openapi.json").get_json()
    schemas = spec["components"]["schemas"]

    operation = spec["paths"]["/api/documents/{document_id}/deliveries"]["get"]
    answer = operation["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/DeliveryList")
    assert "newest 100" in answer["description"]
    assert set(schemas["Delivery"]["properties"]) == DELIVERY_FIELDS
    assert {"metadata", "callback_url"} <= set(schemas["Document"]["properties"])
    upload_body = spec["paths"]["/api/documents"]["post"]["requestBody"]["content"]
    form_name = upload_body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "callback_url" in schemas[form_name]["properties"]
