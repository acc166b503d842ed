"""Database tables: documents, their bytes, queue items and the history of attempts."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    select,
    text,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    deferred,
    mapped_column,
    relationship,
    undefer,
)

from .states import DeliveryStatus, DocumentStatus, ItemStatus


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every back end.

    SQLite has no timestamp type: values are stored as naive UTC text, which keeps
    ``run_at <= :now`` comparisons correct, and come back tagged as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite numbers a new row max(id) + 1 unless told otherwise: a deleted document's
# id, and its item's, would go to the next upload (migration 0008 says what broke).
NEVER_REUSED_IDS = {"sqlite_autoincrement": True}


class Document(db.Model):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("sha256", name="uq_documents_sha256"), NEVER_REUSED_IDS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default=DocumentStatus.PENDING, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    page_count: Mapped[int | None] = mapped_column(Integer)
    word_count: Mapped[int | None] = mapped_column(Integer)
    char_count: Mapped[int | None] = mapped_column(Integer)
    # Deferred: lists and status polls never need the (possibly large) text.
    text: Mapped[str | None] = deferred(mapped_column(Text))
    extracted_metadata: Mapped[dict | None] = deferred(mapped_column("metadata", JSON))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Receives this document's webhook events (SPEC §8), besides DOCQUEUE_WEBHOOK_URL.
    callback_url: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"<Document {self.id} {self.filename!r} {self.status}>"


# The document JSON shows the processor's metadata (a deferred column): loaded with
# the row, not by one more query per document.
WITH_METADATA = undefer(Document.extracted_metadata)


class DocumentContent(db.Model):
    """The uploaded bytes, in a table of their own so document rows stay small."""

    __tablename__ = "document_contents"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


_PENDING = text("status = 'pending'")
_IN_PROGRESS = text("status = 'in_progress'")


def partial_index(name: str, *columns: Any, where: Any, unique: bool = False) -> Index:
    """An index over the rows ``where`` holds, on both back ends."""
    return Index(name, *columns, unique=unique, sqlite_where=where, postgresql_where=where)


class QueueItem(db.Model):
    __tablename__ = "queue_items"
    __table_args__ = (
        # At most one not-yet-started item per document, even under racing enqueues.
        partial_index(
            "uq_queue_items_pending_document", "document_id", where=_PENDING, unique=True
        ),
        partial_index("ix_queue_items_lease", "lease_expires_at", where=_IN_PROGRESS),
        # "Is anything due?": the earliest pending run_at, whatever the backlog.
        partial_index("ix_queue_items_due", "run_at", where=_PENDING),
        Index("ix_queue_items_document_status", "document_id", "status"),
        Index("ix_queue_items_status_finished", "status", "finished_at"),
        NEVER_REUSED_IDS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    operation: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=ItemStatus.PENDING)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_by: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    history: Mapped[list[QueueAttempt]] = relationship(
        passive_deletes=True, order_by="QueueAttempt.id"
    )

    def __repr__(self) -> str:
        return f"<QueueItem {self.id} doc={self.document_id} {self.status} try={self.attempts}>"


# The claim orders by exactly these columns over due pending rows, so the
# database walks this index instead of sorting the whole backlog.
partial_index(
    "ix_queue_items_claim",
    QueueItem.priority.desc(),
    QueueItem.run_at,
    QueueItem.id,
    where=_PENDING,
)


class QueueAttempt(db.Model):
    """One row per attempt at a queue item: who ran it, when, and how it ended."""

    __tablename__ = "queue_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_item_id: Mapped[int] = mapped_column(
        ForeignKey("queue_items.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class QueueState(db.Model):
    """The queue's switches and clocks, one row: while ``paused``, nothing claims any item."""

    __tablename__ = "queue_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the pruner last ran, on any host: it runs once per cluster per interval.
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


QUEUE_STATE_ID = 1


class WebhookDelivery(db.Model):
    """One event for one destination (SPEC §8), sent until a 2xx answer or out of attempts.

    Written in the transaction of the outcome that causes it, with its body
    frozen then: every attempt sends the same bytes under the same
    ``delivery_id``. A sender holds a delivery while ``locked_until`` is in the
    future, so two processes do not send it at once; a sender that died is
    replaced once that lease runs out.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # "Which deliveries are due?" walks only the pending ones.
        partial_index("ix_webhook_deliveries_due", "next_attempt_at", where=_PENDING),
        Index("ix_webhook_deliveries_document", "document_id", "id"),
        Index("ix_webhook_deliveries_status", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The id a receiver sees (body "id", X-Docqueue-Delivery): a UUID, unique across installs.
    delivery_id: Mapped[str] = mapped_column(String(36), unique=True)
    # Kept when the document is deleted: its event is still owed to the receiver.
    document_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id", ondelete="SET NULL"))
    event: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    # The exact JSON body, frozen when the outcome was recorded.
    payload: Mapped[str] = mapped_column(Text, deferred=True)
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_by: Mapped[str | None] = mapped_column(String(255))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<WebhookDelivery {self.delivery_id} {self.event} {self.status}>"


def latest_items(
    session: Any, document_ids: list[int], refresh: bool = False
) -> dict[int, QueueItem]:
    """The latest queue item of each document, in one query.

    ``refresh`` reads items the session holds already afresh too (after
    statements that bypassed the session changed them).
    """
    if not document_ids:
        return {}
    newest = (
        select(db.func.max(QueueItem.id))
        .where(QueueItem.document_id.in_(document_ids))
        .group_by(QueueItem.document_id)
    )
    items = session.scalars(
        select(QueueItem)
        .where(QueueItem.id.in_(newest))
        .execution_options(populate_existing=refresh)
    )
    return {item.document_id: item for item in items}


# SQLite: WAL so readers never block the writer; FULL sync so a committed upload
# survives a power cut; foreign keys on so deletes cascade; and transactions
# begun by hand so that queue writes can take the write lock up front
# (BEGIN IMMEDIATE) instead of failing when a read lock must be upgraded.
SQLITE_WRITE_OPTION = "docqueue_write"


# SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries for
# the write lock, so under contention a waiter sleeps through several short
# transactions of the others: in a drain of two workers (each with a claiming and
# a bookkeeping thread) BEGIN IMMEDIATE waited 1 ms or more in 12% of transactions,
# 54 ms at the 99th percentile. For this long, docqueue tries again itself, at
# most WRITE_LOCK_STEP_SECONDS apart; SQLite's handler takes over after.
WRITE_LOCK_FINE_WAIT_SECONDS = 0.2
WRITE_LOCK_STEP_SECONDS = 0.001
_BUSY_TIMEOUT_MS = "docqueue_busy_timeout_ms"


@event.listens_for(Engine, "connect")
def _configure_sqlite(dbapi_connection: Any, record: Any) -> None:
    if type(dbapi_connection).__module__ != "sqlite3":
        return
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=FULL",
        "foreign_keys=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    record.info[_BUSY_TIMEOUT_MS] = cursor.execute("PRAGMA busy_timeout").fetchone()[0]
    cursor.close()


@event.listens_for(Engine, "begin")
def _begin_sqlite(connection: Any) -> None:
    if connection.dialect.name != "sqlite":
        return
    if connection.get_execution_options().get(SQLITE_WRITE_OPTION):
        _take_write_lock(connection)
    else:
        run_on_driver(connection, "BEGIN")


def _take_write_lock(connection: Connection) -> None:
    """BEGIN IMMEDIATE: tried again every millisecond at first, then with SQLite's wait."""
    busy_timeout_ms = connection.connection.info.get(_BUSY_TIMEOUT_MS, 0)
    fine_wait = min(WRITE_LOCK_FINE_WAIT_SECONDS, busy_timeout_ms / 1000)
    if fine_wait > 0:
        run_on_driver(connection, "PRAGMA busy_timeout = 0")
        try:
            if _try_write_lock(connection.connection.dbapi_connection, fine_wait):
                return
        finally:
            run_on_driver(connection, f"PRAGMA busy_timeout = {busy_timeout_ms}")
    run_on_driver(connection, "BEGIN IMMEDIATE")  # the rest of the busy timeout, or its error


def _try_write_lock(dbapi_connection: Any, seconds: float) -> bool:
    """Whether BEGIN IMMEDIATE got the lock within ``seconds``, tried every step."""
    deadline = time.monotonic() + seconds
    pause = WRITE_LOCK_STEP_SECONDS / 2
    while True:
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.Error as error:
            busy = getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                return False  # the last try, through run_on_driver, raises what is wrong
        time.sleep(pause)
        pause = min(pause * 2, WRITE_LOCK_STEP_SECONDS)


@contextlib.contextmanager
def sqlite_write_on_driver(connection: Connection) -> Iterator[None]:
    """A SQLite write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) kept on the
    driver, for blocks whose every statement runs there (``run_on_driver``).

    SQLAlchemy's transaction around such a block (its begin and commit, their
    events, and the pool's rollback after) was a fifth of an in-process upload's
    instructions (callgrind: 1.01 million an upload with it, 0.82 without). The
    claims of a SQLite worker run here too. A statement run through SQLAlchemy
    inside the block would begin a transaction of its own, which SQLite refuses
    ("cannot start a transaction within a transaction"): it fails, loudly.
    """
    _take_write_lock(connection)
    try:
        yield
        run_on_driver(connection, "COMMIT")
    except BaseException:
        _roll_back_on_driver(connection)
        raise


def _roll_back_on_driver(connection: Connection) -> None:
    """End a failed block's transaction, if SQLite has not ended it already (a COMMIT
    that failed on a full disk may have); the error being raised is what matters."""
    if connection.invalidated:
        return
    dbapi_connection = connection.connection.dbapi_connection
    with contextlib.suppress(sqlite3.Error):
        if dbapi_connection.in_transaction:
            dbapi_connection.execute("ROLLBACK")


def stored_timestamp(connection: Connection, moment: datetime | None) -> Any:
    """``moment`` exactly as a ``UTCDateTime`` column stores it on the connection's
    database, for statements run on the driver: on SQLite the ORM's naive UTC text,
    always with six digits of microseconds. A fencing check compares a claim's
    ``started_at`` as that text, and the driver's own datetime adapter drops the
    digits when they are zero."""
    return _timestamp_writer(connection.dialect)(moment)


@functools.cache
def _timestamp_writer(dialect: Dialect) -> Callable[[datetime | None], Any]:
    # The dialect's own type (SQLite's DATETIME formats the text), not the generic one.
    return UTCDateTime().dialect_impl(dialect).bind_processor(dialect)


_BINARY_ROWS = {"binary": True}  # psycopg's execute()


# libpq keeps its input and output buffers as large as the largest message a connection
# carried, for the connection's life: a pooled connection that sent a 50 MB upload or
# read a 50 MB document held that much of its process's memory until it was closed.
LARGEST_POOLED_MESSAGE_BYTES = 8 * 1024 * 1024


def unpooled_after_large_message(connection: Connection, message_bytes: int) -> None:
    """Close ``connection`` when its transaction ends, instead of pooling it, if it
    carries a message of ``message_bytes`` past LARGEST_POOLED_MESSAGE_BYTES (the next
    transaction opens a new one: milliseconds, beside moving megabytes)."""
    if message_bytes >= LARGEST_POOLED_MESSAGE_BYTES:
        connection.detach()


def run_on_driver(
    connection: Connection, statement: str, parameters: Sequence[Any] | Mapping[str, Any] = ()
) -> Any:
    """Run one statement on the driver's connection itself (sqlite3, psycopg); its cursor.

    For the statements of every upload and of every SQLite transaction (BEGIN):
    SQLAlchemy's execution path (an execution context, a result, events) cost more
    CPU than the database's own work on them (py-spy: a third of an upload on
    PostgreSQL, a quarter on SQLite). Errors are raised as SQLAlchemy would have
    raised them, and a lost connection is invalidated, so outages (a restart, a
    full disk, a lock held too long) are handled as everywhere else.

    PostgreSQL's rows come in its binary format: in text a document's bytes travel
    as hex, twice their size, which the server writes and the worker decodes (24
    instructions a byte in libpq's PQunescapeBytea, callgrind: 1.3 million for a
    42 KB PDF in a claim).
    """
    dbapi_connection = connection.connection.dbapi_connection
    options = _BINARY_ROWS if connection.dialect.name == "postgresql" else {}
    with raised_as_sqlalchemy_would(connection, statement, parameters):
        return dbapi_connection.execute(statement, parameters, **options)


# Within its transaction, a sort costs PostgreSQL's planner more than any index walk.
_WITHOUT_SORTS = (
    "SELECT set_config('enable_sort', 'off', true),"
    " set_config('enable_incremental_sort', 'off', true)"
)


def run_walking_indexes_on_driver(
    connection: Connection, statement: str, parameters: Mapping[str, Any]
) -> Any:
    """PostgreSQL: ``run_on_driver`` for a statement whose ``ORDER BY ... LIMIT`` must
    be read from an index in that order, whatever the statistics say; its cursor.

    PostgreSQL has no index hints. The statement runs in a transaction of its own
    in which the planner counts any sort dearer than any walk, so the walk of an
    index in the order asked for is the plan it takes (the claim's walk of
    ix_queue_items_claim, an O(log n) range per priority). Without that,
    statistics taken while the queue was idle (no item pending) made the planner
    read a whole burst of uploads and sort it, at every claim. BEGIN, the settings,
    the statement and COMMIT go in one round trip (psycopg's pipeline), on a
    connection in autocommit.
    """
    dbapi_connection = connection.connection.dbapi_connection
    with (
        raised_as_sqlalchemy_would(connection, statement, parameters),
        dbapi_connection.pipeline(),
    ):
        dbapi_connection.execute("BEGIN")
        dbapi_connection.execute(_WITHOUT_SORTS)
        cursor = dbapi_connection.execute(statement, parameters, **_BINARY_ROWS)
        dbapi_connection.execute("COMMIT")
    return cursor


def walk_indexes(connection: Connection) -> None:
    """PostgreSQL: the rest of the connection's transaction is planned as
    ``run_walking_indexes_on_driver`` plans its statement, so each ORDER BY in it
    must be one an index answers (a sort no index spares would be paid all the same,
    but chosen over any other plan)."""
    if connection.dialect.name == "postgresql":
        run_on_driver(connection, _WITHOUT_SORTS)


@contextlib.contextmanager
def raised_as_sqlalchemy_would(
    connection: Connection, statement: str, parameters: Any
) -> Iterator[None]:
    """The driver's errors as SQLAlchemy's; a lost connection is invalidated, and with
    it every pooled connection opened before it, as SQLAlchemy does.

    The others were most likely cut too (a restart, a failover): invalidating this
    one alone handed the next pass another dead connection, one failed pass (and one
    backoff pause) per pooled connection after the database came back.
    """
    try:
        yield
    except connection.dialect.loaded_dbapi.Error as error:
        dbapi_connection = connection.connection.dbapi_connection
        lost = connection.dialect.is_disconnect(error, dbapi_connection, None)
        if lost:
            connection.engine.pool._invalidate(connection.connection, error, _checkin=False)
            connection.invalidate(error)
        raise DBAPIError.instance(
            statement,
            parameters,
            error,
            connection.dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=connection.dialect,
        ) from error
