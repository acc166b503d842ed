"""The in-process APScheduler job that works the queue while the app serves.

It starts when the app serves requests (gunicorn's ``post_worker_init`` hook, or
the first request under ``flask run``) and never during a CLI command.

One process per host (per database) runs it: starting takes an exclusive
``flock`` on a lock file of the database (next to a SQLite file; in the temp
folder, keyed by the URL, for PostgreSQL). The other gunicorn workers stand by,
a thread of each blocked on that lock; when the holder dies (even by SIGKILL,
which releases the lock) the first to get it takes over. So the idle cost of a
host does not grow with its gunicorn workers, and ``CONCURRENCY`` is the number
of documents the host's scheduler processes at once.

The job runs every POLL_INTERVAL on an executor of CONCURRENCY threads, at most
CONCURRENCY runs at once (``max_instances``). A run (a tick) processes batches
back to back until one finds nothing due. A commit that makes work due starts a
run at once (``notify``), and a run that claimed a full batch starts another,
so threads join in while there is work and an idle host polls once per
interval. Each pass runs in its own app context with its own session; atomic
claims keep processes (and hosts) from processing one item twice.

Liveness (``/readyz``): a process standing by is healthy. The running scheduler
is alive while runs keep ending within 5 poll intervals, and while each running
pass shows progress (its heartbeat) at least once per document's time cap plus
that slack. So a long batch reads "ok" and only a scheduler that stopped
ticking, or a pass that hangs, reads "stale".

The process that runs the scheduler also runs the host's webhook lane
(``webhooks.lane``), which sends due deliveries on threads of its own, so a
slow receiver never takes a document's thread; it ignores the queue's pause.

Shutdown (gunicorn's ``worker_exit`` hook) reaches the running passes (and the
webhook lane, whose deliveries in flight finish) through a stop event: the
documents in hand finish, the claimed items not yet started go back to pending
at once with their attempt not counted, and no new run starts.
A restart thus strands no claimed work for a lease.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flask import Flask
from sqlalchemy.engine import URL, make_url

from ..database import OUTAGES, Backoff, report_failure, report_success
from ..webhooks.lane import DeliveryLane
from .maintenance import run_maintenance
from .notify import WakeSignal, WorkListener, host_path, listen_for_work, sqlite_file
from .runner import QUEUE_PASS, work_until_idle
from .worker import process_document_queue

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

EXTENSION = "docqueue_scheduler"
JOB_ID = "process_document_queue"
STALE_AFTER_INTERVALS = 5


class _SkippedRunsFilter(logging.Filter):
    """Drop APScheduler's warning for a run skipped while CONCURRENCY runs are going.

    That is the design (busy runs go on to the next batch themselves, and a pass
    waiting out a database outage delays the next run), not news worth a line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_SkippedRunsFilter())


class HostLock:
    """An exclusive ``flock`` that one process of the host holds at a time.

    The kernel releases it when the holder dies, however it dies. Each
    acquisition opens the file anew, so two holders in one process exclude each
    other too. A ``path`` of None (a database in memory, private to its
    process) is always free.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, blocking: bool) -> bool:
        if self.path is None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            # Better every process scheduling (claims stay atomic) than none.
            log.warning(
                "no scheduler lock at %s (%s): running the scheduler anyway", self.path, exc
            )
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the lock


def scheduler_lock_path(url: URL) -> str | None:
    """The lock file of ``url``'s database on this host; None for SQLite in memory."""
    if url.get_backend_name() == "sqlite" and sqlite_file(url) is None:
        return None
    return host_path(url, ".scheduler.lock")


class QueueScheduler:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.interval: float = app.config["POLL_INTERVAL"]
        self.enabled: bool = app.config["SCHEDULER_ENABLED"]
        self.concurrency: int = app.config["CONCURRENCY"]
        self.batch_size: int = app.config["BATCH_SIZE"]
        self.stale_after: float = STALE_AFTER_INTERVALS * self.interval
        # One document may legitimately take up to its time cap between two
        # heartbeats of a pass; beyond that (plus the usual slack) it is hung.
        self.hung_after: float = app.config["PROCESS_TIMEOUT_SECONDS"] + self.stale_after
        # When the last run ended (or running began); None until this process runs it.
        self.last_tick: float | None = None
        # True while another process of the host runs the scheduler and this one waits.
        self.standing_by = False
        self.url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
        self.wakes = WakeSignal(on_wake=self._start_a_run)
        # The runs going on: their thread -> their last sign of progress.
        self._runs: dict[int, float] = {}
        self._stop = threading.Event()
        # After a failed pass (the database away), passes are skipped until then.
        self._backoff = Backoff(first=self.interval)
        self._resume_at = float("-inf")
        self._host_lock = HostLock(scheduler_lock_path(self.url))
        self._started = False
        self._scheduler: BackgroundScheduler | None = None
        self._listener: WorkListener | None = None
        self._lane: DeliveryLane | None = None
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """True once a shutdown began: the running passes wind down, no run starts."""
        return self._stop.is_set()

    def start(self) -> bool:
        """Run the scheduler, or stand by for this host's lock (once per process).

        False when disabled or shut down.
        """
        if not self.enabled:
            return False
        with self._lock:
            # Checked under the lock: a concurrent shutdown either sees the
            # scheduler started here, or this sees its stop.
            if self.stopping:
                return False
            if not self._started:
                self._started = True
                if self._host_lock.acquire(blocking=False):
                    self._run_scheduler()
                else:
                    self._stand_by()
        return True

    def _stand_by(self) -> None:
        self.standing_by = True
        log.info("queue scheduler standing by: another process of this host runs it")
        threading.Thread(
            target=self._take_over_when_free, name="docqueue-scheduler-standby", daemon=True
        ).start()

    def _take_over_when_free(self) -> None:
        self._host_lock.acquire(blocking=True)
        with self._lock:
            if self.stopping:
                self._host_lock.release()
                return
            log.info("queue scheduler taking over (pid %s)", os.getpid())
            self._run_scheduler()

    def _run_scheduler(self) -> None:
        """Start ticking and listening; called under the lock, holding the host's lock."""
        # Imported here: a worker or a CLI command never runs it (55-75 ms of imports).
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(self.concurrency)}, daemon=True
        )
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval,
            id=JOB_ID,
            max_instances=self.concurrency,
            coalesce=True,
            misfire_grace_time=None,
        )
        self.last_tick = time.monotonic()
        scheduler.start()
        self._scheduler = scheduler
        self._listener = listen_for_work(self.url, self.wakes.wake)
        self._lane = DeliveryLane(self.app, self._stop).start()
        self.standing_by = False
        log.info(
            "queue scheduler started (pid %s): %d at once, polling every %ss",
            os.getpid(),
            self.concurrency,
            self.interval,
        )

    def start_on_request(self) -> None:
        # A before_request hook: it must return None, or Flask would answer with it.
        # A scheduler that ticked once is not restarted here: if it went stale,
        # /readyz must say so rather than have a request paper over it.
        if self.last_tick is None:
            self.start()  # once: standing by, it returns at once

    def request_stop(self) -> None:
        """Tell the running passes to wind down and keep new runs from starting; no waiting."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop for good; returns once the running passes have finished their documents in hand.

        The passes hand their claimed but unstarted items back (pending, attempt
        not counted), so they are free for other workers at once rather than
        after a lease. The host's lock goes to a process standing by.
        """
        self.request_stop()  # first: waiting on a pass that never hears of it takes a whole batch
        with self._lock:
            if self._scheduler is None:
                return
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
            if self._listener is not None:
                self._listener.close()
            if self._lane is not None:
                self._lane.close()
            self._host_lock.release()

    def _start_a_run(self) -> None:
        """Work may be due: start a run now, unless every thread is running one already.

        Busy runs look again before they end (``work_until_idle``), so skipping is safe.
        A wake also ends a pause after a failed pass: it came through the database (a
        notification, a commit), so the database is back. Waiting the pause out left
        work uploaded after an outage waiting a whole POLL_INTERVAL, however long.
        """
        self._resume_at = float("-inf")
        scheduler = self._scheduler
        if scheduler is None or self.stopping or len(self._runs) >= self.concurrency:
            return
        scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    def tick(self) -> None:
        """One run of the job: passes back to back until one finds nothing due."""
        if self.stopping:
            return  # a run already due when the shutdown began must claim nothing
        self.heartbeat()
        try:
            work_until_idle(
                self._run_pass, self.wakes, self.batch_size, self._stop, look_every=self.interval
            )
        finally:
            self.last_tick = time.monotonic()
            self._runs.pop(threading.get_ident(), None)

    def _run_pass(self, look_first: bool) -> int:
        """One batch: the number of documents processed (0 while backing off)."""
        if time.monotonic() < self._resume_at:
            return 0  # backing off is not hanging: the run ends and stamps last_tick
        self.heartbeat()
        with self.app.app_context():
            try:
                result = process_document_queue(
                    stop=self._stop, heartbeat=self.heartbeat, look_first=look_first
                )
                run_maintenance()  # after the batch, as the worker's (runner.py) says why
            except Exception as exc:
                report_failure(exc, QUEUE_PASS)
                self._resume_at = time.monotonic() + self._backoff.next_pause()
                return 0
        OUTAGES.succeeded()
        report_success(QUEUE_PASS)
        self._backoff.reset()
        return result["processed"]

    def heartbeat(self) -> None:
        """The calling run made progress (called by its pass, and as the run begins)."""
        self._runs[threading.get_ident()] = time.monotonic()

    def state(self) -> str:
        """ "ok", "disabled", or "stale".

        Standing by is "ok". Stale: never started; no run ended for 5 poll
        intervals while none is going; or a running pass silent for longer than
        one document may take (``PROCESS_TIMEOUT_SECONDS`` plus those 5 intervals).
        """
        if not self.enabled:
            return "disabled"
        if self.standing_by:
            return "ok"
        if self.last_tick is None:
            return "stale"
        # A copy: runs add and remove themselves meanwhile.
        progress = list(self._runs.values())
        if progress:
            quiet, allowed = time.monotonic() - min(progress), self.hung_after
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
