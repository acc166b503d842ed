"""Webhook delivery rows in the states a test needs, written as the sender leaves them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from flask import Flask

from docqueue_app.models import WebhookDelivery, db, utcnow
from docqueue_app.states import DeliveryStatus, WebhookEvent


def record_delivery(
    app: Flask,
    document_id: int | None,
    status: str = DeliveryStatus.FAILED,
    url: str = "http://127.0.0.1:9/hook",
    event: str = WebhookEvent.COMPLETED,
    created_at: datetime | None = None,
    **columns: Any,
) -> str:
    """A delivery of ``document_id``'s ``event`` to ``url``; returns its delivery id.

    A failed one has used its attempts and says why; a delivered one has its 2xx.
    """
    outcome: dict[str, Any] = {}
    if status == DeliveryStatus.FAILED:
        outcome = {"attempts": 8, "last_error": "connection refused"}
    elif status == DeliveryStatus.DELIVERED:
        outcome = {"attempts": 1, "last_status_code": 204, "delivered_at": utcnow()}
    delivery = WebhookDelivery(
        delivery_id=str(uuid.uuid4()),
        document_id=document_id,
        event=event,
        url=url,
        payload="{}",
        status=status,
        max_attempts=8,
        created_at=created_at or utcnow(),
        **{**outcome, **columns},
    )
    with app.app_context():
        db.session.add(delivery)
        db.session.commit()
        return delivery.delivery_id


def delivery_state(app: Flask, delivery_id: str) -> tuple[str, int]:
    """A delivery's status and attempts, read afresh."""
    with app.app_context():
        delivery = db.session.scalar(
            db.select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id)
        )
        return delivery.status, delivery.attempts
