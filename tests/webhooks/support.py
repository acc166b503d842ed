"""What the webhook tests share: settings, uploads, the queue drained, the lane running."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from docqueue_app.models import WebhookDelivery, db
from docqueue_app.queue import process_document_queue
from docqueue_app.webhooks.lane import DeliveryLane

SECRET = "webhook-test-secret"
ADMIN_PASSWORD = "webhook-admin"
CRON_SECRET = "webhook-cron"
RETRY_BASE_SECONDS = 0.5
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}

# Fast backoff, short timeouts, loopback receivers allowed.
WEBHOOKS: dict[str, Any] = {
    "WEBHOOK_ALLOW_PRIVATE": True,
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_TIMEOUT_SECONDS": 5,
    "RETRY_BASE_SECONDS": RETRY_BASE_SECONDS,
    "RETRY_MAX_SECONDS": 5,
    "POLL_INTERVAL": 0.1,
    "PROCESSOR": "tests.webhooks.processors:echo_or_fail",
    "ADMIN_PASSWORD": ADMIN_PASSWORD,
    "CRON_SECRET": CRON_SECRET,
}


def settings(**overrides: Any) -> dict[str, Any]:
    """The webhook tests' settings with ``overrides``."""
    return {**WEBHOOKS, **overrides}


def worker_env(
    database_url: str, webhook_url: str, max_attempts: int, timeout_seconds: float
) -> dict[str, str]:
    """The environment of a ``queue worker`` that delivers to ``webhook_url``."""
    return {
        "DATABASE_URL": database_url,
        "DOCQUEUE_SECRET_KEY": "webhook-worker",
        "DOCQUEUE_POLL_INTERVAL": "0.2",
        "DOCQUEUE_PROCESS_ISOLATION": "none",
        "DOCQUEUE_PROCESSOR": "tests.webhooks.processors:echo_or_fail",
        "DOCQUEUE_WEBHOOK_URL": webhook_url,
        "DOCQUEUE_WEBHOOK_SECRET": SECRET,
        "DOCQUEUE_WEBHOOK_ALLOW_PRIVATE": "true",
        "DOCQUEUE_WEBHOOK_MAX_ATTEMPTS": str(max_attempts),
        "DOCQUEUE_WEBHOOK_TIMEOUT_SECONDS": str(timeout_seconds),
    }


def upload_text(client: FlaskClient, text: str, callback_url: str | None = None) -> dict:
    """Upload ``text`` as a .txt file (with a callback_url when given); the document JSON."""
    form: dict[str, Any] = {"file": (io.BytesIO(text.encode()), "note.txt")}
    if callback_url is not None:
        form["callback_url"] = callback_url
    response = client.post("/api/documents", data=form, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def cancel(client: FlaskClient, document: dict) -> None:
    """Cancel the document's pending queue item, as an admin would."""
    item = document["queue_item"]["id"]
    assert client.post(f"/api/queue/items/{item}/cancel", headers=ADMIN).status_code == 200


def drain(app: Flask) -> None:
    """Process the queue until a pass finds nothing due."""
    with app.app_context():
        while process_document_queue(limit=50)["processed"]:
            pass


def deliveries(app: Flask) -> list[WebhookDelivery]:
    """Every delivery as the database holds it now, oldest first."""
    with app.app_context():
        rows = db.session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
        db.session.expunge_all()
        db.session.commit()
        return list(rows)


@contextmanager
def running_lane(app: Flask) -> Iterator[DeliveryLane]:
    """The app's webhook lane, as a worker runs it, until the block ends."""
    lane = DeliveryLane(app).start()
    try:
        yield lane
    finally:
        lane.close()
