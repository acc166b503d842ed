"""/metrics: Prometheus text with uploads, queue depth per status and outcomes."""

from __future__ import annotations

import re

from prometheus_client import CONTENT_TYPE_LATEST

from docqueue_app.queue import process_document_queue
from tests.helpers import upload


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
