"""At least once: a ``queue worker`` killed mid-delivery delivers it after its restart.

The worker records the outcome (and its delivery, in the same transaction),
starts the delivery and is killed with SIGKILL while the receiver holds the
request unanswered. The delivery's lease then runs out, and the restarted
worker sends it again, under the same delivery id, to the receiver now answering.
"""

from __future__ import annotations

import json

import pytest

from docqueue_app.states import DeliveryStatus
from tests.e2e.server import start_worker, stop_worker
from tests.helpers import wait_until
from tests.webhooks.support import deliveries, upload_text, worker_env

TIMEOUT_SECONDS = 2.5  # the lease: twice this


# 1: the attempt killed was the last allowed, and the delivery is still sent
# again (one past the maximum), since the killed one may never have arrived.
@pytest.mark.parametrize("max_attempts", [8, 1])
def test_a_worker_killed_mid_delivery_delivers_it_after_its_restart(
    make_app, database_url, receiver, tmp_path, max_attempts
):
    env = worker_env(database_url, receiver.url(), max_attempts, TIMEOUT_SECONDS)
    log = tmp_path / "worker.log"
    app = make_app()
    receiver.hanging.set()
    worker = start_worker(env, log)
    try:
        document = upload_text(app.test_client(), "owed to a receiver that hangs")
        wait_until(lambda: receiver.requests, timeout=60)  # the attempt is in flight
        worker.kill()
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()

    [owed] = deliveries(app)
    assert (owed.status, owed.attempts) == (DeliveryStatus.PENDING, 1)
    assert owed.locked_until is not None  # the dead worker's lease, not yet run out
    receiver.hanging.clear()
    receiver.released.set()

    worker = start_worker(env, log)
    try:
        wait_until(lambda: deliveries(app)[0].status == DeliveryStatus.DELIVERED, timeout=90)
    finally:
        assert stop_worker(worker) == 0, log.read_text()

    [delivered] = deliveries(app)
    assert delivered.attempts == 2
    assert receiver.ids() == [owed.delivery_id] * 2
    last = json.loads(receiver.requests[-1].body)
    assert last["event"] == "document.completed"
    assert last["document"]["id"] == document["id"]
