"""Waking the claim loops the moment work becomes due: pickup in milliseconds.

Workers and the in-app scheduler still poll every POLL_INTERVAL, but only as the
fallback (retries that come due later, a wake that was lost); a commit that
makes an item pending and due wakes them at once:

- PostgreSQL: migration 0005's trigger on ``queue_items`` calls
  ``pg_notify('docqueue_queue', '')`` in the transaction that makes an item due
  (upload, reprocess, retry, a release), so an upload costs no extra round
  trip; PostgreSQL delivers the notification at commit and folds a
  transaction's identical ones into one. Each listening process LISTENs on a
  psycopg connection of its own. Notifications sent while it is disconnected
  are lost, so after reconnecting (with backoff) it wakes its loops once.
- SQLite: the committing process wakes its own loops directly
  (``announce_due_work``), and the other processes of the host through unix
  datagram sockets: each listening process binds one in a folder next to the
  database (under the temp folder when that path is too long for a socket),
  and a commit sends one byte to each, removing those of processes that died.

Why sockets rather than ``PRAGMA data_version`` on a kept connection (measured
on the project's machine, /tmp/h2/measure_wake.py): a datagram wakes another
process in 40 us (p99 0.25 ms) and an idle process asks the database nothing,
while data_version has to be asked at a fixed rate: every 10 ms gave a pickup
of 6.4 ms p50 / 13 ms p99 for 100 queries a second per idle process, and it
changes on every commit (heartbeats, outcomes), not only on those that make
work due. Sending costs a commit about 80 us (a folder scan and one send per
listener).

Inside a process, ``WakeSignal`` lets one idle loop poll while the others
sleep, so the idle cost of a process does not grow with its threads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ..config import POSTGRESQL_CONNECT_ARGS
from ..database import Backoff, report_failure, report_success

log = logging.getLogger(__name__)

CHANNEL = "docqueue_queue"
# Shown in pg_stat_activity, so an operator (or a test) can tell the listeners apart.
LISTENER_APPLICATION_NAME = "docqueue-listener"
# The listener's task as the log names it when it fails (report_failure).
LISTENING = "listening for new work"
# How often the PostgreSQL listener looks up from its wait to see whether it was closed.
CLOSE_CHECK_SECONDS = 1.0
# A socket path must fit in sun_path (108 bytes with its NUL).
_SOCKET_PATH_MAX = 100
# Where a socket goes when neither beside the database nor TMPDIR leaves it room.
_SHORT_TEMP_FOLDER = "/tmp"
_SOCKET_SUFFIX = ".sock"

Wake = Callable[[], None]


class WakeSignal:
    """The claim loops of one process: asleep while idle, woken when work may be due.

    One idle loop polls (its sleep ends after POLL_INTERVAL); the others sleep
    until a wake. A wake rouses one sleeping loop, and a loop that claimed a
    full batch wakes the next, so a burst of work spreads over the loops while
    an idle process asks the database once per interval. ``generation`` counts
    wakes: a loop that sees it changed across its pass runs again rather than
    sleeping, so a wake that came while it was busy is not lost.
    """

    def __init__(self, on_wake: Wake | None = None) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self._polling = False
        self._on_wake = on_wake

    @property
    def generation(self) -> int:
        return self._generation

    def wake(self, everyone: bool = False) -> None:
        """Work may be due: rouse one sleeping loop (all of them, to see a stop)."""
        with self._condition:
            self._generation += 1
            if everyone:
                self._condition.notify_all()
            else:
                self._condition.notify()
        if self._on_wake is not None:
            self._on_wake()

    def wait(self, seen: int, timeout: float) -> bool:
        """Until a wake after generation ``seen``, or ``timeout``; True when woken.

        A pause (after a failed pass), not an idle sleep: it never takes the
        polling turn, nor waits for it.
        """
        with self._condition:
            return self._condition.wait_for(lambda: self._generation != seen, timeout)

    def sleep(self, seen: int, poll_interval: float) -> bool:
        """Until a wake after generation ``seen``, or until this loop is due to poll.

        True when woken (work is likely due), False when it is time to poll.
        The loop that holds the polling turn returns after ``poll_interval``;
        the others take the turn when they find it free (its holder is busy
        processing), so due retries are found even while a long document runs.
        """

        def woken() -> bool:
            return self._generation != seen

        with self._condition:
            while self._polling:
                if self._condition.wait_for(woken, poll_interval):
                    return True
            self._polling = True
            try:
                return self._condition.wait_for(woken, poll_interval)
            finally:
                self._polling = False


# -- announcing ---------------------------------------------------------------------

# SQLite database file (or _IN_MEMORY) -> the wakes of this process's loops on it.
_IN_MEMORY = ":memory:"
_local_wakes: dict[str, list[Wake]] = {}
# The sockets this process listens on: its own loops are woken directly.
_own_sockets: set[str] = set()
_registry_lock = threading.Lock()


def notify_in_transaction(session: Session) -> None:
    """Make the current transaction's commit wake PostgreSQL's listeners.

    For work that became claimable without any item being written (the queue
    resumed), so the trigger did not notify. SQLite: ``announce_due_work``
    after the commit does it.
    """
    if session.get_bind().url.get_backend_name() == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def announce_due_work(session: Session) -> None:
    """Wake this host's claim loops: a commit just made work due. Never raises.

    Only SQLite needs this; on PostgreSQL the commit's own trigger notified.
    """
    targets = _announcement_targets(session.get_bind())
    if targets is None:
        return
    database, folder = targets
    with _registry_lock:
        wakes = list(_local_wakes.get(database, ()))
    try:
        for wake in wakes:
            wake()
        if folder is not None:  # else in memory: no other process can see it
            _send_to_listeners(folder)
    except Exception as exc:  # the work is committed; a loop that misses the wake polls
        log.warning("waking the claim loops failed: %s", exc)


# Engine -> (its database in _local_wakes, its socket folder or None for memory), or
# None for PostgreSQL. Kept per engine: working them out from the URL (rendering it
# to hash it) took a third of every announcement, which follows every upload.
_targets_by_engine: weakref.WeakKeyDictionary[Engine, tuple[str, str | None] | None] = (
    weakref.WeakKeyDictionary()
)


def _announcement_targets(engine: Engine) -> tuple[str, str | None] | None:
    try:
        return _targets_by_engine[engine]
    except KeyError:
        pass
    url = engine.url
    targets = None
    if url.get_backend_name() == "sqlite":
        database = sqlite_file(url)
        targets = (database or _IN_MEMORY, None if database is None else socket_folder(url))
    _targets_by_engine[engine] = targets
    return targets


def _send_to_listeners(folder: str) -> None:
    try:
        entries = [entry.path for entry in os.scandir(folder)]
    except FileNotFoundError:
        return  # nobody listens yet
    sender = _sender()
    for path in entries:
        if path in _own_sockets or not path.endswith(_SOCKET_SUFFIX):
            continue
        try:
            sender.sendto(b"\0", path)
        except BlockingIOError:
            pass  # its queue is full: it has wakes waiting already
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # its process died without removing it


@functools.cache
def _sender() -> socket.socket:
    """The process's one socket for sending wakes (unbound; threads may share it)."""
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    return sender


# -- paths of a database on this host -----------------------------------------------


# Cached: announce_due_work runs after every upload's commit, and these paths
# (a realpath, a hash) never change for a given URL.
@functools.lru_cache(maxsize=16)
def sqlite_file(url: URL) -> str | None:
    """The SQLite database file of ``url``, resolved; None for memory or PostgreSQL."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return os.path.realpath(url.database)


def host_path(url: URL, suffix: str, max_length: int | None = None) -> str:
    """A path on this host that names the database of ``url``.

    Next to a SQLite file when it fits in ``max_length``; otherwise in the
    temp folder (in /tmp when TMPDIR is too deep for it), keyed by a hash of the
    file's path or of the URL (password left out), so every process of the host
    derives the same path.
    """
    database = sqlite_file(url)
    if database is not None:
        beside = database + suffix
        if max_length is None or len(beside) <= max_length:
            return beside
        key = database
    else:
        key = url.set(password=None).render_as_string()
    name = f"docqueue-{hashlib.sha256(key.encode()).hexdigest()[:16]}{suffix}"
    path = os.path.join(tempfile.gettempdir(), name)
    if max_length is not None and len(path) > max_length:
        return os.path.join(_SHORT_TEMP_FOLDER, name)
    return path


@functools.lru_cache(maxsize=16)
def socket_folder(url: URL) -> str:
    # Room for "/<pid>-<8 hex>.sock" after the folder.
    return host_path(url, ".wake", _SOCKET_PATH_MAX - 30)


# -- listening ----------------------------------------------------------------------


class WorkListener(Protocol):
    def close(self) -> None: ...


def listen_for_work(url: URL, wake: Wake) -> WorkListener:
    """Call ``wake`` whenever another transaction makes work due; ``close()`` to stop.

    Starts a daemon thread (SQLite files and PostgreSQL); for SQLite in memory,
    only this process can commit, and its commits wake directly.
    """
    if url.get_backend_name() == "postgresql":
        return PostgresListener(url, wake)
    database = sqlite_file(url)
    if database is None:
        return _LocalWakes(_IN_MEMORY, wake)
    return DatagramListener(database, socket_folder(url), wake)


class _LocalWakes:
    """This process's commits on one SQLite database call ``wake`` directly."""

    def __init__(self, database: str, wake: Wake) -> None:
        self.database, self.wake = database, wake
        with _registry_lock:
            _local_wakes.setdefault(database, []).append(wake)

    def close(self) -> None:
        with _registry_lock:
            wakes = _local_wakes.get(self.database, [])
            if self.wake in wakes:
                wakes.remove(self.wake)


class DatagramListener(_LocalWakes):
    """A socket in the database's wake folder; every byte received calls ``wake``."""

    def __init__(self, database: str, folder: str, wake: Wake) -> None:
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"{os.getpid()}-{secrets.token_hex(4)}{_SOCKET_SUFFIX}")
        # Blocking, without a timeout: Python would wait out a timeout even
        # for MSG_DONTWAIT. close() wakes the thread with a byte of its own.
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.closed = threading.Event()
        _own_sockets.add(self.path)
        super().__init__(database, wake)
        threading.Thread(target=self._run, name="docqueue-wake-socket", daemon=True).start()
        log.info("listening for new work on %s", self.path)

    def _run(self) -> None:
        with self.socket:
            while True:
                self.socket.recv(64)
                self._drain()
                if self.closed.is_set():
                    return
                self.wake()

    def _drain(self) -> None:
        """Take every wake already queued: one wake answers them all."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self.socket.recv(64, socket.MSG_DONTWAIT)

    def close(self) -> None:
        super().close()
        self.closed.set()
        _own_sockets.discard(self.path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
            waker.setblocking(False)
            # The thread sees the close and ends (a full queue wakes it just as well).
            with contextlib.suppress(BlockingIOError):
                waker.sendto(b"\0", self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class PostgresListener:
    """LISTEN on a connection of its own; each notification calls ``wake``.

    After an outage it reconnects with backoff and calls ``wake`` once, since
    notifications sent meanwhile are lost. (When it first connects, the loops
    are starting with a pass of their own.)
    """

    def __init__(self, url: URL, wake: Wake) -> None:
        self.conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.wake = wake
        self.closed = threading.Event()
        threading.Thread(target=self._run, name="docqueue-listener", daemon=True).start()

    def close(self) -> None:
        """Stop listening; the thread ends (and disconnects) within CLOSE_CHECK_SECONDS."""
        self.closed.set()

    def _run(self) -> None:
        backoff = Backoff()
        tries = 0
        while not self.closed.is_set():
            try:
                self._listen(backoff, reconnecting=tries > 0)
            except Exception as exc:  # an outage (or a bug): try again after a pause
                report_failure(_as_sqlalchemy_error(exc), LISTENING)
            tries += 1
            self.closed.wait(backoff.next_pause())

    def _listen(self, backoff: Backoff, reconnecting: bool) -> None:
        # Imported here, not at the top: only PostgreSQL needs it, and importing
        # it would add 0.1 to 0.3 s to every start on SQLite (measured, -X importtime).
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True, **listener_connect_args()) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            # No OUTAGES.succeeded(): LISTEN needs no table, so it also works on a
            # database not migrated yet; the loops that claim say when it is usable.
            backoff.reset()
            report_success(LISTENING)
            log.info("listening for new work on channel %s", CHANNEL)
            if reconnecting:
                self.wake()  # what was notified while nobody listened is lost: look
            while not self.closed.is_set():
                for _notification in conn.notifies(timeout=CLOSE_CHECK_SECONDS):
                    self.wake()


def listener_connect_args() -> dict[str, object]:
    """The app's connection settings, less its statement timeout (this connection waits)."""
    args: dict[str, object] = {k: v for k, v in POSTGRESQL_CONNECT_ARGS.items() if k != "options"}
    args["application_name"] = LISTENER_APPLICATION_NAME
    return args


def _as_sqlalchemy_error(error: Exception) -> BaseException:
    """The driver's error as SQLAlchemy would have raised it, so outages are recognised."""
    return DBAPIError.instance(None, None, error, Exception)
