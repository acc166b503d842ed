"""The database as something that can go away, and how docqueue lives through it.

An outage is any error that says the database cannot take the work right now
(unreachable, restarting, read-only, full, locked past the busy timeout), as
opposed to an error about the data itself. During one:

- a request that needs the database answers 503 with ``Retry-After`` (JSON for
  the API, a page for the web), and its transaction is rolled back whole;
- the scheduler and the workers back off and try again on their own, and the
  process logs one line when the outage begins and one when it ends, not a
  traceback per tick.

Any other error of a task that is tried again (a permission taken back, an
operator's trigger) is logged in full the first time, then with one short line
while it repeats, and one line when the task works again (``RepeatedErrorLog``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app
from sqlalchemy import ColumnElement, event, func, literal, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool
from werkzeug.exceptions import ServiceUnavailable
from werkzeug.wrappers import Response

from .models import UTCDateTime, db, utcnow

log = logging.getLogger(__name__)

# What a 503 asks clients to wait: a restart of PostgreSQL or a freed disk takes
# seconds, and clients retrying sooner only add load.
RETRY_AFTER_SECONDS = 5

# A table or column docqueue needs is not there: its migrations have not run (yet).
_MISSING_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})  # undefined table, column
# SQLSTATEs that are outages although psycopg files them under other classes.
_READ_ONLY_TRANSACTION = "25006"  # a standby, or default_transaction_read_only
_OUTAGE_SQLSTATES = frozenset({_READ_ONLY_TRANSACTION, *_MISSING_SCHEMA_SQLSTATES})
# SQLite's: "no such table: x", "no such column: x", "table x has no column named y".
_MISSING_SCHEMA_MESSAGE = re.compile(r"^no such (table|column): | has no column named ")

# Health states of the database (/healthz, /readyz).
OK, UNREACHABLE, READ_ONLY, NOT_MIGRATED = "ok", "unreachable", "read_only", "not_migrated"


def is_outage(error: BaseException) -> bool:
    """True when ``error`` means the database cannot take work now, not that the data is bad.

    A database not migrated yet is one: a worker started before ``db upgrade``
    waits for it as for a restart, and a request meanwhile answers 503.
    """
    if isinstance(error, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        return getattr(error.orig, "sqlstate", None) in _OUTAGE_SQLSTATES
    return False


def is_not_migrated(error: BaseException) -> bool:
    """True when a table or column docqueue needs is missing from the database."""
    if not isinstance(error, DBAPIError):
        return False
    if getattr(error.orig, "sqlstate", None) in _MISSING_SCHEMA_SQLSTATES:
        return True
    message = str(error.orig)
    return isinstance(error, OperationalError) and bool(_MISSING_SCHEMA_MESSAGE.search(message))


def describe_outage(error: BaseException) -> str:
    """A short reason for the log: the kind of outage and the driver's first line."""
    return f"the database is {outage_kind(error)}: {first_line(error)}"


def outage_kind(error: BaseException) -> str:
    """``not migrated`` (with the command that fixes it), ``read-only``, ``full``,
    ``busy`` or ``unreachable``."""
    if is_not_migrated(error):
        return "not migrated (run `docqueue db upgrade`)"
    message = str(getattr(error, "orig", None) or error).lower()
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
    if "readonly" in message or "read-only" in message or sqlstate == _READ_ONLY_TRANSACTION:
        return "read-only"
    if "full" in message or sqlstate.startswith("53"):
        return "full"
    if "locked" in message or "busy" in message:
        return "busy"
    return "unreachable"


def is_disk_full(error: BaseException) -> bool:
    """True for an outage of the ``full`` kind: the database's disk has no room."""
    return is_outage(error) and outage_kind(error) == "full"


def database_now(session: Session) -> datetime:
    """The database's clock, read inside the session's current transaction.

    Leases, due times and rescues are all judged by it, so a host whose own
    clock is off can neither rescue another host's live lease nor run an item
    early. PostgreSQL's ``now()`` is the transaction's start; SQLite serves one
    host, whose clock is the database's (no query needed).
    """
    if session.get_bind().dialect.name == "sqlite":
        return utcnow()
    return session.scalar(select(func.now())).astimezone(UTC)


def database_clock(dialect_name: str) -> ColumnElement[datetime]:
    """``database_now`` as an expression to put in a statement: no round trip of its own.

    PostgreSQL's ``now()`` (the transaction's start), or this host's clock on
    SQLite, bound as a parameter.
    """
    if dialect_name == "sqlite":
        return literal(utcnow(), UTCDateTime)
    return func.now(type_=UTCDateTime)


class OutageLog:
    """One warning when the database goes away and one line when it is back, per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        log.warning("database outage: %s; retrying with backoff", describe_outage(error))

    def succeeded(self) -> None:
        if self._since is None:  # the common case: no lock taken
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("database reachable again after %.1f s", time.monotonic() - since)


OUTAGES = OutageLog()

# While one error repeats, a short line says so at most this often. The first
# repeat is told at once: that the error is no one-off is the news.
STILL_FAILING_LOG_EVERY_SECONDS = 60.0


@dataclass
class _Failing:
    """The error a task keeps failing with, and what was told of it."""

    identity: tuple[str, ...]  # error_identity()
    task: str  # as last formatted
    failures: int
    since: datetime
    told_at: float | None = None  # when the last short line was logged (the clock's)


def error_identity(error: BaseException) -> tuple[str, ...]:
    """What makes two errors the same: their types and the driver's first line."""
    driver_error = getattr(error, "orig", None)
    return (type(error).__qualname__, type(driver_error).__qualname__, first_line(error))


def first_line(error: BaseException) -> str:
    """The first line of the driver's message (SQLAlchemy's adds the statement after it)."""
    message = str(getattr(error, "orig", None) or error).strip()
    return message.splitlines()[0] if message else type(error).__qualname__


class RepeatedErrorLog:
    """Errors that are no outage, per task of a process: in full once, then in short.

    A task is what ``report_failure`` names (its format, before the arguments). Its
    first failure is logged with the traceback; the same error again (the same types
    and first line) gives one short line at once, then at most one every
    STILL_FAILING_LOG_EVERY_SECONDS, with how many times it failed; another error is
    logged in full. Its next success logs one line. A loop retrying every few seconds
    otherwise logged 720 tracebacks an hour until someone fixed the grants.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failing: dict[str, _Failing] = {}

    def failed(self, error: BaseException, task: str, *args: Any) -> None:
        name = task % args if args else task
        told = self._count(task, name, error_identity(error))
        if told is None:
            return
        if told.failures == 1:
            log.error("%s failed", name, exc_info=error)
            return
        log.error(
            "%s still failing (%d times since %s UTC): %s",
            name,
            told.failures,
            told.since.strftime("%Y-%m-%d %H:%M:%S"),
            first_line(error),
        )

    def _count(self, task: str, name: str, identity: tuple[str, ...]) -> _Failing | None:
        """Count a failure; a copy of the task's record when it is to be logged now."""
        with self._lock:
            failing = self._failing.get(task)
            if failing is None or failing.identity != identity:
                failing = self._failing[task] = _Failing(identity, name, 1, datetime.now(UTC))
                return replace(failing)
            failing.task, failing.failures = name, failing.failures + 1
            now = self._clock()
            if (
                failing.told_at is not None
                and now - failing.told_at < STILL_FAILING_LOG_EVERY_SECONDS
            ):
                return None
            failing.told_at = now
            return replace(failing)

    def succeeded(self, task: str) -> None:
        if task not in self._failing:  # the common case: no lock taken
            return
        with self._lock:
            failing = self._failing.pop(task, None)
        if failing is not None:
            plural = "" if failing.failures == 1 else "s"
            log.info("%s works again after %d failure%s", failing.task, failing.failures, plural)


REPEATED_ERRORS = RepeatedErrorLog()


def report_failure(error: Exception, task: str, *args: Any) -> None:
    """Log a failed try of ``task`` (``"lease heartbeat"``, ``"writing %d outcomes"``).

    Once per outage when the database is away; any other error in full the first
    time and in short while it repeats (``RepeatedErrorLog``).
    """
    if is_outage(error):
        OUTAGES.failed(error)
    else:
        REPEATED_ERRORS.failed(error, task, *args)


def report_success(task: str) -> None:
    """``task`` (as given to ``report_failure``) went through: say so if it was failing.

    The outage's end is told apart (``OUTAGES.succeeded()``), where a write proves it.
    """
    REPEATED_ERRORS.succeeded(task)


class Backoff:
    """Capped exponential pauses between tries during an outage; reset on success.

    The cap is short: a try costs one connection attempt, and a longer wait only
    delays the recovery after a restart that took seconds. A first pause longer than
    the cap (a long POLL_INTERVAL) is cut to it: it raised the cap instead, so a
    worker polling every 10 minutes tried again 10 minutes after a failed pass.
    """

    def __init__(self, first: float = 0.5, cap: float = 5.0) -> None:
        self.first = min(first, cap)
        self.cap = cap
        self.failures = 0

    def next_pause(self) -> float:
        pause = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return pause

    def reset(self) -> None:
        self.failures = 0


def database_state() -> str:
    """``ok``, ``unreachable``, ``read_only`` or ``not_migrated``: what /healthz reports.

    ``SELECT 1`` alone proves nothing on SQLite (it never reads the file), so a
    table is read there and the file and its folder must be writable (SQLite
    opens a write-protected file read-only without a word, and writes its
    journal next to it). The probe reads docqueue's table on PostgreSQL too, so
    a database ``db upgrade`` has not reached is not reported healthy.
    """
    try:
        state = _probe(db.session.connection())
    except SQLAlchemyError as error:
        log.warning("health check: %s", describe_outage(error))
        state = NOT_MIGRATED if is_not_migrated(error) else UNREACHABLE
    finally:
        _rollback_quietly()
    return state


def _probe(connection: Any) -> str:
    if connection.dialect.name == "sqlite":
        path = make_url(current_app.config["SQLALCHEMY_DATABASE_URI"]).database
        if path and path != ":memory:":
            if not os.path.exists(path):
                return UNREACHABLE  # connecting would create an empty database
            connection.execute(text("SELECT count(*) FROM queue_state"))
            folder = os.path.dirname(os.path.abspath(path))
            if not (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):
                return READ_ONLY
            return OK
        connection.execute(text("SELECT 1"))
        return OK
    read_only = connection.execute(
        text("SELECT current_setting('transaction_read_only'), (SELECT count(*) FROM queue_state)")
    )
    return READ_ONLY if read_only.scalar() == "on" else OK


def _rollback_quietly() -> None:
    try:
        db.session.rollback()
    except SQLAlchemyError:
        close_session_quietly()  # the connection is gone: the next request gets a new one


def close_session_quietly(_error: BaseException | None = None) -> None:
    """End the scoped session even when the server dropped its connection under it.

    A teardown: closing a session rolls back its transaction, and on a connection
    the database dropped (a restart) that rollback raises, which would turn a
    request that was already answered (an upload committed: 202) into a 500.
    SQLAlchemy has invalidated that connection by then; the next use gets a new one.
    """
    try:
        db.session.remove()
    except SQLAlchemyError as error:
        log.warning("closing a session: %s", describe_outage(error))
        db.session.registry.clear()


def answer_outage(error: Exception) -> Response:
    """Any outage met by a request: roll back, and answer 503 in the blueprint's own format."""
    if not is_outage(error):
        raise error  # a genuine bug: Flask logs it and answers 500
    _rollback_quietly()
    _log_request_outage(error)
    unavailable = ServiceUnavailable(
        # The kind only: a driver's message can name hosts and paths.
        description=f"The database is {outage_kind(error)}: nothing was changed; try again later.",
        retry_after=RETRY_AFTER_SECONDS,
    )
    return current_app.handle_http_exception(unavailable)


_request_log = {"at": float("-inf")}
_REQUEST_LOG_EVERY_SECONDS = 30.0


def _log_request_outage(error: BaseException) -> None:
    # Every request during an outage meets it; say so twice a minute, not per request.
    now = time.monotonic()
    if now - _request_log["at"] >= _REQUEST_LOG_EVERY_SECONDS:
        _request_log["at"] = now
        log.warning("answering 503: %s", describe_outage(error))


# -- pinging pooled connections --------------------------------------------------

# A pooled PostgreSQL connection that sat idle this long is pinged before use, so
# one the server dropped meanwhile (a restart, a proxy's idle timeout) is replaced
# instead of failing a request. One used more recently is trusted: SQLAlchemy's
# pool_pre_ping pings on every checkout, a round trip as dear as an upload's
# one statement (measured: about 30% of in-process uploads per second).
PING_AFTER_IDLE_SECONDS = 1.0
_IDLE_SINCE = "docqueue_idle_since"


@event.listens_for(Pool, "checkin")
def _note_idle_since(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info[_IDLE_SINCE] = time.monotonic()


@event.listens_for(Pool, "checkout")
def _ping_after_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Raise DisconnectionError for a long-idle connection that is gone: the pool reconnects."""
    idle_since = record.info.pop(_IDLE_SINCE, None)
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
        return  # fresh, or in use a moment ago
    if not type(dbapi_connection).__module__.startswith("psycopg"):
        return  # a SQLite file does not go away between two statements
    try:
        _ping(dbapi_connection)
    except Exception as exc:
        raise DisconnectionError(f"a pooled connection was dropped: {exc}") from exc


def _ping(connection: Any) -> None:
    # In autocommit, as SQLAlchemy's own ping, so no transaction is left open.
    autocommit = connection.autocommit
    connection.autocommit = True
    try:
        connection.execute("SELECT 1")
    finally:
        if not connection.closed:
            connection.autocommit = autocommit


def open_pooled_connections(app: Flask, count: int) -> None:
    """Open ``count`` connections into the app's pool now, so that a server's first
    requests do not each open one. An outage is logged, and left to the requests."""
    with app.app_context():
        engine = db.engine
    connections = []
    try:
        for _ in range(count):
            connections.append(engine.connect())
    except DBAPIError as error:
        log.warning("could not open connections at start: %s", describe_outage(error))
    finally:
        for connection in connections:
            connection.close()


def _not_a_pipeline_aborted(record: logging.LogRecord) -> bool:
    """False for psycopg's "error ignored terminating <Pipeline>: pipeline aborted".

    psycopg logs it when a statement in a pipeline (``run_walking_indexes_on_driver``)
    failed and the commands queued after it were dropped: the failure itself is
    raised, and reported once (``report_failure``), so this warning only repeated it,
    at every try of a loop.
    """
    args = record.args if isinstance(record.args, tuple) else ()
    return not (
        str(record.msg).startswith("error ignored terminating")
        and len(args) == 2
        and type(args[1]).__name__ == "PipelineAborted"  # no import: SQLite starts without it
    )


def init_app(app: Flask) -> None:
    """Call after ``db.init_app``: teardowns run in reverse order, so this one goes first."""
    logging.getLogger("psycopg").addFilter(_not_a_pipeline_aborted)  # once: no duplicates
    app.teardown_appcontext(close_session_quietly)
    app.register_error_handler(DBAPIError, answer_outage)
    app.register_error_handler(PoolTimeoutError, answer_outage)
