"""The standalone worker (``docqueue queue worker``): threads that claim and process.

Each thread runs passes back to back while they find work; idle, the threads
sleep on the process's ``WakeSignal``: a commit that makes work due wakes one
at once (``notify``), and one of them polls every POLL_INTERVAL as the fallback,
so an idle worker asks the database once per interval whatever its concurrency.

Beside them, the webhook lane (``webhooks.lane``) sends the deliveries due.

SIGTERM or SIGINT sets a stop flag: each thread finishes the document in hand,
hands its claimed but unstarted items back, the lane finishes the deliveries in
flight, and the command exits 0.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app

from ..database import OUTAGES, Backoff, report_failure, report_success
from ..models import db
from ..webhooks.lane import DeliveryLane
from .maintenance import run_maintenance
from .notify import WakeSignal, listen_for_work
from .worker import process_document_queue

log = logging.getLogger(__name__)

# What a pass that failed returns to ``work_until_idle``, once it has paused.
FAILED_PASS = -1
# A pass as the log names it when it fails (the scheduler's too).
QUEUE_PASS = "queue pass"


def run_worker(
    concurrency: int,
    batch_size: int,
    poll_interval: float,
    stop: threading.Event | None = None,
) -> None:
    """Work the queue until SIGTERM/SIGINT; call inside an app context.

    ``stop`` is a flag signals already set during start-up (see
    ``cli.stop_flag_set_by_signals``): when it is set, the worker ends before
    it claims anything.
    """
    app = current_app._get_current_object()
    stop = stop or threading.Event()
    wakes = WakeSignal()
    _stop_on_signals(stop, wakes)
    if stop.is_set():
        log.info("stop requested during start-up: exiting before any claim")
        return
    listener = listen_for_work(db.engine.url, wakes.wake)
    threads = [
        threading.Thread(
            target=_work_loop,
            args=(app, batch_size, poll_interval, stop, wakes),
            name=f"docqueue-worker-{index}",
        )
        for index in range(concurrency)
    ]
    log.info("worker started: %d threads, batch %d", concurrency, batch_size)
    for thread in threads:
        thread.start()
    lane = DeliveryLane(app, stop).start()
    for thread in threads:
        thread.join()
    lane.close()
    listener.close()
    log.info("worker stopped")


def work_until_idle(
    run_pass: Callable[[bool], int],
    wakes: WakeSignal,
    batch_size: int,
    stop: threading.Event,
    woken: bool = False,
    look_every: float = 0.0,
) -> int:
    """Run passes while they find work; returns the wake generation the idle pass began with.

    ``run_pass(look_first)`` processes one batch and returns how many documents
    it processed, or FAILED_PASS when it failed (the database away) and has
    paused: another pass follows, which polls first, since what was due when it
    failed is due still (the look after the LISTEN connection came back, say).
    A pass that expects work claims without polling first, which
    saves a round trip: the first after a wake (``woken``), and one after a
    full batch, unless ``look_every`` seconds have passed since the loop last
    polled. The polls rescue expired leases, so a dead worker's items wait no
    longer under load than when idle (one poll per interval). A full batch
    means more may be due, so it wakes another loop to help. A wake that came
    during an empty pass runs one more: its work may have been committed after
    the pass looked.
    """
    look_first = not woken
    looked_at = -math.inf
    while True:
        seen = wakes.generation
        if look_first:
            looked_at = time.monotonic()
        processed = run_pass(look_first)
        if processed == FAILED_PASS and not stop.is_set():
            look_first = True
            continue
        full = processed >= batch_size
        if full:
            wakes.wake()
        if stop.is_set() or (not processed and wakes.generation == seen):
            return seen
        look_first = not full or time.monotonic() - looked_at >= look_every


def _work_loop(
    app: Flask, batch_size: int, poll_interval: float, stop: threading.Event, wakes: WakeSignal
) -> None:
    backoff = Backoff(first=poll_interval)

    def run_pass(look_first: bool) -> int:
        seen = wakes.generation
        with app.app_context():
            try:
                result = process_document_queue(batch_size, stop=stop, look_first=look_first)
                # After the batch, so a fresh worker's first documents wait for no
                # sweep (the poll before a claim rescues expired leases itself).
                run_maintenance()
            except Exception as exc:  # a database outage or hiccup must not end the worker
                report_failure(exc, QUEUE_PASS)
                # A wake ends the pause (and a stop, which wakes every loop): it came
                # through the database (a notification, a commit), so the database is
                # back. Waiting the pause out regardless left work uploaded after an
                # outage waiting a whole POLL_INTERVAL, however long that was set.
                wakes.wait(seen, backoff.next_pause())
                return FAILED_PASS
        OUTAGES.succeeded()
        report_success(QUEUE_PASS)
        backoff.reset()
        return result["processed"]

    woken = False
    while not stop.is_set():
        seen = work_until_idle(run_pass, wakes, batch_size, stop, woken, poll_interval)
        if not stop.is_set():
            woken = wakes.sleep(seen, poll_interval)


def _stop_on_signals(stop: threading.Event, wakes: WakeSignal) -> None:
    def request_stop(signum: int, _frame: Any) -> None:
        log.info("%s received: finishing documents in hand", signal.Signals(signum).name)
        stop.set()
        wakes.wake(everyone=True)  # sleeping threads see the stop and end

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
