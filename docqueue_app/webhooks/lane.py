"""The delivery lane: webhooks sent beside the queue, never in its way.

``queue worker`` and the host's running in-app scheduler each run one lane: a
thread that claims due deliveries (``DeliveryService.claim_due``) and hands each
to one of a few sender threads, so a receiver that hangs holds one sender for
at most its time cap while the others go on, and documents never wait on any
of them. The lane claims only what a free sender can start at once: nothing it
holds waits in memory, and a lane that dies (even by SIGKILL) leaves only
deliveries in flight, whose leases run out so that any lane sends them again.

Pick-up: a delivery recorded in this process wakes the lane at once
(``events.wake_senders``); otherwise it looks every POLL_INTERVAL, sooner when
a retry comes due before that. Pausing the queue does not pause the lane.

Cron hosts have no lane: ``send_due_deliveries`` sends a bounded number of due
deliveries after each cron pass.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask, current_app
from sqlalchemy.orm import Session

from ..database import OUTAGES, Backoff, report_failure, report_success
from ..models import db
from ..queue.worker import current_worker_id
from .deliveries import ATTEMPT_LINE, ClaimedDelivery, DeliveryService, lease_seconds
from .events import listen_for_deliveries, stop_listening
from .sender import USER_AGENT, AttemptResult, post
from .signing import SIGNATURE_HEADER, signature

log = logging.getLogger(__name__)

# Deliveries sent at once by one lane: a few hung receivers cannot stall the rest.
SENDERS = 4
# Deliveries one cron call sends (concurrently, each within its time cap).
CRON_DELIVERIES = 8
# The lane's tasks as the log names them when they fail (report_failure).
LANE = "webhook lane"
CLAIMING = "claiming webhook deliveries"
RECORDING = "recording webhook %s"


def sender_id() -> str:
    """Who holds a delivery's lease: this process's worker id, on its webhook lane."""
    return f"{current_worker_id()}/webhooks"


def headers_for(claimed: ClaimedDelivery, body: bytes, config: Any) -> dict[str, str]:
    """The headers of one attempt (SPEC §8); the signature's time is this attempt's."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Docqueue-Event": claimed.event,
        "X-Docqueue-Delivery": claimed.delivery_id,
    }
    secret = config["WEBHOOK_SECRET"]
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    return headers


def deliver(app: Flask, claimed: ClaimedDelivery) -> AttemptResult:
    """One attempt at a claimed delivery, and its result recorded (while the lease holds)."""
    config = app.config
    body = claimed.payload.encode()
    result = post(
        claimed.url,
        body,
        headers_for(claimed, body, config),
        timeout=config["WEBHOOK_TIMEOUT_SECONDS"],
        allow_private=config["WEBHOOK_ALLOW_PRIVATE"],
    )
    _log_attempt(claimed, result)
    _record(app, claimed, result)
    return result


def _log_attempt(claimed: ClaimedDelivery, result: AttemptResult) -> None:
    if result.delivered:
        log.debug("webhook %s delivered to %s", claimed.delivery_id, claimed.url)
        return
    last = result.permanent or claimed.attempt >= claimed.max_attempts
    log.log(
        logging.WARNING if last else logging.INFO,
        ATTEMPT_LINE,
        claimed.delivery_id,
        claimed.url,
        claimed.attempt,
        claimed.max_attempts,
        result.error,
        "it failed for good" if last else "it will be retried",
    )


def _record(app: Flask, claimed: ClaimedDelivery, result: AttemptResult) -> None:
    """Write the attempt's result, trying through a database outage while the lease holds.

    Given up, the lease runs out and the delivery is sent again: at least once.
    """
    timeout = app.config["WEBHOOK_TIMEOUT_SECONDS"]
    give_up_at = time.monotonic() + lease_seconds(timeout) - timeout
    backoff = Backoff(first=0.2, cap=1.0)
    with app.app_context(), Session(db.engine) as session:
        service = DeliveryService(session)
        while True:
            try:
                service.record_attempt(claimed, result)
            except Exception as exc:
                report_failure(exc, RECORDING, claimed.delivery_id)
                pause = backoff.next_pause()
                if time.monotonic() + pause > give_up_at:
                    return
                time.sleep(pause)
                continue
            OUTAGES.succeeded()
            report_success(RECORDING)
            return


def send_due_deliveries(limit: int = CRON_DELIVERIES) -> int:
    """Claim up to ``limit`` due deliveries and send them at once; how many were attempted.

    For cron calls, inside an app context: it returns within about one
    attempt's time cap, and never raises (a database outage is logged; the
    deliveries wait for the next call).
    """
    app = current_app._get_current_object()
    try:
        with Session(db.engine) as session:
            claimed = DeliveryService(session).claim_due(limit, sender_id())
    except Exception as exc:
        report_failure(exc, CLAIMING)
        return 0
    report_success(CLAIMING)
    if claimed:
        with ThreadPoolExecutor(len(claimed), thread_name_prefix="docqueue-webhook") as pool:
            list(pool.map(lambda delivery: deliver(app, delivery), claimed))
    return len(claimed)


class DeliveryLane:
    """A thread that claims due deliveries for ``senders`` sender threads, until ``stop``."""

    def __init__(
        self, app: Flask, stop: threading.Event | None = None, senders: int = SENDERS
    ) -> None:
        self.app = app
        self.stop = stop or threading.Event()
        self.senders = senders
        self.poll_interval: float = app.config["POLL_INTERVAL"]
        self.sender = sender_id()
        self._wake = threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(senders, thread_name_prefix="docqueue-webhook")
        self._thread = threading.Thread(target=self._run, name="docqueue-webhooks", daemon=True)

    def start(self) -> DeliveryLane:
        listen_for_deliveries(self._wake)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop claiming, and return once the deliveries in flight are sent and recorded."""
        self.stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True)
        stop_listening(self._wake)

    def _run(self) -> None:
        backoff = Backoff(first=self.poll_interval)
        with self.app.app_context(), Session(db.engine) as session:
            service = DeliveryService(session)
            while not self.stop.is_set():
                self._wake.clear()
                try:
                    pause = self._claim_and_send(service)
                except Exception as exc:  # a database outage must not end the lane
                    report_failure(exc, LANE)
                    pause = backoff.next_pause()
                else:
                    report_success(LANE)
                    backoff.reset()
                if pause > 0:
                    self._wake.wait(pause)

    def _claim_and_send(self, service: DeliveryService) -> float:
        """Start what free senders can send; the seconds to wait before looking again."""
        with self._lock:
            free = self.senders - self._in_flight
        if free <= 0:
            return self.poll_interval  # a sender that finishes wakes the lane
        due_in = service.seconds_until_due()
        if due_in is None:
            return self.poll_interval
        if due_in > 0:
            return min(due_in, self.poll_interval)
        claimed = service.claim_due(free, self.sender)
        # A write went through. (An idle look is only a read, which SQLite
        # serves while another process holds the write lock: no proof.)
        OUTAGES.succeeded()
        for delivery in claimed:
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._send, delivery)
        return 0.0 if claimed else self.poll_interval

    def _send(self, claimed: ClaimedDelivery) -> None:
        try:
            deliver(self.app, claimed)
        except Exception:  # a bug: the lease runs out and the delivery is sent again
            log.exception("sending webhook %s failed", claimed.delivery_id)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._wake.set()
