"""The standalone worker (``docqueue queue worker``): threads that poll and process.

SIGTERM or SIGINT sets a stop flag: each thread finishes the document in hand,
hands its claimed but unstarted items back, and the command exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from flask import Flask, current_app

from ..database import OUTAGES, Backoff, report_failure
from .maintenance import run_maintenance
from .worker import process_document_queue

log = logging.getLogger(__name__)


def run_worker(concurrency: int, batch_size: int, poll_interval: float) -> None:
    """Work the queue until SIGTERM/SIGINT; call inside an app context."""
    app = current_app._get_current_object()
    stop = threading.Event()
    _stop_on_signals(stop)
    threads = [
        threading.Thread(
            target=_work_loop,
            args=(app, batch_size, poll_interval, stop, index == 0),
            name=f"docqueue-worker-{index}",
        )
        for index in range(concurrency)
    ]
    log.info("worker started: %d threads, batch %d", concurrency, batch_size)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.info("worker stopped")


def _work_loop(
    app: Flask, batch_size: int, poll_interval: float, stop: threading.Event, maintains: bool
) -> None:
    backoff = Backoff(first=poll_interval)
    while not stop.is_set():
        with app.app_context():
            try:
                if maintains:
                    run_maintenance()
                result = process_document_queue(batch_size, stop=stop)
            except Exception as exc:  # a database outage or hiccup must not end the worker
                report_failure(exc, "worker pass failed")
                stop.wait(backoff.next_pause())
                continue
        OUTAGES.succeeded()
        backoff.reset()
        if result["processed"]:
            log.info("processed %s", result)
        else:
            stop.wait(poll_interval)


def _stop_on_signals(stop: threading.Event) -> None:
    def request_stop(signum: int, _frame: Any) -> None:
        log.info("%s received: finishing documents in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
