"""Another site's page cannot drive the API through a user's browser.

Browsers resend a cached admin login (HTTP Basic) by themselves, and a
``text/plain`` POST needs no CORS preflight; the request says where it comes from
in ``Sec-Fetch-Site`` and ``Origin``. Clients that are not browsers send neither.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.api import assert_json_error, document_count, run_queue
from tests.api.test_admin import PASSWORD, admin_client
from tests.helpers import upload

OWN_ORIGIN = "http://localhost"  # the test client's host
PURGE_ALL_FINISHED = '{"older_than_days": 0}'

FROM_ANOTHER_SITE = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "http://localhost:8080"},  # same host, another port
    {"Origin": "https://localhost"},  # same host, another scheme
    {"Origin": "null"},  # a sandboxed frame or a redirect hides its origin
    {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},
    {"Origin": "http://["},  # no origin this site could have, not a 500
    {"Origin": "http://[::1"},
]
FROM_THIS_SITE = [
    {},  # curl, scripts
    {"Origin": OWN_ORIGIN},
    {"Origin": "http://LOCALHOST:80"},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # typed in the address bar, a bookmark
    {"Sec-Fetch-Site": "same-origin", "Origin": OWN_ORIGIN},
]


@pytest.fixture
def admin_app(make_app: Callable[..., Flask]) -> Flask:
    # Each test has a database of its own, pause switch included: no pause outlives it.
    return make_app(ADMIN_PASSWORD=PASSWORD)


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    return admin_client(admin_app)


def one_purgeable_item(app: Flask, client: FlaskClient) -> None:
    upload(client, b"done", "done.txt")
    run_queue(app)


def pause_and_purge(client: FlaskClient, headers: dict[str, str]) -> list[TestResponse]:
    """What another site's page can send with no CORS preflight: a form, text/plain."""
    form = "application/x-www-form-urlencoded"
    return [
        client.post("/api/queue/pause", content_type=form, headers=headers),
        client.post(
            "/api/queue/purge", data=PURGE_ALL_FINISHED, content_type="text/plain", headers=headers
        ),
    ]


def is_paused(client: FlaskClient) -> bool:
    return client.get("/api/queue/stats").get_json()["paused"]


def purgeable_items(client: FlaskClient) -> int:
    return client.get("/api/queue/stats").get_json()["completed"]


@pytest.mark.parametrize(
    ("headers", "refused"),
    [(headers, True) for headers in FROM_ANOTHER_SITE]
    + [(headers, False) for headers in FROM_THIS_SITE],
)
def test_only_another_site_is_refused_pausing_or_purging_the_queue(
    admin_app: Flask, admin: FlaskClient, headers: dict[str, str], refused: bool
) -> None:
    one_purgeable_item(admin_app, admin)

    responses = pause_and_purge(admin, headers)

    assert [response.status_code for response in responses] == [403 if refused else 200] * 2
    assert is_paused(admin) is not refused
    assert purgeable_items(admin) == (1 if refused else 0)


@pytest.mark.parametrize("headers", FROM_ANOTHER_SITE[:3])
def test_the_refusal_is_a_json_403_before_the_login_is_checked(
    admin_app: Flask, headers: dict[str, str]
) -> None:
    # A 401 would make the browser ask for the password on the other site's behalf.
    response = admin_app.test_client().post("/api/queue/resume", headers=headers)

    body = assert_json_error(response, 403, "Forbidden")
    assert "another site" in body["message"]


@pytest.mark.parametrize("headers", FROM_ANOTHER_SITE[:3])
def test_another_site_can_still_read_the_open_and_admin_routes(
    admin: FlaskClient, headers: dict[str, str]
) -> None:
    # Reading changes nothing, and the same-origin policy keeps the answer from that site.
    assert admin.get("/api/queue/stats", headers=headers).status_code == 200
    assert admin.get("/api/queue/items", headers=headers).status_code == 200


@pytest.mark.parametrize("headers", FROM_ANOTHER_SITE[:3])
def test_another_site_cannot_upload_reprocess_or_delete_documents(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    # Without DOCQUEUE_API_TOKEN the documents API is open, to this site's users and
    # scripts; not to pages of other sites that a user of an intranet install visits.
    document_id = upload(client).get_json()["id"]

    refused = [
        upload(client, b"planted", "planted.txt", headers=headers),
        client.post(
            f"/api/documents/{document_id}/reprocess",
            data='{"priority": 10}',
            content_type="text/plain",
            headers=headers,
        ),
        client.delete(f"/api/documents/{document_id}", headers=headers),
    ]

    for response in refused:
        assert_json_error(response, 403, "Forbidden")
    assert document_count(client) == 1
    assert client.get(f"/api/documents/{document_id}").get_json()["queue_item"]["priority"] == 5


def test_this_site_can_upload_through_the_api(client: FlaskClient) -> None:
    headers = {"Origin": OWN_ORIGIN, "Sec-Fetch-Site": "same-origin"}

    assert upload(client, headers=headers).status_code == 202
