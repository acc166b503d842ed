"""Numbers the database cannot hold are bad input: a 404 in a path, a 422 in a query.

PostgreSQL's INTEGER columns stop at 2**31 - 1 (psycopg: NumericValueOutOfRange)
and SQLite's at 2**63 - 1 (Python: OverflowError); neither may become a 500.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.api import assert_json_error
from tests.api.test_admin import PASSWORD, admin_client

LARGEST_ID = 2**31 - 1
OVER_POSTGRES = 2**31
OVER_SQLITE = 2**63
# Zero and negative numbers are no ids either; werkzeug's int converter refuses "-1".
NOT_AN_ID = [0, -1, OVER_POSTGRES, OVER_SQLITE, 10**40]


@pytest.fixture
def admin(make_app: Callable[..., Flask]) -> FlaskClient:
    return admin_client(make_app(ADMIN_PASSWORD=PASSWORD))


DOCUMENT_ROUTES = [
    ("GET", "/api/documents/{}"),
    ("GET", "/api/documents/{}/text"),
    ("GET", "/api/documents/{}/file"),
    ("POST", "/api/documents/{}/reprocess"),
    ("DELETE", "/api/documents/{}"),
]
QUEUE_ITEM_ROUTES = [
    ("GET", "/api/queue/items/{}"),
    ("POST", "/api/queue/items/{}/retry"),
    ("POST", "/api/queue/items/{}/cancel"),
]


@pytest.mark.parametrize(("method", "path"), DOCUMENT_ROUTES)
def test_a_document_id_out_of_range_is_404(client: FlaskClient, method: str, path: str) -> None:
    for number in NOT_AN_ID:
        assert_json_error(client.open(path.format(number), method=method), 404, "Not Found")


@pytest.mark.parametrize(("method", "path"), QUEUE_ITEM_ROUTES)
def test_a_queue_item_id_out_of_range_is_404(admin: FlaskClient, method: str, path: str) -> None:
    for number in NOT_AN_ID:
        assert_json_error(admin.open(path.format(number), method=method), 404, "Not Found")


def test_a_document_id_filter_out_of_range_is_422(admin: FlaskClient) -> None:
    for number in NOT_AN_ID:
        response = admin.get(f"/api/queue/items?document_id={number}")

        body = assert_json_error(response, 422, "Unprocessable Entity")
        assert list(body["errors"]["query"]) == ["document_id"]


@pytest.mark.parametrize("path", ["/api/documents", "/api/queue/items"])
def test_a_page_number_out_of_range_is_422(admin: FlaskClient, path: str) -> None:
    for field in ("page", "per_page"):
        for number in NOT_AN_ID:
            response = admin.get(f"{path}?{field}={number}")

            body = assert_json_error(response, 422, "Unprocessable Entity")
            assert list(body["errors"]["query"]) == [field]


@pytest.mark.parametrize("path", ["/api/documents", "/api/queue/items"])
def test_the_largest_page_number_is_an_empty_page(admin: FlaskClient, path: str) -> None:
    response = admin.get(f"{path}?page={LARGEST_ID}&per_page=100")

    assert response.status_code == 200, response.data[:300]
    assert response.get_json() == {"items": [], "page": LARGEST_ID, "per_page": 100, "total": 0}


def test_openapi_documents_the_largest_id(client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]

    for path in ("/api/documents/{document_id}", "/api/queue/items/{item_id}"):
        [parameter] = paths[path]["parameters"]
        assert parameter["schema"] == {"type": "integer", "minimum": 1, "maximum": LARGEST_ID}
