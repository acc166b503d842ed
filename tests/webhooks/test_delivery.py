"""Webhooks end to end in one process (SPEC §8): recorded with the outcome, sent by the lane.

Each test runs a real HTTP receiver on loopback and checks what it received,
as a user's receiver would: the body, the headers and the signature.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from docqueue_app.queue import DocumentQueueService, InvalidTransition
from docqueue_app.queue.submissions import NewDocument
from docqueue_app.states import DeliveryStatus
from docqueue_app.webhooks.deliveries import DeliveryService
from docqueue_app.webhooks.lane import send_due_deliveries
from tests.helpers import wait_until
from tests.webhooks.receiver import signature_is_valid
from tests.webhooks.support import (
    CRON_SECRET,
    RETRY_BASE_SECONDS,
    SECRET,
    cancel,
    deliveries,
    drain,
    running_lane,
    settings,
    upload_text,
)

EVENTS = ("document.completed", "document.failed", "document.cancelled")


def _delivered(app, count):
    rows = deliveries(app)
    return len(rows) == count and all(row.status == DeliveryStatus.DELIVERED for row in rows)


def test_completed_failed_and_cancelled_documents_each_send_their_signed_event(make_app, receiver):
    app = make_app(**settings(WEBHOOK_URL=receiver.url()))
    client = app.test_client()
    completed = upload_text(client, "hello webhook receivers")
    failed = upload_text(client, "FAIL for good")
    cancelled = upload_text(client, "withdrawn before it ran")
    cancel(client, cancelled)
    drain(app)
    with running_lane(app):
        wait_until(lambda: _delivered(app, 3))

    assert len(receiver.requests) == 3
    received = {json.loads(request.body)["event"]: request for request in receiver.requests}
    assert set(received) == set(EVENTS)
    for event, document in zip(EVENTS, (completed, failed, cancelled), strict=True):
        request = received[event]
        body = json.loads(request.body)
        assert set(body) == {"id", "event", "created_at", "document"}
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Docqueue-Event"] == event
        assert request.headers["X-Docqueue-Delivery"] == body["id"]
        assert request.headers["User-Agent"].startswith("docqueue/")
        assert signature_is_valid(SECRET, request)
        assert not signature_is_valid("another secret", request)
        assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None
        # The document as the API shows it now: the state its outcome wrote.
        assert body["document"] == client.get(f"/api/documents/{document['id']}").get_json()
    assert received["document.completed"].body.count(b'"status":"completed"') == 2
    assert json.loads(received["document.completed"].body)["document"]["word_count"] == 3
    assert json.loads(received["document.failed"].body)["document"]["error"] == (
        "refused on purpose"
    )
    assert json.loads(received["document.cancelled"].body)["document"]["status"] == "cancelled"
    rows = deliveries(app)
    assert [(row.attempts, row.last_status_code) for row in rows] == [(1, 204)] * 3
    assert len({row.delivery_id for row in rows}) == 3


def test_a_receiver_answering_500_twice_gets_three_attempts_of_one_delivery_with_growing_gaps(
    make_app, receiver
):
    receiver.answers = [500, 500]
    app = make_app(**settings(WEBHOOK_URL=receiver.url()))
    upload_text(app.test_client(), "third time lucky")
    drain(app)
    with running_lane(app):
        wait_until(lambda: _delivered(app, 1))

    first, second, third = receiver.requests
    [delivery] = deliveries(app)
    assert receiver.ids() == [delivery.delivery_id] * 3
    assert first.body == second.body == third.body  # frozen when the outcome was written
    first_gap, second_gap = second.at - first.at, third.at - second.at
    assert first_gap >= RETRY_BASE_SECONDS
    assert second_gap > first_gap
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (3, 204, None)


def test_a_receiver_that_never_answers_does_not_hold_up_other_documents(make_app, receiver):
    receiver.hanging.set()
    app = make_app(**settings(WEBHOOK_URL=receiver.url(), WEBHOOK_TIMEOUT_SECONDS=120))
    client = app.test_client()
    with running_lane(app):
        try:
            upload_text(client, "its receiver hangs")
            drain(app)
            wait_until(lambda: receiver.requests)  # in flight, and it will not answer

            with app.app_context():
                others = DocumentQueueService().submit_documents(
                    [
                        NewDocument(f"{n}.txt", b"another document %d" % n, "text/plain")
                        for n in range(100)
                    ]
                )
            drain(app)
            statuses = {
                client.get(f"/api/documents/{document.id}").get_json()["status"]
                for document, _created in others
            }
            assert statuses == {"completed"}
            rows = deliveries(app)
            assert len(rows) == 101  # each outcome recorded its delivery
            assert {row.status for row in rows} == {DeliveryStatus.PENDING}
            assert rows[0].locked_until is not None  # still in flight
        finally:
            receiver.released.set()  # the lane's close waits for the senders


@pytest.mark.parametrize(
    "host, reason",
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("localhost", "localhost resolves to"),
    ],
)
def test_a_private_destination_fails_without_being_sent(make_app, receiver, host, reason):
    app = make_app(**settings(WEBHOOK_ALLOW_PRIVATE=False, WEBHOOK_URL=receiver.url(host=host)))
    client = app.test_client()
    upload_text(client, "nobody may hear of this")
    # A cron call processes the queue, then sends the due deliveries.
    response = client.post(
        "/api/cron/process-queue", headers={"Authorization": f"Bearer {CRON_SECRET}"}
    )
    assert response.get_json() == {"processed": 1, "completed": 1, "failed": 0, "retried": 0}

    [delivery] = deliveries(app)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
    assert "not sent" in delivery.last_error
    assert reason in delivery.last_error and "loopback" in delivery.last_error
    assert receiver.requests == []


def test_a_global_url_and_a_callback_url_get_two_deliveries_with_two_ids(make_app, receiver):
    app = make_app(**settings(WEBHOOK_SECRET=None, WEBHOOK_URL=receiver.url("/global")))
    client = app.test_client()
    document = upload_text(client, "two receivers", callback_url=receiver.url("/callback"))
    drain(app)
    with app.app_context():
        assert send_due_deliveries() == 2

    assert sorted(request.path for request in receiver.requests) == ["/callback", "/global"]
    ids = receiver.ids()
    assert len(set(ids)) == 2
    assert sorted(ids) == sorted(json.loads(request.body)["id"] for request in receiver.requests)
    assert all("X-Docqueue-Signature" not in request.headers for request in receiver.requests)
    bodies = [json.loads(request.body)["document"] for request in receiver.requests]
    assert [body["callback_url"] for body in bodies] == [receiver.url("/callback")] * 2
    assert {(row.url, row.document_id) for row in deliveries(app)} == {
        (receiver.url("/global"), document["id"]),
        (receiver.url("/callback"), document["id"]),
    }


def test_deliver_again_sends_a_failed_delivery_under_the_same_id(make_app, receiver):
    receiver.default = 500
    app = make_app(
        **settings(WEBHOOK_URL=receiver.url(), WEBHOOK_MAX_ATTEMPTS=2, RETRY_BASE_SECONDS=0.05)
    )
    upload_text(app.test_client(), "delivered at last")
    drain(app)
    with running_lane(app):
        wait_until(lambda: deliveries(app)[0].status == DeliveryStatus.FAILED)
        [failed] = deliveries(app)
        assert (failed.attempts, failed.last_status_code) == (2, 500)
        assert len(receiver.requests) == 2

        receiver.default = 204
        with app.app_context():
            again = DeliveryService().deliver_again(failed.delivery_id)
            assert (again.status, again.attempts) == (DeliveryStatus.PENDING, 0)
        wait_until(lambda: _delivered(app, 1))

    assert receiver.ids() == [failed.delivery_id] * 3
    with app.app_context():
        with pytest.raises(InvalidTransition):
            DeliveryService().deliver_again(failed.delivery_id)  # delivered: nothing to redo
        with pytest.raises(LookupError):
            DeliveryService().deliver_again("no-such-delivery")


def test_a_retry_owes_no_event(make_app, receiver):
    app = make_app(**settings(WEBHOOK_URL=receiver.url()))
    document = upload_text(app.test_client(), "FLAKY: fails once, is tried again")
    drain(app)
    shown = app.test_client().get(f"/api/documents/{document['id']}").get_json()
    assert shown["queue_item"]["status"] == "pending"  # waiting for its retry
    assert deliveries(app) == []
