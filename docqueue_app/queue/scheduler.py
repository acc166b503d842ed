"""The in-process APScheduler job that works the queue while the app serves.

It starts when the app serves requests (gunicorn's ``post_worker_init`` hook, or
the first request under ``flask run``) and never during a CLI command. Each tick
runs in its own app context with its own session; ``max_instances=1`` keeps
ticks of one process from overlapping, and the atomic claims keep processes
(and hosts) from processing one item twice.

Liveness (``/readyz``): between ticks the scheduler is alive while ticks keep
ending within 5 poll intervals; during a tick, while its pass shows progress
(its heartbeat) at least once per document's time cap plus that slack. So a
long batch reads "ok" and only a scheduler that stopped ticking, or a pass that
hangs, reads "stale".

Shutdown (gunicorn's ``worker_exit`` hook) reaches the running pass through a
stop event: the document in hand finishes, the claimed items not yet started go
back to pending at once with their attempt not counted, and no new tick starts.
A restart thus strands no claimed work for a lease.
"""

from __future__ import annotations

import logging
import threading
import time

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask

from ..database import OUTAGES, Backoff, report_failure
from .maintenance import run_maintenance
from .worker import process_document_queue

log = logging.getLogger(__name__)

EXTENSION = "docqueue_scheduler"


class _SkippedRunsFilter(logging.Filter):
    """Drop APScheduler's warning for a tick skipped while the last one still runs.

    That is the design (``max_instances=1``: a long batch, or a pass waiting out
    a database outage, delays the next tick), not news worth a line per interval.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_SkippedRunsFilter())
STALE_AFTER_INTERVALS = 5


class QueueScheduler:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.interval: float = app.config["POLL_INTERVAL"]
        self.enabled: bool = app.config["SCHEDULER_ENABLED"]
        self.stale_after: float = STALE_AFTER_INTERVALS * self.interval
        # One document may legitimately take up to its time cap between two
        # heartbeats of a pass; beyond that (plus the usual slack) it is hung.
        self.hung_after: float = app.config["PROCESS_TIMEOUT_SECONDS"] + self.stale_after
        # When the last tick ended (or ticking started); None until started.
        self.last_tick: float | None = None
        # The running tick's last sign of progress; None between ticks.
        self.last_progress: float | None = None
        self._stop = threading.Event()
        # After a failed tick (the database away), ticks are skipped until then.
        self._backoff = Backoff(first=self.interval)
        self._resume_at = float("-inf")
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """True once a shutdown began: the running pass winds down, no tick starts."""
        return self._stop.is_set()

    def start(self) -> bool:
        """Start ticking (once per process); False when disabled or shut down."""
        if not self.enabled:
            return False
        with self._lock:
            # Checked under the lock: a concurrent shutdown either sees the
            # scheduler started here, or this sees its stop.
            if self.stopping:
                return False
            if self._scheduler is None:
                self._scheduler = self._start_scheduler()
        return True

    def _start_scheduler(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(daemon=True)
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval,
            id="process_document_queue",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self.last_tick = time.monotonic()
        scheduler.start()
        log.info("queue scheduler started, polling every %ss", self.interval)
        return scheduler

    def start_on_request(self) -> None:
        # A before_request hook: it must return None, or Flask would answer with it.
        # A scheduler that ticked once is not restarted here: if it went stale,
        # /readyz must say so rather than have a request paper over it.
        if self.last_tick is None:
            self.start()

    def request_stop(self) -> None:
        """Tell the running pass to wind down and keep new ticks from starting; no waiting."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop for good; returns once the running pass has finished its document in hand.

        The pass hands its claimed but unstarted items back (pending, attempt not
        counted), so they are free for other workers at once rather than after a lease.
        """
        self.request_stop()  # first: waiting on a pass that never hears of it takes a whole batch
        with self._lock:
            if self._scheduler is not None:
                self._scheduler.shutdown(wait=True)
                self._scheduler = None

    def tick(self) -> None:
        if self.stopping:
            return  # a tick already due when the shutdown began must claim nothing
        if time.monotonic() < self._resume_at:
            self.last_tick = time.monotonic()  # backing off is not hanging
            return
        self.heartbeat()
        with self.app.app_context():
            try:
                run_maintenance()
                result = process_document_queue(stop=self._stop, heartbeat=self.heartbeat)
            except Exception as exc:
                report_failure(exc, "queue tick failed")
                self._resume_at = time.monotonic() + self._backoff.next_pause()
            else:
                OUTAGES.succeeded()
                self._backoff.reset()
                if result["processed"]:
                    log.info("processed queue items: %s", result)
            finally:
                self.last_tick = time.monotonic()
                self.last_progress = None

    def heartbeat(self) -> None:
        """The running tick made progress (called by its pass, and as the tick begins)."""
        self.last_progress = time.monotonic()

    def state(self) -> str:
        """ "ok", "disabled", or "stale".

        Stale: never started; no tick for 5 poll intervals; or the running tick
        silent for longer than one document may take (``PROCESS_TIMEOUT_SECONDS``
        plus those 5 intervals).
        """
        if not self.enabled:
            return "disabled"
        if self.last_tick is None:
            return "stale"
        # Read once: the tick clears it as it ends (after stamping last_tick).
        progress = self.last_progress
        if progress is not None:
            quiet, allowed = time.monotonic() - progress, self.hung_after
        else:
            quiet, allowed = time.monotonic() - self.last_tick, self.stale_after
        return "stale" if quiet > allowed else "ok"


def init_app(app: Flask) -> None:
    scheduler = QueueScheduler(app)
    app.extensions[EXTENSION] = scheduler
    if scheduler.enabled:
        # Under `flask run` (or any server without a start hook) the first
        # request starts the scheduler; CLI commands serve no requests.
        app.before_request(scheduler.start_on_request)


def get_scheduler(app: Flask) -> QueueScheduler:
    return app.extensions[EXTENSION]
