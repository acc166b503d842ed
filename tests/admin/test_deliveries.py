"""Failed webhook deliveries on the admin console, on SQLite and PostgreSQL: listed
newest first, counted on the dashboard, and delivered again (same delivery id)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from docqueue_app.models import utcnow
from tests.admin import test_console
from tests.admin.test_console import PASSWORD, assert_back_to, basic_auth, flashes
from tests.delivery_rows import delivery_state, record_delivery
from tests.helpers import upload

# The console's fixtures: an app with the admin password, and a client logged in to it.
admin_app = test_console.admin_app
admin = test_console.admin

DELIVERIES = "/admin/deliveries"


def deliver_again_path(delivery_id: str) -> str:
    return f"{DELIVERIES}/{delivery_id}/deliver-again"


def listed(client: FlaskClient) -> list[str]:
    """The delivery ids the failed-deliveries page lists, in order."""
    page = client.get(DELIVERIES).get_data(as_text=True)
    return re.findall(r'data-delivery="([^"]+)"', page)


def test_failed_deliveries_are_listed_newest_first_and_counted(
    admin: FlaskClient, admin_app: Flask
) -> None:
    document_id = upload(admin, b"hooked", "report.txt").get_json()["id"]
    older = record_delivery(
        admin_app,
        document_id,
        url="https://hooks.example.com/older",
        created_at=utcnow() - timedelta(hours=1),
        last_status_code=500,
        last_error="HTTP 500 Internal Server Error",
    )
    newer = record_delivery(admin_app, document_id, event="document.failed")
    record_delivery(admin_app, document_id, "pending")
    record_delivery(admin_app, document_id, "delivered")

    page = admin.get(DELIVERIES).get_data(as_text=True)
    dashboard = admin.get("/admin/").get_data(as_text=True)

    assert listed(admin) == [newer, older]
    for shown in (
        "document.failed",
        "https://hooks.example.com/older",
        f'href="/documents/{document_id}">report.txt</a>',
        "8/8",
        "HTTP 500",
        "connection refused",
    ):
        assert shown in page
    assert re.search(r'href="/admin/deliveries"[^>]*>\s*2 failed deliveries', dashboard)


def test_deliver_again_makes_it_pending_under_the_same_id(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(ADMIN_PASSWORD=PASSWORD, WTF_CSRF_ENABLED=True)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = basic_auth()
    delivery_id = record_delivery(app, None)
    page = client.get(DELIVERIES).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    forged = client.post(deliver_again_path(delivery_id), data={"next": DELIVERIES})
    sent = client.post(
        deliver_again_path(delivery_id), data={"next": DELIVERIES, "csrf_token": token}
    )

    assert forged.status_code == 400
    assert_back_to(sent, DELIVERIES)
    assert flashes(client) == [f"Delivery {delivery_id} will be sent again."]
    assert delivery_state(app, delivery_id) == ("pending", 0)
    assert listed(client) == []


def test_a_delivery_no_longer_failed_is_a_message_not_an_error(
    admin: FlaskClient, admin_app: Flask
) -> None:
    delivered = record_delivery(admin_app, None, "delivered")

    response = admin.post(deliver_again_path(delivered), data={"next": DELIVERIES})

    assert_back_to(response, DELIVERIES)
    [message] = flashes(admin)
    assert message.startswith(f"Delivery {delivered} was not changed:")
    assert "delivered" in message.removeprefix(f"Delivery {delivered}")
    assert delivery_state(admin_app, delivered) == ("delivered", 1)


def test_an_unknown_delivery_is_404(admin: FlaskClient) -> None:
    response = admin.post(deliver_again_path("no-such-delivery"), data={"next": DELIVERIES})

    assert response.status_code == 404
    assert "no-such-delivery" in response.get_data(as_text=True)


def test_a_page_past_the_end_lists_none_and_a_bad_page_is_400(
    admin_app: Flask, admin: FlaskClient
) -> None:
    record_delivery(admin_app, None)
    past_the_end = admin.get(f"{DELIVERIES}?page=5")
    assert past_the_end.status_code == 200
    page = " ".join(past_the_end.get_data(as_text=True).split())
    assert "Page 5 is past the end: 1 failed delivery fills 1 page." in page
    assert f'href="{DELIVERIES}">Go to the first page</a>' in page
    assert admin.get(f"{DELIVERIES}?page=zero").status_code == 400


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_deliveries_need_the_admin_login(make_app: Callable[..., Flask], method: str) -> None:
    app = make_app(ADMIN_PASSWORD=PASSWORD)
    delivery_id = record_delivery(app, None)
    path = DELIVERIES if method == "GET" else deliver_again_path(delivery_id)

    assert make_app().test_client().open(path, method=method).status_code == 403
    assert app.test_client().open(path, method=method).status_code == 401
    wrong = {"Authorization": basic_auth("nope")}
    assert app.test_client().open(path, method=method, headers=wrong).status_code == 401
    assert delivery_state(app, delivery_id) == ("failed", 8)
