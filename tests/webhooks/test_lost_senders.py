"""A delivery whose sender dies on every attempt: sent WEBHOOK_MAX_ATTEMPTS + 1 times, then failed.

A killed attempt may never have reached the receiver, so a delivery whose lane
died during its last attempt is sent once more; but a sender that dies every
time (OOM-killed, SIGKILLed by a supervisor, hung past its lease) must not make
it be sent for ever. Once that extra attempt is lost too, the next lane (or
cron call) that claims ends it ``failed``, saying why, without sending it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flask import Flask

from docqueue_app.states import DeliveryStatus
from docqueue_app.webhooks.deliveries import DeliveryService, lease_seconds
from tests.e2e.server import start_worker, stop_worker
from tests.helpers import wait_until
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import (
    ADMIN,
    ADMIN_PASSWORD,
    CRON_SECRET,
    deliveries,
    drain,
    settings,
    upload_text,
    worker_env,
)

MAX_ATTEMPTS = 2
TIMEOUT_SECONDS = 2.0  # the lease: twice this
LOST_FOR_GOOD = (
    f"its sender was lost during attempt {MAX_ATTEMPTS + 1} of {MAX_ATTEMPTS} (killed or hung);"
    " not sent again: deliver it again from /admin/deliveries"
)


def kill_mid_attempt(env: dict[str, str], log: Path, receiver: Receiver, attempt: int) -> None:
    """Start a worker and SIGKILL it once its lane's ``attempt``-th POST reached the receiver."""
    worker = start_worker(env, log)
    try:
        wait_until(lambda: len(receiver.requests) >= attempt, timeout=60)
    finally:
        worker.kill()
        worker.wait(timeout=10)
    assert len(receiver.requests) == attempt, "one POST per attempt"


def seen_as_failed(app: Flask, document_id: int) -> bool:
    listed = app.test_client().get(f"/api/documents/{document_id}/deliveries").get_json()
    return [d["status"] for d in listed["items"]] == [DeliveryStatus.FAILED]


def test_a_delivery_whose_lane_dies_on_every_attempt_ends_failed(
    make_app, database_url, receiver, tmp_path
):
    env = worker_env(database_url, receiver.url(), MAX_ATTEMPTS, TIMEOUT_SECONDS)
    log = tmp_path / "worker.log"
    app = make_app(ADMIN_PASSWORD=ADMIN_PASSWORD)
    receiver.hanging.set()  # every attempt reaches the receiver, which answers nothing
    document = upload_text(app.test_client(), "owed to a receiver its senders never outlive")
    for attempt in range(1, MAX_ATTEMPTS + 2):
        kill_mid_attempt(env, log, receiver, attempt)
    [lost] = deliveries(app)
    assert (lost.status, lost.attempts) == (DeliveryStatus.PENDING, MAX_ATTEMPTS + 1)
    # From here on the receiver would answer 204 at once: a further POST would deliver it.
    receiver.hanging.clear()
    receiver.released.set()

    worker = start_worker(env, log)
    try:
        wait_until(lambda: deliveries(app)[0].status != DeliveryStatus.PENDING, timeout=60)
        once_past_the_last = [lost.delivery_id] * (MAX_ATTEMPTS + 1)
        assert receiver.ids() == once_past_the_last, "sent again past its extra attempt"
        assert seen_as_failed(app, document["id"])
        # Another lease later, a new document's delivery goes through the same lane,
        # and still nothing more of the lost one was sent.
        time.sleep(lease_seconds(TIMEOUT_SECONDS))
        marker = upload_text(app.test_client(), "sent after the lost one was given up")
        wait_until(lambda: len(receiver.requests) > MAX_ATTEMPTS + 1, timeout=60)
        assert receiver.ids() == [*once_past_the_last, receiver.ids()[-1]]
        assert json.loads(receiver.requests[-1].body)["document"]["id"] == marker["id"]
    finally:
        assert stop_worker(worker) == 0, log.read_text()

    [failed, _] = deliveries(app)
    assert (failed.status, failed.attempts, failed.last_error) == (
        DeliveryStatus.FAILED,
        MAX_ATTEMPTS + 1,
        LOST_FOR_GOOD,
    )
    assert (failed.locked_by, failed.locked_until) == (None, None)
    assert_reported_failed(app, document["id"], failed.delivery_id)
    given_up = [line for line in log.read_text().splitlines() if "its sender was lost" in line]
    assert given_up == [
        f"WARNING webhook {failed.delivery_id} to {receiver.url()},"
        f" attempt {MAX_ATTEMPTS + 1} of {MAX_ATTEMPTS}:"
        " its sender was lost (killed or hung); it failed for good"
    ], log.read_text()

    # An admin's "Deliver again" still sends it, under the same delivery id.
    with app.app_context():
        DeliveryService().deliver_again(failed.delivery_id)
    worker = start_worker(env, log)
    try:
        wait_until(lambda: deliveries(app)[0].status == DeliveryStatus.DELIVERED, timeout=60)
    finally:
        assert stop_worker(worker) == 0, log.read_text()
    assert receiver.ids().count(failed.delivery_id) == MAX_ATTEMPTS + 2


def assert_reported_failed(app: Flask, document_id: int, delivery_id: str) -> None:
    """Failed, with its reason, wherever a user looks: the API, the console, /metrics."""
    client = app.test_client()
    [listed] = client.get(f"/api/documents/{document_id}/deliveries").get_json()["items"]
    assert (listed["status"], listed["last_error"]) == (DeliveryStatus.FAILED, LOST_FOR_GOOD)
    page = client.get("/admin/deliveries", headers=ADMIN).get_data(as_text=True)
    assert f'data-delivery="{delivery_id}"' in page
    assert LOST_FOR_GOOD in page
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'docqueue_webhook_deliveries{status="failed"} 1.0' in metrics


def test_a_cron_call_gives_up_a_delivery_whose_senders_were_all_lost(make_app, receiver):
    """Cron hosts have no lane: their calls give the delivery up as a lane would."""
    app = make_app(
        **settings(
            WEBHOOK_URL=receiver.url(),
            WEBHOOK_MAX_ATTEMPTS=MAX_ATTEMPTS,
            WEBHOOK_TIMEOUT_SECONDS=0.25,
        )
    )
    client = app.test_client()
    document = upload_text(client, "owed, its senders lost")
    drain(app)
    with app.app_context():
        # Senders that claim it and die before they send, each once the last one's
        # lease ran out (as a lane killed mid-attempt leaves it).
        for _ in range(MAX_ATTEMPTS + 1):
            wait_until(lambda: DeliveryService().seconds_until_due() == 0, timeout=10)
            assert len(DeliveryService().claim_due(1, "a sender killed at once")) == 1
        wait_until(lambda: DeliveryService().seconds_until_due() == 0, timeout=10)

    cron = {"Authorization": f"Bearer {CRON_SECRET}"}
    assert client.post("/api/cron/process-queue", headers=cron).status_code == 200
    assert seen_as_failed(app, document["id"])
    [listed] = client.get(f"/api/documents/{document['id']}/deliveries").get_json()["items"]
    assert (listed["attempts"], listed["last_error"]) == (MAX_ATTEMPTS + 1, LOST_FOR_GOOD)
    assert receiver.requests == []
