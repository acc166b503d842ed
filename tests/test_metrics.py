"""/metrics: Prometheus text with uploads, queue depth per status and outcomes."""

from __future__ import annotations

import re
from datetime import timedelta

from prometheus_client import CONTENT_TYPE_LATEST

from docqueue_app.models import utcnow
from docqueue_app.queue import DocumentQueueService, process_document_queue
from docqueue_app.states import DeliveryStatus
from tests.delivery_rows import record_delivery
from tests.helpers import execute_sql, upload


def metric(body: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "")
    match = re.search(rf"^{pattern} (\S+)$", body, re.MULTILINE)
    assert match, f"{name} {labels} not in metrics"
    return float(match.group(1))


def test_metrics_show_uploads_depth_and_outcomes(app, client):
    before = client.get("/metrics").get_data(as_text=True)
    uploads_before = metric(before, "docqueue_uploads_total", result="accepted")
    completed_before = metric(before, "docqueue_processing_outcomes_total", outcome="completed")
    assert upload(client, b"one two three", "a.txt").status_code == 202
    assert upload(client, b"one two three", "again.txt").status_code == 200

    response = client.get("/metrics")
    assert response.status_code == 200
    # Exactly Prometheus' own, one charset: Prometheus 3 refuses a scrape whose
    # Content-Type has a parameter twice.
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    body = response.get_data(as_text=True)
    assert metric(body, "docqueue_uploads_total", result="accepted") == uploads_before + 1
    assert metric(body, "docqueue_queue_items", status="pending") == 1
    assert metric(body, "docqueue_queue_items", status="completed") == 0

    with app.app_context():
        process_document_queue()
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "docqueue_queue_items", status="completed") == 1
    assert metric(body, "docqueue_queue_items", status="pending") == 0
    completed = metric(body, "docqueue_processing_outcomes_total", outcome="completed")
    assert completed == completed_before + 1


# What an operator alerts on (README, "Metrics and alerts"): each read from the
# database at scrape time, so whichever process answers says the same.


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_metrics_tell_a_paused_queue_from_a_stuck_one(app, client):
    assert metric(scrape(client), "docqueue_queue_paused") == 0
    with app.app_context():
        DocumentQueueService().set_paused(True)
    assert metric(scrape(client), "docqueue_queue_paused") == 1


def test_metrics_show_webhook_deliveries_failing_and_piling_up(app, client):
    body = scrape(client)
    assert metric(body, "docqueue_webhook_deliveries", status="pending") == 0
    assert metric(body, "docqueue_webhook_deliveries", status="failed") == 0
    assert metric(body, "docqueue_oldest_due_webhook_delivery_age_seconds") == 0

    now = utcnow()
    record_delivery(app, None, DeliveryStatus.PENDING, next_attempt_at=now - timedelta(minutes=10))
    record_delivery(app, None, DeliveryStatus.PENDING, next_attempt_at=now + timedelta(hours=1))
    record_delivery(app, None, DeliveryStatus.FAILED)
    record_delivery(app, None, DeliveryStatus.DELIVERED)

    body = scrape(client)
    assert metric(body, "docqueue_webhook_deliveries", status="pending") == 2
    assert metric(body, "docqueue_webhook_deliveries", status="failed") == 1
    # Only the due one has waited; the one retrying in an hour has not.
    assert 600 <= metric(body, "docqueue_oldest_due_webhook_delivery_age_seconds") < 3600


def test_metrics_show_items_whose_worker_stopped_extending_the_lease(app, client):
    with app.app_context():
        service = DocumentQueueService()
        service.submit_document("a.txt", b"one", "text/plain")
        service.submit_document("b.txt", b"two", "text/plain")
        service.claim_due_items(2, "doomed-worker")
    assert metric(scrape(client), "docqueue_expired_leases") == 0
    execute_sql(
        app,
        "UPDATE queue_items SET lease_expires_at = :past WHERE id IN "
        "(SELECT min(id) FROM queue_items)",
        past=utcnow() - timedelta(seconds=1),
    )
    assert metric(scrape(client), "docqueue_expired_leases") == 1


def test_metrics_show_how_long_ago_any_worker_last_claimed(app, client):
    never_claimed = scrape(client)
    assert not re.search(r"^docqueue_last_claim_age_seconds ", never_claimed, re.MULTILINE)
    with app.app_context():
        service = DocumentQueueService()
        service.submit_document("a.txt", b"one", "text/plain")
        service.claim_due_items(1, "worker")
    execute_sql(
        app, "UPDATE queue_attempts SET started_at = :then", then=utcnow() - timedelta(hours=1)
    )
    assert 3600 <= metric(scrape(client), "docqueue_last_claim_age_seconds") < 7200


def test_metrics_count_the_items_rescued_from_a_worker_that_died(app, client):
    before = metric(scrape(client), "docqueue_rescued_items_total")
    with app.app_context():
        service = DocumentQueueService()
        service.submit_document("a.txt", b"one", "text/plain")
        service.claim_due_items(1, "doomed-worker")
    execute_sql(app, "UPDATE queue_items SET lease_expires_at = :past", past=utcnow())
    with app.app_context():
        assert process_document_queue()["completed"] == 1  # rescued, then run again
    assert metric(scrape(client), "docqueue_rescued_items_total") == before + 1
