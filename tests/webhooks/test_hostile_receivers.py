"""Receivers that bend HTTP, end to end: what the delivery records of them.

Each test runs a real receiver on loopback, answering raw bytes, and sends
through a cron pass; the delivery's row must say what happened, readably, on
both back ends.
"""

from __future__ import annotations

from docqueue_app.states import DeliveryStatus
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
