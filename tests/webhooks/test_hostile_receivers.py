"""Receivers that bend HTTP, end to end: what the delivery records of them.

Each test runs a real receiver on loopback, answering raw bytes, and sends
through a cron pass; the delivery's row must say what happened, readably, on
both back ends.
"""

from __future__ import annotations

from docqueue_app.states import DeliveryStatus
from docqueue_app.webhooks.deliveries import DeliveryService
from docqueue_app.webhooks.lane import send_due_deliveries
from docqueue_app.webhooks.sender import ERROR_CHARS
from tests.webhooks.support import deliveries, drain, settings, upload_text


def _one_attempt(make_app, url: str):
    """Upload, process, send the delivery once (its only attempt); its row."""
    app = make_app(**settings(WEBHOOK_URL=url, WEBHOOK_MAX_ATTEMPTS=1, WEBHOOK_TIMEOUT_SECONDS=1))
    upload_text(app.test_client(), "told to a receiver that bends HTTP")
    drain(app)
    with app.app_context():
        assert send_due_deliveries() == 1
    [delivery] = deliveries(app)
    return delivery


def test_a_reason_phrase_with_nul_and_escapes_is_recorded_readably_and_short(
    make_app, raw_receiver
):
    # PostgreSQL's text refuses NUL: the result could not be written, so the
    # lease ran out and the delivery was sent again, past any maximum.
    receiver = raw_receiver(b"HTTP/1.1 500 Oops\x00\x1b[2J" + b"!" * 5000 + b"\r\n\r\n")
    delivery = _one_attempt(make_app, receiver.url())
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
        DeliveryStatus.FAILED,
        1,
        500,
    )
    assert delivery.last_error.startswith("HTTP 500 Oops\\x00\\x1b[2J!!!")
    assert len(delivery.last_error) == ERROR_CHARS and delivery.last_error.endswith("…")
    assert receiver.requests == 1


def test_bytes_that_are_no_http_are_a_failed_attempt_recorded_readably(make_app, raw_receiver):
    receiver = raw_receiver(b"\x00\x01SSH-2.0-OpenSSH\r\n")
    delivery = _one_attempt(make_app, receiver.url())
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
        DeliveryStatus.FAILED,
        1,
        None,
    )
    assert delivery.last_error == "BadStatusLine: \\x00\\x01SSH-2.0-OpenSSH\\r\\n"


def _first_attempt_then_due_in(make_app, receiver, **overrides) -> float:
    """Send a delivery's first attempt to ``receiver``; the seconds until its next is due."""
    app = make_app(**settings(WEBHOOK_URL=receiver.url(), **overrides))
    upload_text(app.test_client(), "told to a receiver that asks for time")
    drain(app)
    with app.app_context():
        assert send_due_deliveries() == 1
        due_in = DeliveryService().seconds_until_due()
    [delivery] = deliveries(app)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
        DeliveryStatus.PENDING,
        1,
        429,
    )
    return due_in


def test_a_receiver_asking_to_retry_after_a_while_is_left_alone_that_long(make_app, receiver):
    receiver.answers = [429]
    receiver.retry_after = "120"
    due_in = _first_attempt_then_due_in(make_app, receiver, RETRY_MAX_SECONDS=600)
    assert due_in > 100  # the backoff alone: 0.5 s


def test_a_retry_after_beyond_the_queues_longest_backoff_waits_only_that(make_app, receiver):
    receiver.answers = [429]
    receiver.retry_after = "Wed, 21 Oct 2099 07:28:00 GMT"
    due_in = _first_attempt_then_due_in(make_app, receiver, RETRY_MAX_SECONDS=600)
    assert 500 < due_in <= 600
