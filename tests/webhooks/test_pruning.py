"""The pruner's turn also deletes delivered and failed deliveries past the retention period."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select

from docqueue_app.models import WebhookDelivery, db, utcnow
from docqueue_app.queue import DocumentQueueService
from docqueue_app.queue.pruner import prune_if_due
from docqueue_app.states import DeliveryStatus, WebhookEvent


def _delivery(status: DeliveryStatus, age_days: float) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id=str(uuid.uuid4()),
        event=WebhookEvent.COMPLETED,
        url="https://receiver.example/hook",
        payload="{}",
        status=status,
        max_attempts=8,
        created_at=utcnow() - timedelta(days=age_days),
    )


def test_old_finished_deliveries_are_pruned_and_pending_or_recent_ones_kept(app_ctx):
    kept = [
        _delivery(DeliveryStatus.PENDING, 40),  # still owed, however old
        _delivery(DeliveryStatus.DELIVERED, 10),
        _delivery(DeliveryStatus.FAILED, 10),
    ]
    db.session.add_all(
        [_delivery(DeliveryStatus.DELIVERED, 40), _delivery(DeliveryStatus.FAILED, 31)]
    )
    db.session.add_all(kept)
    db.session.commit()
    kept_ids = {delivery.delivery_id for delivery in kept}

    prune_if_due(DocumentQueueService(), retention_days=30)

    left = set(db.session.scalars(select(WebhookDelivery.delivery_id)))
    assert left == kept_ids
