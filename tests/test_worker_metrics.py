"""A standalone worker's own counters, served on ``--metrics-port`` for Prometheus.

The web app's /metrics counts what gunicorn's processes did; a host that processes
with ``docqueue queue worker`` alone was blind to its outcomes and processing times.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from docqueue_app.queue import DocumentQueueService
from tests.e2e.server import BIN, ROOT, free_port, start_worker, stop_worker, wait_for
from tests.helpers import close_connections


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "DOCQUEUE_SECRET_KEY": "worker-metrics",
        "DOCQUEUE_POLL_INTERVAL": "0.2",
        "DOCQUEUE_PROCESS_ISOLATION": "none",
    }


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the worker's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def outcome(samples: dict, name: str) -> float:
    return samples[("docqueue_processing_outcomes_total", (("outcome", name),))]


def all_finished(app) -> bool:
    with app.app_context():
        stats = DocumentQueueService().get_queue_stats()
    close_connections(app)
    return stats["pending"] == 0 and stats["in_progress"] == 0


def test_a_worker_serves_its_outcomes_and_processing_times(app, env, tmp_path):
    with app.app_context():
        service = DocumentQueueService()
        service.submit_document("fine.txt", b"one two three", "text/plain")
        service.submit_document("broken.pdf", b"not a pdf at all", "application/pdf")
    port = free_port()
    worker = start_worker(env, tmp_path / "worker.log", "--metrics-port", str(port))
    try:
        wait_for(lambda: worker.poll() is not None or all_finished(app), "both to finish")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        samples = scrape(port)
    finally:
        assert stop_worker(worker) == 0

    assert outcome(samples, "completed") == 1
    assert outcome(samples, "failed") == 1
    assert outcome(samples, "retried") == 0
    assert samples[("docqueue_processing_seconds_count", ())] == 2
    assert samples[("docqueue_rescued_items_total", ())] == 0
    log = (tmp_path / "worker.log").read_text()
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log
    assert "Traceback" not in log


def test_a_taken_metrics_port_stops_the_worker_with_one_line(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        finished = subprocess.run(
            [str(BIN / "docqueue"), "queue", "worker", "--metrics-port", str(port)],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert finished.returncode == 2
    assert f"127.0.0.1:{port}" in finished.stderr
    assert "Address already in use" in finished.stderr
    assert "Traceback" not in finished.stderr
