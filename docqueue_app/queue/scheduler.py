"""The in-process APScheduler job that works the queue while the app serves.

It starts when the app serves requests (gunicorn's ``post_worker_init`` hook, or
the first request under ``flask run``) and never during a CLI command. Each tick
runs in its own app context with its own session; ``max_instances=1`` keeps
ticks of one process from overlapping, and the atomic claims keep processes
(and hosts) from processing one item twice.
"""

from __future__ import annotations

import logging
import threading
import time

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask

from .maintenance import run_maintenance
from .worker import process_document_queue

log = logging.getLogger(__name__)

EXTENSION = "docqueue_scheduler"
STALE_AFTER_INTERVALS = 5


class QueueScheduler:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.interval: float = app.config["POLL_INTERVAL"]
        self.enabled: bool = app.config["SCHEDULER_ENABLED"]
        self.last_tick: float | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start ticking (once per process); False when disabled."""
        if not self.enabled:
            return False
        with self._lock:
            if self._scheduler is None:
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
                self._scheduler = scheduler
                log.info("queue scheduler started, polling every %ss", self.interval)
        return True

    def start_on_request(self) -> None:
        # A before_request hook: it must return None, or Flask would answer with it.
        # A scheduler that ticked once is not restarted here: if it went stale,
        # /readyz must say so rather than have a request paper over it.
        if self.last_tick is None:
            self.start()

    def shutdown(self) -> None:
        with self._lock:
            if self._scheduler is not None:
                self._scheduler.shutdown(wait=True)
                self._scheduler = None

    def tick(self) -> None:
        with self.app.app_context():
            try:
                run_maintenance()
                result = process_document_queue()
                if result["processed"]:
                    log.info("processed queue items: %s", result)
            except Exception:
                log.exception("queue tick failed")
            finally:
                self.last_tick = time.monotonic()

    def state(self) -> str:
        """ "ok", "disabled", or "stale" when no tick finished for 5 poll intervals."""
        if not self.enabled:
            return "disabled"
        if self.last_tick is None:
            return "stale"
        overdue = time.monotonic() - self.last_tick > STALE_AFTER_INTERVALS * self.interval
        return "stale" if overdue else "ok"


def init_app(app: Flask) -> None:
    scheduler = QueueScheduler(app)
    app.extensions[EXTENSION] = scheduler
    if scheduler.enabled:
        # Under `flask run` (or any server without a start hook) the first
        # request starts the scheduler; CLI commands serve no requests.
        app.before_request(scheduler.start_on_request)


def get_scheduler(app: Flask) -> QueueScheduler:
    return app.extensions[EXTENSION]
