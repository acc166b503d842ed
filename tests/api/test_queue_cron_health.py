"""Queue stats, the cron endpoint and the health probes."""

from __future__ import annotations

import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

from docqueue_app import create_app
from docqueue_app.queue.scheduler import STALE_AFTER_INTERVALS, get_scheduler
from tests.api import assert_json_error
from tests.conftest import BASE_CONFIG
from tests.helpers import upload

CRON_SECRET = "cron-secret"
UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:1/nope"


# -- stats ------------------------------------------------------------------------


def test_queue_stats_count_items_and_say_not_paused(client: FlaskClient) -> None:
    upload(client, b"one", "one.txt")
    upload(client, b"two", "two.txt")

    stats = client.get("/api/queue/stats").get_json()

    assert stats["pending"] == 2
    assert stats["total"] == 2
    assert stats["in_progress"] == stats["completed"] == stats["failed"] == 0
    assert stats["cancelled"] == 0
    assert stats["oldest_pending_age_seconds"] >= 0
    assert stats["paused"] is False


# -- cron -------------------------------------------------------------------------


@pytest.fixture
def cron_client(make_app) -> FlaskClient:
    return make_app(CRON_SECRET=CRON_SECRET).test_client()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_cron_is_403_when_no_secret_is_configured(client: FlaskClient, method: str) -> None:
    response = client.open(
        "/api/cron/process-queue", method=method, headers={"Authorization": "Bearer x"}
    )

    assert_json_error(response, 403, "Forbidden")


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {CRON_SECRET}", f"Bearer {CRON_SECRET}!"]
)
def test_cron_is_401_without_the_right_secret(
    cron_client: FlaskClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    response = cron_client.post("/api/cron/process-queue", headers=headers)

    assert_json_error(response, 401, "Unauthorized")


@pytest.mark.parametrize(
    ("secret", "sent"),
    [
        ("sécret", "sécret".encode()),  # curl: UTF-8
        ("sécret", "sécret".encode("latin-1")),  # Python's http.client: Latin-1
        ("sécret", b"s?cret"),
        ("sécret", b""),
        ("n€w", "n€w".encode()),
        ("n€w", b"n?w"),
    ],
    ids=["utf8", "latin1", "wrong", "empty", "utf8-only", "utf8-only-wrong"],
)
def test_a_non_ascii_cron_secret_is_matched_as_clients_send_it(
    make_app, secret: str, sent: bytes
) -> None:
    client = make_app(CRON_SECRET=secret).test_client()
    # WSGI hands a header's bytes over decoded as Latin-1.
    authorization = b"Bearer " + sent if sent else b"Bearer"

    response = client.post(
        "/api/cron/process-queue", headers={"Authorization": authorization.decode("latin-1")}
    )

    right = sent in (secret.encode(), secret.encode("latin-1", errors="ignore"))
    assert response.status_code == (200 if right and sent else 401)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_cron_processes_the_queue_once(cron_client: FlaskClient, method: str) -> None:
    document_id = upload(cron_client, b"processed by cron").get_json()["id"]

    response = cron_client.open(
        "/api/cron/process-queue",
        method=method,
        headers={"Authorization": f"Bearer {CRON_SECRET}"},
    )

    assert response.status_code == 200
    assert response.get_json() == {"processed": 1, "completed": 1, "failed": 0, "retried": 0}
    assert cron_client.get(f"/api/documents/{document_id}").get_json()["status"] == "completed"


# -- health -----------------------------------------------------------------------


def test_healthz_is_ok_when_the_database_answers(client: FlaskClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_readyz_reports_a_disabled_scheduler_as_ready(client: FlaskClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "scheduler": "disabled"}


def scheduler_app(make_app, seconds_since_tick: float) -> Flask:
    """An app whose scheduler is enabled and last ticked that long ago (and never starts)."""
    app = make_app(SCHEDULER_ENABLED=True, POLL_INTERVAL=1.0)
    get_scheduler(app).last_tick = time.monotonic() - seconds_since_tick
    return app


def test_readyz_is_ok_while_the_scheduler_ticks(make_app) -> None:
    response = scheduler_app(make_app, seconds_since_tick=0).test_client().get("/readyz")

    assert response.status_code == 200
    assert response.get_json()["scheduler"] == "ok"


def test_readyz_is_503_when_the_scheduler_is_stale(make_app) -> None:
    app = scheduler_app(make_app, seconds_since_tick=STALE_AFTER_INTERVALS + 1)

    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json() == {"status": "error", "database": "ok", "scheduler": "stale"}


@pytest.fixture
def unreachable_client() -> FlaskClient:
    # No database fixture: nothing listens on port 1.
    return create_app({**BASE_CONFIG, "DATABASE_URL": UNREACHABLE_DATABASE}).test_client()


def test_healthz_is_503_when_the_database_is_unreachable(unreachable_client: FlaskClient) -> None:
    response = unreachable_client.get("/healthz")

    assert response.status_code == 503
    assert response.get_json() == {"status": "error", "database": "unreachable"}


def test_readyz_is_503_when_the_database_is_unreachable(unreachable_client: FlaskClient) -> None:
    response = unreachable_client.get("/readyz")

    assert response.status_code == 503
    assert response.get_json() == {
        "status": "error",
        "database": "unreachable",
        "scheduler": "disabled",
    }
