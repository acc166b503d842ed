"""Services whose every method is one transaction: the queue's, and the webhooks'.

A service works on the SQLAlchemy session it is given, or on Flask-SQLAlchemy's
``db.session``, and each of its methods begins a transaction of its own and
commits it, so a caller never has to.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Delete, Select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .config import SQLITE_BUSY_TIMEOUT_SECONDS
from .database import database_now
from .models import SQLITE_WRITE_OPTION, db, sqlite_write_on_driver

# PostgreSQL, in a range delete's transaction: no bitmap scans. With them the purge
# joined its batch's range of ids with the status index's entries of every item left
# to delete (50,000 read for 250 deleted), each batch again.
RANGE_DELETE_PLANNER_SETTINGS = text("SELECT set_config('enable_bitmapscan', 'off', true)")

# Actions a write asked for once its transaction commits (``after_commit``).
_AFTER_COMMIT = "docqueue_after_commit"


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` once the service's current write commits; never if it rolls back."""
    session.info.setdefault(_AFTER_COMMIT, set()).add(action)


def one_statement_options(session: Session) -> dict[str, Any]:
    """Execution options for a transaction of one statement.

    On PostgreSQL it runs in autocommit: a statement is a transaction of its own
    there, and that saves the BEGIN and COMMIT round trips. SQLite keeps its
    BEGIN, which decides how the write lock is taken.
    """
    if session.get_bind().dialect.name == "postgresql":
        return {"isolation_level": "AUTOCOMMIT"}
    return {}


class _WriteTurns:
    """SQLite writes one transaction at a time, and its busy handler polls for the
    lock with sleeps that grow to 100 ms, so a waiting writer sleeps through many
    transactions of the others. The threads of one process (a gunicorn worker's, a
    queue worker's claiming and bookkeeping threads) take turns here instead: each
    is woken as soon as the one before it has committed, and only one per process
    waits on SQLite's lock. Uploads over HTTP, 8 clients: p99 107-133 ms before,
    26-33 ms with this and models._take_write_lock.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # Also in a forked child, which may have copied the lock held by a thread it lacks.
        self.lock = threading.RLock()

    @contextmanager
    def turn(self, session: Session) -> Iterator[None]:
        """The process's turn to write, on SQLite; waited for no longer than SQLite would."""
        if session.get_bind().dialect.name != "sqlite":
            yield
            return
        lock = self.lock
        taken = lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
        try:
            yield  # when not taken, SQLite's own wait decides
        finally:
            if taken:
                lock.release()


_write_turns = _WriteTurns()
os.register_at_fork(after_in_child=_write_turns.reset)


class TransactionalService:
    """The transactions of a service: fresh ones, and writes that hold the lock up front."""

    def __init__(self, session: Session | None = None) -> None:
        # The scoped session's current Session: the service needs its transaction API.
        self.session = session if session is not None else db.session()

    @contextmanager
    def _write(self, **execution_options: Any) -> Iterator[Session]:
        """A fresh transaction that holds the write lock from its first statement."""
        session = self._fresh_session()
        with _write_turns.turn(session):
            try:
                session.connection(
                    execution_options={SQLITE_WRITE_OPTION: True, **execution_options}
                )
                yield session
                session.commit()
            except BaseException:
                session.info.pop(_AFTER_COMMIT, None)
                session.rollback()
                raise
        for action in session.info.pop(_AFTER_COMMIT, ()):
            action()

    @contextmanager
    def _write_on_connection(self, **execution_options: Any) -> Iterator[Connection]:
        """``_write`` on a connection of its own, for statements that need no ORM session.

        The uploads' store runs here: the session's transaction bookkeeping cost
        more than a tenth of an in-process upload (PostgreSQL 0.61-0.68 ms per
        upload with it, 0.52-0.56 without; SQLite 0.52-0.65 and 0.47-0.48).
        """
        session = self._fresh_session()
        with _write_turns.turn(session), session.get_bind().connect() as connection:
            if connection.dialect.name == "sqlite":
                with sqlite_write_on_driver(connection):
                    yield connection
                return
            connection.execution_options(**execution_options)
            with connection.begin():
                yield connection

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A fresh transaction, so reads see everything committed before the call."""
        session = self._fresh_session()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()

    def _fresh_session(self) -> Session:
        """The session with no transaction open: one left by its caller is ended first.

        A transaction whose connection was lost (a database restart) is rolled
        back rather than committed, so the session reconnects instead of refusing
        every later call.
        """
        session = self.session
        transaction = session.get_transaction()
        if transaction is not None:
            if transaction.is_active:
                session.commit()
            else:
                session.rollback()
        return session

    def _now(self) -> datetime:
        return database_now(self.session)

    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def _delete_older_than(
        self,
        days: float,
        bounds: Callable[[datetime], Select],
        batch: Callable[[datetime, int, int], Delete],
        batch_size: int,
    ) -> int:
        """Delete the rows older than ``days`` in batches, each its own transaction
        over the next range of ids, so no lock is held long and no batch reads again
        what the ones before it passed or kept; how many.

        ``bounds(cutoff)`` selects the first and last id of what may go (None, None
        if none); ``batch(cutoff, after_id, up_to_id)`` deletes what goes among the
        ids past ``after_id`` up to ``up_to_id``, RETURNING their ids. A range holds
        about ``batch_size`` deletions: wider (up to 8 times) where few go.
        """
        with self._read() as session:
            cutoff = self._now() - timedelta(days=days)
            first_id, last_id = session.execute(bounds(cutoff)).one()
        if first_id is None:
            return 0
        after_id, width, deleted = first_id - 1, batch_size, 0
        while after_id < last_id:
            up_to_id = min(after_id + width, last_id)
            with self._write() as session:
                if self._dialect() == "postgresql":
                    session.execute(RANGE_DELETE_PLANNER_SETTINGS)
                found = len(session.scalars(batch(cutoff, after_id, up_to_id)).all())
            deleted += found
            after_id = up_to_id
            width = min(max(width * batch_size // max(found, 1), batch_size), 8 * batch_size)
        return deleted
