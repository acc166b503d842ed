"""Which outcomes owe an event, recorded in their own transaction (no receiver needed)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import timedelta

import pytest

from docqueue_app.models import WebhookDelivery, db, utcnow
from docqueue_app.queue import DocumentQueueService, Outcome
from docqueue_app.states import WebhookEvent
from tests.helpers import backend_name, execute_sql, statements_at_the_driver, statements_run
from tests.webhooks.support import deliveries, drain, settings, upload_text

HOOK = "https://receiver.example/hook"
RESULT = {"text": "three little words", "title": None, "page_count": 1, "metadata": {}}


def test_a_worker_lost_on_the_last_attempt_owes_the_failed_event(make_app):
    app = make_app(**settings(WEBHOOK_URL=HOOK, MAX_ATTEMPTS=1))
    with app.app_context():
        service = DocumentQueueService()
        document, _ = service.submit_document("lost.txt", b"its worker dies", "text/plain")
        assert len(service.claim_due_items(1, "doomed-worker")) == 1
        execute_sql(app, "UPDATE queue_items SET lease_expires_at = :t", t=utcnow() - timedelta(1))
        assert service.rescue_expired_leases() == 1

    [delivery] = deliveries(app)
    assert (delivery.event, delivery.document_id, delivery.url) == (
        WebhookEvent.FAILED,
        document.id,
        HOOK,
    )
    with app.app_context():
        shown = json.loads(_payload(delivery.delivery_id))["document"]
    assert shown["status"] == "failed"
    assert shown["error"].startswith("worker lost")


def test_an_item_folded_into_a_newer_one_owes_no_event(make_app):
    app = make_app(**settings(WEBHOOK_URL=HOOK))
    with app.app_context():
        service = DocumentQueueService()
        document, _ = service.submit_document(
            "twice.txt", b"reprocessed while it ran", "text/plain"
        )
        [item] = service.claim_due_items(1, "busy-worker")
        service.enqueue(document.id, "reprocess")  # queued behind the running item
        assert service.mark_failed(item, "a transient error")  # folds into the newer item
    assert deliveries(app) == []


def test_without_a_global_url_only_documents_with_a_callback_url_owe_deliveries(make_app, receiver):
    app = make_app(**settings(WEBHOOK_URL=None))
    client = app.test_client()
    callback = receiver.url("/callback")
    completed = upload_text(client, "completed, with a callback", callback_url=callback)
    failed = upload_text(client, "FAIL, with a callback", callback_url=callback)
    upload_text(client, "completed, with nowhere to report")
    drain(app)
    owed = {(row.document_id, row.event, row.url) for row in deliveries(app)}
    assert owed == {
        (completed["id"], WebhookEvent.COMPLETED, callback),
        (failed["id"], WebhookEvent.FAILED, callback),
    }


def test_outcomes_with_no_webhook_configured_cost_no_query_of_their_own(make_app):
    app = make_app(**settings(WEBHOOK_URL=None))
    with app.app_context():
        service = DocumentQueueService()
        for n in range(5):
            service.submit_document(f"{n}.txt", b"document %d" % n, "text/plain")
        items = service.claim_due_items(5, "worker")
        with statements_run(app) as sent:
            assert service.record_outcomes([Outcome.success(i, RESULT) for i in items]) == 5
    webhook_statements = [
        sql for sql, _ in sent if "webhook_deliveries" in sql or "callback_url IS NOT NULL" in sql
    ]
    assert webhook_statements == []
    assert deliveries(app) == []


def test_a_callback_url_the_claim_did_not_see_still_gets_its_delivery(make_app):
    # A pass whose claim saw no callback_url records its successes alone (PostgreSQL:
    # one statement in autocommit). callback_url is set at upload and never changed;
    # written behind the service's back all the same, the completion says so and the
    # delivery is recorded.
    app = make_app(**settings(WEBHOOK_URL=None))
    with app.app_context():
        service = DocumentQueueService()
        document, _ = service.submit_document("late.txt", b"its callback comes late", "text/plain")
        [item] = service.claim_due_items(1, "worker")
        execute_sql(app, "UPDATE documents SET callback_url = :url", url=HOOK)
        assert service.record_outcomes([Outcome.success(item, RESULT)]) == 1

    [delivery] = deliveries(app)
    assert (delivery.event, delivery.document_id, delivery.url) == (
        WebhookEvent.COMPLETED,
        document.id,
        HOOK,
    )


def _payload(delivery_id: str) -> str:
    return db.session.scalar(
        db.select(WebhookDelivery.payload).where(WebhookDelivery.delivery_id == delivery_id)
    )


@contextmanager
def completions_in_a_transaction(app):
    """Per statement that completed items during the block: whether it ran inside a
    transaction (False: in autocommit, a transaction of its own)."""
    seen: list[bool] = []

    def record(driver, statement: str, _parameters: object, _binary: bool) -> None:
        if "UPDATE queue_items" in statement and "'completed'" in statement:
            autocommit = getattr(driver, "autocommit", None)  # psycopg's
            seen.append(driver.in_transaction if autocommit is None else not autocommit)

    with statements_at_the_driver(app, record):
        yield seen


@pytest.mark.parametrize("webhook", ["global", "callback", "none"])
def test_completions_commit_together_with_the_deliveries_they_owe(make_app, receiver, webhook):
    # A pass of successes that owes no webhook is one statement on PostgreSQL,
    # run in autocommit (no BEGIN and COMMIT round trips); one that owes a
    # delivery commits it with the completion, so that no event is lost.
    app = make_app(**settings(WEBHOOK_URL=receiver.url("/all") if webhook == "global" else None))
    callback = receiver.url("/one") if webhook == "callback" else None
    upload_text(app.test_client(), "a document that completes", callback_url=callback)
    with completions_in_a_transaction(app) as seen:
        drain(app)

    alone = webhook == "none" and backend_name(app) == "postgresql"
    assert seen == [not alone]
    assert len(deliveries(app)) == (0 if webhook == "none" else 1)
