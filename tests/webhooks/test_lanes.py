"""Who sends deliveries: the host's running in-app scheduler, also while the queue is paused."""

from __future__ import annotations

import json

from docqueue_app.queue.scheduler import get_scheduler
from tests.helpers import wait_until
from tests.webhooks.support import ADMIN, cancel, settings, upload_text


def test_the_running_scheduler_sends_deliveries_while_the_queue_is_paused(make_app, receiver):
    app = make_app(**settings(SCHEDULER_ENABLED=True, WEBHOOK_URL=receiver.url()))
    client = app.test_client()
    scheduler = get_scheduler(app)
    try:
        # The first request starts the scheduler, and with it the host's webhook lane.
        assert client.post("/api/queue/pause", headers=ADMIN).get_json() == {"paused": True}
        cancel(client, upload_text(client, "withdrawn while the queue is paused"))
        wait_until(lambda: receiver.requests)
    finally:
        scheduler.shutdown()

    [request] = receiver.requests
    assert json.loads(request.body)["event"] == "document.cancelled"
    assert client.get("/api/queue/stats").get_json()["paused"] is True


def test_a_queue_process_command_sends_the_due_deliveries_after_its_pass(make_app, receiver):
    app = make_app(**settings(WEBHOOK_URL=receiver.url()))
    upload_text(app.test_client(), "processed by a cron job")
    result = app.test_cli_runner().invoke(args=["queue", "process"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"processed": 1, "completed": 1, "failed": 0, "retried": 0}
    [request] = receiver.requests
    assert json.loads(request.body)["event"] == "document.completed"
