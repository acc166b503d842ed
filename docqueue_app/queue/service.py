"""DocumentQueueService: the only code that writes queue and document state.

Every method runs in a transaction of its own and commits it. Claims are atomic
compare-and-set statements: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, and on
SQLite a ``BEGIN IMMEDIATE`` transaction that holds the database's write lock.
The statements live in ``queries.py``; what becomes of an attempt that did not
succeed is decided in ``retry.py``; this module holds the transactions.

Fencing: each claim records the worker and the attempt number on the item
object (``item.claim``). An outcome is only recorded while the row still shows
that worker and that attempt, so a worker whose lease was taken over (or whose
item was cancelled) cannot overwrite what happened since.

Two rules keep every document's history straight:

- at most one pending item per document: an item that would become pending
  again while its document has a newer pending item folds into it (it ends
  ``cancelled``, superseded); the newer item runs the document anyway;
- a document's status is its latest item's, so only the latest item can be
  retried, and purging never removes it.

A transaction that ends an item (completed, failed for good, cancelled by an
admin) also records the webhook deliveries its document's event owes
(``webhooks.events``), so an outcome and its deliveries commit together.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from flask import current_app
from marshmallow import ValidationError
from sqlalchemy import Connection, delete, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from ..database import database_clock, is_outage
from ..metrics import record_rescues
from ..models import (
    QUEUE_STATE_ID,
    WITH_METADATA,
    Document,
    DocumentContent,
    QueueItem,
    QueueState,
    UTCDateTime,
    latest_items,
    run_on_driver,
    run_walking_indexes_on_driver,
    stored_timestamp,
    unpooled_after_large_message,
    utcnow,
    walk_indexes,
)
from ..schemas import describe_validation_errors, load_processor_result
from ..states import (
    DEFAULT_PRIORITY,
    FINISHED_STATUSES,
    MAX_PRIORITY,
    MIN_PRIORITY,
    AttemptOutcome,
    DocumentStatus,
    ItemStatus,
    Operation,
    WebhookEvent,
)
from ..transactions import TransactionalService, one_statement_options
from ..webhooks.events import DocumentEvent, record_events
from . import queries
from .counts import count_words
from .notify import announce_due_work, notify_in_transaction
from .retry import Cause, Decision, RetryPolicy, decide, lost_worker_message
from .submissions import NewDocument, StoredDocument, Submission, store_new_documents

log = logging.getLogger(__name__)

_ERROR_LIMIT = 4000
# Rows handled per transaction by the rescuer and by purges, so neither holds
# SQLite's write lock (or PostgreSQL row locks) for long on a big backlog.
MAINTENANCE_BATCH = 500
# Items changed per transaction by the admin's bulk actions ("Retry all failed", Retry
# and Cancel of a selection), for the same reason: one transaction per item took
# 103 s to retry 10,000 failed items on PostgreSQL (58 s on SQLite), one for all
# of them would hold the locks that long.
BULK_BATCH = 500
RETRYABLE_STATUSES = (ItemStatus.FAILED, ItemStatus.CANCELLED)
CANCELLABLE_STATUSES = (ItemStatus.PENDING, ItemStatus.IN_PROGRESS)


class DocumentNotFound(LookupError):
    """The document does not exist (any more)."""


class InvalidTransition(RuntimeError):
    """The item or document is not in a state that allows the action."""


class ChangedSince(RuntimeError):
    """The document changed after the time a conditional request named (HTTP 412)."""


@dataclass(frozen=True)
class Claim:
    """Who holds an item, for which attempt, since when: the fencing token.

    ``started_at`` (the claim's time) tells two claims apart that share a worker
    and an attempt number: a retry resets attempts (SPEC §4), so after a cancel
    and a retry the same worker's next claim is attempt 1 again, and the cancelled
    run must stay fenced off all the same.
    """

    worker: str
    attempt: int
    started_at: datetime | None


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed item: its result, or an error (permanent or not).

    It carries the item's id and claim, not the ORM object, so it can be written
    from another thread and session than the one that claimed the item.
    """

    item_id: int
    claim: Claim
    result: dict[str, Any] | None = None
    error: str | None = None
    permanent: bool = False
    # Whether the item's document has a callback_url, when the claim said (None: unknown).
    has_callback: bool | None = None

    @classmethod
    def of(cls, item: QueueItem | ClaimedItem, **details: Any) -> Outcome:
        has_callback = getattr(item, "has_callback", None)
        return cls(_id_of(item), _claim_of(item), has_callback=has_callback, **details)

    @classmethod
    def success(cls, item: QueueItem | ClaimedItem, result: Any) -> Outcome:
        """A processor's result; one not of the shape SPEC §5 asks fails permanently."""
        try:
            checked = load_processor_result(result)
        except ValidationError as exc:
            message = describe_validation_errors(exc.messages)
            return cls.of(item, error=f"invalid processor result: {message}", permanent=True)
        return cls.of(item, result=checked)

    @property
    def key(self) -> tuple[int, str, int, datetime | None]:
        return (self.item_id, self.claim.worker, self.claim.attempt, self.claim.started_at)


class Queued(NamedTuple):
    """A document queued again and its item, as the queueing transaction left them."""

    document: Document
    item: QueueItem


class ClaimedDocument(NamedTuple):
    """An item's document as a PostgreSQL claim read it (all None: the document is gone)."""

    size: int | None
    content: bytes | None  # None when larger than the claim was asked to read
    filename: str | None
    content_type: str | None


@dataclass(eq=False, slots=True)
class ClaimedItem:
    """A queue item as a claim returned it: the row's columns as they are now and, on
    PostgreSQL, what the claim read of its document.

    Not an ORM object: building one per claimed row (31 µs each) took twice the
    CPU of running the claim itself on the driver (14 µs a row, claims of 100).
    It reads like a ``QueueItem`` and is accepted wherever a claimed one is.
    """

    id: int
    document_id: int
    operation: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    locked_by: str
    lease_expires_at: datetime | None
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    document_read: ClaimedDocument | None = None
    # Whether its document has a callback_url, as the claim read it (None: unknown).
    has_callback: bool | None = None

    @property
    def claim(self) -> Claim:
        """The fencing token: the claim just set both columns."""
        return Claim(self.locked_by, self.attempts, self.started_at)


_ITEM_TIMESTAMPS = frozenset(
    column.key for column in QueueItem.__table__.columns if isinstance(column.type, UTCDateTime)
)
_ITEM_FIELDS = tuple(
    field.name
    for field in fields(ClaimedItem)
    if field.name not in ("document_read", "has_callback")
)
# The column of a claim's rows that says whether the item's document has a callback_url.
_HAS_CALLBACK = "document_has_callback"


@functools.lru_cache(maxsize=8)
def _item_layout(columns: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where each of a ``ClaimedItem``'s fields is among a claim's item ``columns``, and
    which fields are timestamps: worked out once per statement, not per row."""
    positions = tuple(columns.index(name) for name in _ITEM_FIELDS)
    timestamps = tuple(n for n, name in enumerate(_ITEM_FIELDS) if name in _ITEM_TIMESTAMPS)
    return positions, timestamps


_UTC_DATETIME = UTCDateTime()


def _read_timestamp(value: datetime | str | None) -> datetime | None:
    """A timestamp as the driver read it (SQLite: naive UTC text), as the ORM reads it."""
    if value is None or getattr(value, "tzinfo", None) is UTC:
        return value  # PostgreSQL's, in docqueue's UTC sessions: already so
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return _UTC_DATETIME.process_result_value(value, None)


class CompletedItem(NamedTuple):
    """An item a record of successes completed, as its statement returns it."""

    id: int
    document_id: int
    callback_url: str | None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class DocumentQueueService(TransactionalService):
    """Every change to queue items and document status, each method one transaction."""

    def __init__(self, session: Session | None = None) -> None:
        super().__init__(session)
        config = current_app.config
        self.max_attempts: int = config["MAX_ATTEMPTS"]
        self.lease = timedelta(seconds=config["LEASE_SECONDS"])
        self.policy = RetryPolicy(config["RETRY_BASE_SECONDS"], config["RETRY_MAX_SECONDS"])

    def _exists(self, query: Any) -> bool:
        return self.session.execute(query.limit(1)).first() is not None

    def _paused(self) -> bool:
        return bool(self.session.scalar(queries.paused()))

    # -- documents --------------------------------------------------------------

    def submit_document(
        self,
        filename: str,
        content: bytes,
        content_type: str,
        priority: int = DEFAULT_PRIORITY,
    ) -> tuple[Document, bool]:
        """Store an upload's bytes, its row and its queue item in one transaction.

        Returns ``(document, created)``; the same bytes uploaded before give the
        existing document and ``created=False``, with nothing enqueued.
        """
        [submission] = self.submit([NewDocument(filename, content, content_type, priority)])
        return submission.document, submission.created

    def submit_documents(self, files: Sequence[NewDocument]) -> list[tuple[Document, bool]]:
        """Store many files as ``submit_document`` does each, all in ONE transaction.

        ``(document, created)`` for each file, in order; bytes stored before (or
        earlier in ``files``) give that document and ``created=False``. When any
        file cannot be stored, none is. On PostgreSQL the whole batch travels in
        one statement: split a large import into batches of a few megabytes.
        """
        return [(submission.document, submission.created) for submission in self.submit(files)]

    def submit(self, files: Sequence[NewDocument]) -> list[Submission]:
        """What ``submit_documents`` does, with the queue item made for each new document."""
        for file in files:
            _check_priority(file.priority)
        digests = [hashlib.sha256(file.content).hexdigest() for file in files]
        first_of_each: dict[str, NewDocument] = {}
        for digest, file in zip(digests, files, strict=True):
            first_of_each.setdefault(digest, file)
        stored = self._store_new_documents(first_of_each)
        answered: set[str] = set()
        submissions = []
        for digest in digests:
            submission = stored[digest]
            if digest in answered:  # the same bytes again in this batch
                submission = replace(submission, created=False)
            answered.add(digest)
            submissions.append(submission)
        return submissions

    def _store_new_documents(self, files: dict[str, NewDocument]) -> dict[str, Submission]:
        """Each file's submission, by sha256: its document created now, or the one stored before.

        Nothing is read before writing: the insert skips bytes stored already,
        and only those are looked up after, in a transaction of their own. On
        PostgreSQL the one statement runs in autocommit (a statement is a
        transaction of its own), which saves the BEGIN and COMMIT round trips.
        """
        with self._write_on_connection(**one_statement_options(self.session)) as connection:
            written = store_new_documents(connection, files, self.max_attempts)
        submissions = self._documents_by_sha256(
            [digest for digest in files if digest not in written]
        )
        if written:
            announce_due_work(self.session)
        for digest, row in written.items():
            submissions[digest] = self._created(files[digest], digest, row)
        vanished = {digest: file for digest, file in files.items() if digest not in submissions}
        if vanished:
            # Stored by a racing upload, then deleted before it was looked up: store it again.
            submissions.update(self._store_new_documents(vanished))
        return submissions

    def _documents_by_sha256(self, digests: list[str]) -> dict[str, Submission]:
        """The documents stored before with these bytes, each with its latest item, as
        one transaction read them (detached): an upload answers them as found.

        Out of the session, which would expire them at the commit (as
        ``enqueue_and_show`` does): read again for the answer, a document deleted
        in between made that answer an ObjectDeletedError (a 500).
        """
        if not digests:
            return {}
        with self._read() as session:
            documents = session.scalars(
                select(Document).where(Document.sha256.in_(digests)).options(WITH_METADATA)
            ).all()
            items = latest_items(session, [document.id for document in documents])
            for row in (*documents, *items.values()):
                session.expunge(row)
        return {
            document.sha256: Submission(document, created=False, item=items.get(document.id))
            for document in documents
        }

    def _created(self, file: NewDocument, digest: str, row: StoredDocument) -> Submission:
        """A new document and its item as written, built without reading them back."""
        now = row.created_at
        document = _detached(
            Document,
            id=row.document_id,
            filename=file.filename,
            content_type=file.content_type,
            size=len(file.content),
            sha256=digest,
            status=DocumentStatus.PENDING,
            callback_url=file.callback_url,
            created_at=now,
            updated_at=now,
        )
        item = _detached(
            QueueItem,
            id=row.item_id,
            **self._new_item_columns(row.document_id, Operation.PROCESS, file.priority, now),
        )
        return Submission(document, created=True, item=item)

    def delete_document(self, document_id: int, unmodified_since: datetime | None = None) -> bool:
        """Remove a document, its bytes, its queue items and their history.

        With ``unmodified_since``, only when the document has not changed after that
        time (to the second, as HTTP dates go): else ``ChangedSince``, nothing deleted.
        """
        with self._write() as session:
            items = select(QueueItem.id).where(QueueItem.document_id == document_id)
            # Items before their history, as every writer of an item takes them: a
            # worker recording an outcome holds the item and then writes its history
            # row, and a delete that took the history first deadlocked with it.
            session.execute(items.order_by(QueueItem.id).with_for_update())
            self._check_unmodified_since(document_id, unmodified_since)
            for statement in queries.delete_items(items):
                session.execute(statement)
            session.execute(
                delete(DocumentContent).where(DocumentContent.document_id == document_id)
            )
            deleted = session.execute(delete(Document).where(Document.id == document_id))
        return deleted.rowcount > 0

    # -- enqueue ----------------------------------------------------------------

    def enqueue(
        self, document_id: int, operation: str, priority: int = DEFAULT_PRIORITY
    ) -> QueueItem:
        """Queue work for a document, coalescing with its not-yet-started item.

        The item is returned as this call committed it (detached).
        """
        return self.enqueue_and_show(document_id, operation, priority).item

    def enqueue_and_show(
        self,
        document_id: int,
        operation: str,
        priority: int = DEFAULT_PRIORITY,
        unmodified_since: datetime | None = None,
    ) -> Queued:
        """``enqueue``, with the document as the same transaction left it (detached).

        What a reprocess answers (SPEC §4: the document pending): a worker woken by
        the commit may have taken the item, even finished it, before the answer is
        written, so the answer is not read after the commit. With
        ``unmodified_since``, only when the document has not changed after that
        time: else ``ChangedSince``, nothing queued.
        """
        operation = Operation(operation)
        _check_priority(priority)
        try:
            return self._enqueue(document_id, operation, priority, unmodified_since)
        except IntegrityError:
            # A concurrent enqueue (or retry) made the pending item first: join it.
            return self._enqueue(document_id, operation, priority, unmodified_since)

    def _enqueue(
        self,
        document_id: int,
        operation: Operation,
        priority: int,
        unmodified_since: datetime | None = None,
    ) -> Queued:
        with self._write() as session:
            now = self._now()
            if session.get(Document, document_id) is None:
                raise DocumentNotFound(document_id)
            pending = session.scalar(queries.pending_item_of(document_id))
            self._check_unmodified_since(document_id, unmodified_since)
            if pending is not None:
                pending.priority = max(pending.priority, priority)
                pending.run_at = min(pending.run_at, now)
                item = pending
            else:
                item = self._new_item(document_id, operation, priority, now)
                session.add(item)
            session.flush()
            self._sync_documents([document_id], now)
            document = session.get(
                Document, document_id, populate_existing=True, options=[WITH_METADATA]
            )
            # Out of the session, so the commit does not expire what it committed.
            session.expunge(document)
            session.expunge(item)
        announce_due_work(self.session)
        return Queued(document, item)

    def _check_unmodified_since(self, document_id: int, since: datetime | None) -> None:
        """Raise ``ChangedSince`` when the document changed after ``since``.

        Judged in the transaction that makes the change, the document locked (after
        its items, as every writer takes them): judged before it, a worker's outcome
        landing in between was deleted or queued over as if unseen.
        """
        if since is None:
            return
        updated_at = self.session.scalar(queries.updated_at_locked(document_id))
        if updated_at is not None and updated_at.replace(microsecond=0) > since:
            raise ChangedSince(f"document {document_id} changed after {since.isoformat()}")

    def _new_item(
        self, document_id: int, operation: Operation, priority: int, now: datetime
    ) -> QueueItem:
        return QueueItem(**self._new_item_columns(document_id, operation, priority, now))

    def _new_item_columns(
        self, document_id: int, operation: Operation, priority: int, now: datetime
    ) -> dict[str, Any]:
        return {
            "document_id": document_id,
            "operation": operation,
            "status": ItemStatus.PENDING,
            "priority": priority,
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "run_at": now,
            "created_at": now,
        }

    # -- claiming ---------------------------------------------------------------

    def get_pending_items(self, limit: int) -> list[QueueItem]:
        """Due items in claim order: highest priority first, then oldest.

        Items whose lease ran out are first handed back (or failed when they had
        no attempts left), so they appear here as due pending items.
        """
        self.rescue_expired_leases()
        with self._read() as session:
            walk_indexes(session.connection())  # as the claim does
            chosen = queries.claimable_batch(self._dialect(), self._now(), limit).subquery()
            items = session.scalars(select(QueueItem).join(chosen, chosen.c.id == QueueItem.id))
            return queries.in_claim_order(items)

    def mark_in_progress(self, item: QueueItem, worker_id: str | None = None) -> bool:
        """Claim one item; False when another worker got it first (or it is not due).

        An item whose lease expired is first rescued like every other, so taking
        it over counts the lost attempt and never leaves two items of one
        document in progress.
        """
        worker = worker_id or default_worker_id()
        item_id = _id_of(item)
        if self.is_paused():
            return False  # a paused queue claims nothing, and a claim's rescue waits too
        self.rescue_expired_leases()
        with self._write() as session:
            now = self._now()
            if self._paused():
                return False
            chosen = (
                queries.due_items(now)
                .where(QueueItem.id == item_id)
                .with_for_update(skip_locked=True, of=QueueItem)
            )
            claimed = self._claim(chosen, worker, now)
        if not claimed:
            return False
        item.claim = Claim(worker, claimed[0].attempts, claimed[0].started_at)
        session.refresh(item)
        return True

    def claim_due_items(
        self, limit: int, worker_id: str, look_first: bool = True, bytes_up_to: int = 0
    ) -> list[ClaimedItem]:
        """Claim up to ``limit`` due items in one statement (the worker's fast path).

        Returned in claim order; nothing is claimed while the queue is paused.
        ``look_first`` polls before claiming: an idle poll never takes SQLite's
        write lock, and it rescues expired leases. A caller that expects work
        (it was just woken) skips it: that saves a round trip and a
        transaction on the way to the first document.

        On PostgreSQL the claim also reads each item's document (its
        ``document_read``, a ``ClaimedDocument``): the bytes of those no larger
        than ``bytes_up_to`` come with the claim, which spares a round trip
        between an upload and its processing.
        """
        now = None
        if look_first:
            # One read-only statement decides the poll; its time serves the claim
            # too (a database time a few milliseconds old).
            with self._read() as session:
                walk_indexes(session.connection())
                look = session.execute(queries.poll(self._dialect())).one()
            if look.paused:
                return []
            now = look.now
            if look.lost:
                self.rescue_expired_leases()
                now = None  # what the rescue made due is due by its later time
            elif not look.due:
                return []
        if self._dialect() == "postgresql":
            return self._claim_batch_postgresql(limit, worker_id, bytes_up_to)
        return self._claim_batch_sqlite(limit, worker_id, now)

    def _claim_batch_postgresql(
        self, limit: int, worker: str, bytes_up_to: int
    ) -> list[ClaimedItem]:
        statement, parameters = queries.claim_batch_postgresql(
            limit, worker, self.lease, bytes_up_to
        )
        with self._write_on_connection(**one_statement_options(self.session)) as connection:
            cursor = run_walking_indexes_on_driver(connection, statement, parameters)
            return _claimed_items(cursor, queries.CLAIMED_DOCUMENT_COLUMNS)

    def _claim_batch_sqlite(
        self, limit: int, worker: str, now: datetime | None
    ) -> list[ClaimedItem]:
        with self._write_on_connection() as connection:
            now = now or self._now()
            stamp = stored_timestamp(connection, now)
            expires = stored_timestamp(connection, now + self.lease)
            claim = queries.claim_batch_sqlite(limit, worker, stamp, expires)
            items = _claimed_items(run_on_driver(connection, *claim))
            if items:
                for follow in queries.follow_claims_sqlite([item.id for item in items], stamp):
                    run_on_driver(connection, *follow)
        return items

    def _claim(self, ids: Any, worker: str, now: datetime) -> list[QueueItem]:
        """Run the claim statement and record the attempts it opened; the claimed items."""
        items = list(self.session.scalars(queries.claim(ids, worker, now, self.lease)))
        if items:
            insert, values = queries.open_attempts(
                [(item.id, item.attempts) for item in items], worker, now
            )
            self.session.execute(insert, values)
            self._sync_documents([item.document_id for item in items], now)
        return items

    def extend_leases(self, claims: dict[int, Claim]) -> int:
        """Heartbeat: push out the leases of the items (id -> claim) a worker still holds."""
        if not claims:
            return 0
        extended = 0
        with self._write() as session:
            expires = self._now() + self.lease
            for item_id, claim in claims.items():
                statement = queries.extend_lease(item_id, claim, expires)
                extended += session.execute(statement).rowcount
        return extended

    def lost_claims(self, claims: dict[int, Claim]) -> set[int]:
        """The items (of id -> claim) no longer held: cancelled, taken over or deleted."""
        if not claims:
            return set()
        keys = [
            (item_id, claim.worker, claim.attempt, claim.started_at)
            for item_id, claim in claims.items()
        ]
        with self._read() as session:
            held = set(session.scalars(select(QueueItem.id).where(queries.held_by_any(keys))))
        return set(claims) - held

    def release_items(self, items: Iterable[QueueItem | ClaimedItem]) -> int:
        """Hand claimed but unstarted items back as pending, their attempt not counted.

        When the document got a newer pending item meanwhile, the released item
        folds into it (it is cancelled and the newer one keeps the higher priority).
        """
        released = []
        with self._write():
            now = self._now()
            for item in items:
                claim = _claim_of(item)
                row = self._lock_if_held(_id_of(item), claim)
                if row is not None:
                    self._settle(row, claim.attempt, Cause.RELEASED, None, now)
                    released.append(row.document_id)
            self._sync_documents(released, now)
        if released:
            announce_due_work(self.session)
        return len(released)

    # -- outcomes ---------------------------------------------------------------

    def mark_completed(
        self, item: QueueItem | ClaimedItem, result: dict[str, Any] | None = None
    ) -> bool:
        """Record success (and the extraction ``result`` on the document)."""
        outcome = Outcome.of(item) if result is None else Outcome.success(item, result)
        return self.record_outcomes([outcome]) == 1

    def mark_failed(
        self, item: QueueItem | ClaimedItem, error_message: str, permanent: bool = False
    ) -> bool:
        """Record a failure: back to pending after a backoff, or ``failed`` for good."""
        outcome = Outcome.of(item, error=error_message, permanent=permanent)
        return self.record_outcomes([outcome]) == 1

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> int:
        """Record the outcomes of several items in one transaction: one commit for all.

        Returns how many were recorded; an item whose claim no longer holds (its
        lease was taken over, it was cancelled, or its document deleted) is left
        as it is. When the database refuses the batch for its data (not because
        it is away), each outcome is written alone, so one unstorable result
        fails only its own document.
        """
        try:
            return self._record_outcomes(outcomes)
        except Exception as exc:
            if is_outage(exc):
                raise  # kept by the caller and written once the database is back
            if len(outcomes) > 1:
                log.warning(
                    "writing %d outcomes together failed (%s); one by one", len(outcomes), exc
                )
                return sum(self.record_outcomes([outcome]) for outcome in outcomes)
            [outcome] = outcomes
            if outcome.error is not None and outcome.permanent:
                raise  # even its failure cannot be written: kept, and tried again later
            log.warning("the outcome of queue item %s cannot be stored: %s", outcome.item_id, exc)
            unstorable = replace(
                outcome, result=None, error=f"the result cannot be stored: {exc}", permanent=True
            )
            return self._record_outcomes([unstorable])

    def _record_outcomes(self, outcomes: Sequence[Outcome]) -> int:
        if self._owe_no_webhook(outcomes):
            if self._dialect() == "postgresql":
                return self._record_in_one_statement(outcomes)
            recorded = self._record_on_driver(outcomes)
            if recorded is not None:
                return recorded
        failures = [o for o in outcomes if o.error is not None]
        settled = []
        events: list[DocumentEvent] = []
        with self._write():
            # Successes need the time only inside statements: no round trip for it.
            clock = database_clock(self._dialect())
            completed, unsynced = self._record_successes(
                [o for o in outcomes if o.error is None], events
            )
            if failures:
                now = self._now()  # the retry decision computes with it
                settled = [self._record_failure(outcome, now, events) for outcome in failures]
                settled = [document_id for document_id in settled if document_id is not None]
            self._sync_documents(unsynced + settled, clock)
            record_events(self.session, events)
        return completed + len(settled)

    def _owe_no_webhook(self, outcomes: Sequence[Outcome]) -> bool:
        """Whether ``outcomes`` are successes whose documents owe no webhook (no global
        URL, and the claim saw no callback_url, which is set at upload and never
        changed): recorded without the session, on PostgreSQL in one statement in
        autocommit (``_record_in_one_statement``), on SQLite on the driver
        (``_record_on_driver``)."""
        return not current_app.config["WEBHOOK_URL"] and all(
            o.error is None and o.has_callback is False for o in outcomes
        )

    def _record_in_one_statement(self, outcomes: Sequence[Outcome]) -> int:
        """``_record_outcomes`` on PostgreSQL when ``_owe_no_webhook``: the statement in
        autocommit on a connection of its own, without the session, whose transaction
        bookkeeping cost more CPU than the statement's own (111 against 39 us a record);
        a BEGIN and COMMIT around it were two of the four round trips of a pass at
        claims of 10.

        Their documents owe no webhook: the claim said none has a callback_url, which
        is set at upload and never changed. Should one have it all the same, its
        deliveries are recorded at once after (in autocommit they were anyway).
        """
        with self._write_on_connection(**one_statement_options(self.session)) as connection:
            rows = self._complete_postgresql(outcomes, connection)
        events: list[DocumentEvent] = []
        recorded = self._completed(outcomes, rows, events)
        owed = [event for event in events if event.has_callback]
        if owed:
            with self._write():
                record_events(self.session, owed)
        return len(recorded)

    def _record_on_driver(self, outcomes: Sequence[Outcome]) -> int | None:
        """``_record_outcomes`` on SQLite when ``_owe_no_webhook``: the same statements in
        one transaction on the driver (``_write_on_connection``), without the session's,
        whose bookkeeping cost 41,000 instructions a job, an eighth of the thread that
        records outcomes (callgrind, an in-process drain at claims of 10).

        Their documents owe no webhook: the claim said none has a callback_url, which
        is set at upload and never changed. Should one have it all the same, nothing
        is written here and the session's way records it with its deliveries (None).
        """
        events: list[DocumentEvent] = []
        try:
            with self._write_on_connection() as connection:
                now = stored_timestamp(connection, utcnow())
                completed, unsynced = self._complete_sqlite(outcomes, events, connection, now)
                if any(event.has_callback for event in events):
                    raise _DeliveriesOwed  # rolled back
                if unsynced:
                    run_on_driver(connection, *queries.sync_documents_sqlite(unsynced, now))
        except _DeliveriesOwed:
            return None
        return completed

    def _record_successes(
        self, outcomes: list[Outcome], events: list[DocumentEvent]
    ) -> tuple[int, list[int]]:
        """Complete many items in a few statements (one on PostgreSQL); their documents'
        events go to ``events``.

        Returns how many were recorded, and the documents whose status is still
        to follow their items (those given results already do).
        """
        if not outcomes:
            return 0, []
        if self._dialect() == "postgresql":
            rows = self._complete_postgresql(outcomes, self.session.connection())
            return len(self._completed(outcomes, rows, events)), []
        connection = self.session.connection()
        return self._complete_sqlite(
            outcomes, events, connection, stored_timestamp(connection, utcnow())
        )

    def _complete_sqlite(
        self,
        outcomes: Sequence[Outcome],
        events: list[DocumentEvent],
        connection: Connection,
        now: str,
    ) -> tuple[int, list[int]]:
        """SQLite's completion of ``outcomes`` on ``connection``'s transaction at ``now``
        (as stored); as ``_record_successes`` returns."""
        claims = [
            (item_id, worker, attempt, stored_timestamp(connection, started_at))
            for item_id, worker, attempt, started_at in (o.key for o in outcomes)
        ]
        rows = [
            CompletedItem(*row)
            for row in run_on_driver(connection, *queries.complete_sqlite(claims, now))
        ]
        recorded = self._completed(outcomes, rows, events)
        if not recorded:
            return 0, []
        attempts = [(o.item_id, o.claim.attempt) for o in recorded]
        run_on_driver(connection, *queries.close_completed_attempts_sqlite(attempts, now))
        document_of = {row.id: row.document_id for row in rows}
        results = [
            {"document_id": document_of[o.item_id], **_document_result_values(o.result)}
            for o in recorded
            if o.result is not None
        ]
        if results:
            large_texts = _set_aside_large_texts(results)
            run_on_driver(connection, *queries.document_results_sqlite(results, now))
            for document_id, text in large_texts:
                run_on_driver(connection, *queries.document_text_sqlite(document_id, text))
            if large_texts:
                # The connection kept memory as large as the text it wrote (about 20
                # MiB for 20 million characters) until it closed: closed after this
                # transaction, not pooled.
                connection.detach()
        synced = {values["document_id"] for values in results}
        return len(recorded), [doc for doc in document_of.values() if doc not in synced]

    @staticmethod
    def _complete_postgresql(
        outcomes: Sequence[Outcome], connection: Connection
    ) -> list[CompletedItem]:
        """The whole record of ``outcomes`` in one statement (queries.complete_batch_postgresql)."""
        statement, parameters = queries.complete_batch_postgresql(
            [
                (o.key, None if o.result is None else _document_result_values(o.result))
                for o in outcomes
            ]
        )
        unpooled_after_large_message(connection, len(parameters["outcomes"]))
        rows = run_on_driver(connection, statement, parameters).fetchall()
        return [CompletedItem(*row) for row in rows]

    @staticmethod
    def _completed(
        outcomes: Sequence[Outcome], rows: Sequence[Any], events: list[DocumentEvent]
    ) -> list[Outcome]:
        """The outcomes of the items completed (``rows``: id, document_id, callback_url);
        each one's document owes a "completed" event, which goes to ``events``.

        Whether each document has a callback_url came back with the update, so
        recording their events asks nothing more when no webhook is set.
        """
        completed = {row.id: row for row in rows}
        recorded = [o for o in outcomes if o.item_id in completed]
        events.extend(
            DocumentEvent(
                completed[o.item_id].document_id,
                WebhookEvent.COMPLETED,
                has_callback=completed[o.item_id].callback_url is not None,
            )
            for o in recorded
        )
        return recorded

    def _record_failure(
        self, outcome: Outcome, now: datetime, events: list[DocumentEvent]
    ) -> int | None:
        row = self._lock_if_held(outcome.item_id, outcome.claim)
        if row is None:
            return None
        cause = Cause.PERMANENT_ERROR if outcome.permanent else Cause.ERROR
        ended = self._settle(row, outcome.claim.attempt, cause, _storable_error(outcome.error), now)
        if ended is not None:
            events.append(ended)
        return row.document_id

    def _lock_if_held(self, item_id: int, claim: Claim) -> Any:
        """The item's row, locked, while ``claim`` still holds it; else None."""
        return self.session.execute(
            select(QueueItem.id, QueueItem.document_id, QueueItem.priority, QueueItem.max_attempts)
            .where(queries.held_by(item_id, claim))
            .with_for_update()
        ).first()

    def _settle(
        self, row: Any, attempt: int, cause: Cause, error: str | None, now: datetime
    ) -> DocumentEvent | None:
        """Take a locked in-progress item out of progress as the retry decision says.

        ``row`` has the item's id, document_id, priority and max_attempts. Only a
        document's latest item is ever pending: an item that would be pending
        again while a newer item of its document exists (a reprocess queued, or
        cancelled, while it ran) folds into that one instead.

        Returns the webhook event the item's end owes: its document failed for
        good. A retry owes none, and neither does an item folded into a newer
        one (its document goes on with that item).
        """
        decision = decide(cause, attempt, row.max_attempts, now, self.policy)
        newer = None
        if decision.retries:
            newer = self._newer_item_id(row)
            if newer is None:
                newer = self._try_back_to_pending(row, decision, error, now)
        if decision.retries and newer is not None:
            self.session.execute(queries.raise_priority(newer, row.priority))
            self.session.execute(queries.supersede(row.id, newer, now, decision.counts_attempt))
        elif not decision.retries:
            self.session.execute(queries.settle(row.id, decision, error, now))
        if decision.counts_attempt:
            statement = queries.close_attempts(
                [(row.id, attempt)], now, decision.attempt_outcome, error
            )
        else:
            statement = queries.forget_attempt(row.id, attempt)
        self.session.execute(statement)
        if decision.retries:
            return None
        return DocumentEvent(row.document_id, WebhookEvent.FAILED)

    def _try_back_to_pending(
        self, row: Any, decision: Decision, error: str | None, now: datetime
    ) -> int | None:
        """Make the item pending again; None when done, else the pending item that won.

        On PostgreSQL an enqueue may insert the document's pending item between
        our look and our write: the unique index refuses ours, and the item
        folds into the one that won.
        """
        try:
            with self.session.begin_nested():
                self.session.execute(queries.settle(row.id, decision, error, now))
        except IntegrityError:
            winner = self._newer_item_id(row)
            if winner is None:
                raise  # refused for another reason
            return winner
        return None

    def _newer_item_id(self, row: Any) -> int | None:
        """The document's latest item when it is newer than this one (None otherwise).

        ``row`` is anything with the item's ``id`` and ``document_id``.
        """
        latest = self.session.scalar(queries.latest_item_id(row.document_id))
        return latest if latest is not None and latest > row.id else None

    # -- admin actions ----------------------------------------------------------

    def retry_item(self, item_id: int) -> QueueItem:
        """A failed or cancelled item back to pending, due now, its attempts reset.

        Only a document's latest item can be retried: an older one was superseded
        (reprocess the document instead), and its document's status is another's.
        """
        with self._write():
            item = self._item_for_update(item_id)
            if item.status not in (ItemStatus.FAILED, ItemStatus.CANCELLED):
                raise InvalidTransition(f"a {item.status} item cannot be retried")
            newer = self._newer_item_id(item)
            if newer is not None:
                raise _superseded(newer)
            now = self._now()
            self._pending_again_unless_superseded(item, now)
            self._sync_documents([item.document_id], now)
            self._as_left(item)
        announce_due_work(self.session)
        return item

    def _pending_again_unless_superseded(self, item: QueueItem, now: datetime) -> None:
        """The retry's write; refused as superseded when a reprocess won the document.

        On PostgreSQL a reprocess may insert the document's pending item between
        our look and our write: the unique index refuses ours once it commits
        (an IntegrityError, which was a 500), and the newer item is the one to see.
        """
        try:
            with self.session.begin_nested():
                self.session.execute(queries.retry(item.id, now))
        except IntegrityError:
            newer = self._newer_item_id(item)
            if newer is None:
                raise  # refused for another reason
            raise _superseded(newer) from None

    def cancel_item(self, item_id: int) -> QueueItem:
        """Withdraw a pending item, or stop one in progress (its worker's result is dropped)."""
        with self._write():
            item = self._item_for_update(item_id)
            if item.status not in CANCELLABLE_STATUSES:
                raise InvalidTransition(f"a {item.status} item cannot be cancelled")
            self._cancel_locked([item], self._now())
            self._as_left(item)
        return item

    def _cancel_locked(self, items: Sequence[Any], now: datetime) -> None:
        """Cancel these locked pending or in-progress items (anything with an item's
        ``id``, ``document_id``, ``status`` and ``attempts``): a running one's attempt
        ends cancelled, their documents follow, and their events are owed."""
        running = [
            (item.id, item.attempts) for item in items if item.status == ItemStatus.IN_PROGRESS
        ]
        if running:
            self.session.execute(
                queries.close_attempts(running, now, AttemptOutcome.CANCELLED, "cancelled")
            )
        self.session.execute(queries.cancel_all([item.id for item in items], now))
        document_ids = [item.document_id for item in items]
        self._sync_documents(document_ids, now)
        events = [
            DocumentEvent(document_id, WebhookEvent.CANCELLED) for document_id in document_ids
        ]
        record_events(self.session, events)

    def _as_left(self, item: QueueItem) -> None:
        """Read ``item`` as this transaction left it and take it out of the session, so
        the commit does not expire it: the admin's answer is what the action did.

        Read after the commit, a delete that landed in between made the answer an
        InvalidRequestError (a 500) for an action that had happened.
        """
        self.session.refresh(item)
        self.session.expunge(item)

    def retry_failed_items(self) -> int:
        """Retry every failed item that is its document's latest (what the document shows).

        In batches of BULK_BATCH, as ``retry_items``; an item that is no longer
        failed when its batch comes (retried, cancelled, superseded, deleted) is skipped.
        """
        with self._read() as session:
            failed_ids = session.scalars(queries.failed_latest_ids()).all()
        return self._retry_in_batches(failed_ids, (ItemStatus.FAILED,))

    def purge_items(
        self, older_than_days: float, statuses: Iterable[str] = FINISHED_STATUSES
    ) -> int:
        """Delete finished items older than N days; documents are kept.

        A document's latest item goes only with all the document's items (see
        ``queries.finished_before``). Deletes run in batches over ranges of ids
        (``_delete_older_than``, ``queries.purge_batch``), so uploads, retries and
        claims go on between them.
        """
        chosen = {ItemStatus(status) for status in statuses}
        if not chosen <= set(FINISHED_STATUSES):
            raise ValueError("only completed, failed and cancelled items can be purged")
        dialect = self._dialect()
        return self._delete_older_than(
            older_than_days,
            lambda cutoff: queries.purgeable_ids(cutoff, chosen),
            lambda cutoff, after_id, up_to_id: queries.purge_batch(
                cutoff, chosen, after_id, up_to_id, dialect
            ),
            MAINTENANCE_BATCH,
        )

    def _item_for_update(self, item_id: int) -> QueueItem:
        item = self.session.scalar(
            select(QueueItem).where(QueueItem.id == item_id).with_for_update()
        )
        if item is None:
            raise LookupError(f"queue item {item_id} not found")
        return item

    def set_paused(self, paused: bool) -> bool:
        """Pause or resume the queue: while paused no scheduler, worker or cron call claims."""
        with self._write() as session:
            state = self._queue_state()
            state.paused = paused
            state.updated_at = self._now()
            if not paused:
                notify_in_transaction(session)  # idle loops sleep until told
        if not paused:
            announce_due_work(self.session)
        return paused

    def is_paused(self) -> bool:
        with self._read():
            return self._paused()

    def _queue_state(self) -> QueueState:
        """The one queue_state row, created if a fresh or emptied database lacks it.

        Two processes may find it missing at once (PostgreSQL): the one whose
        insert loses takes the row the other created.
        """
        state = self.session.get(QueueState, QUEUE_STATE_ID, with_for_update=True)
        if state is not None:
            return state
        try:
            with self.session.begin_nested():
                state = QueueState(id=QUEUE_STATE_ID, paused=False, updated_at=self._now())
                self.session.add(state)
        except IntegrityError:
            state = self.session.get(
                QueueState, QUEUE_STATE_ID, with_for_update=True, populate_existing=True
            )
        return state

    # -- maintenance ------------------------------------------------------------

    def rescue_expired_leases(self, limit: int = MAINTENANCE_BATCH) -> int:
        """Hand back up to ``limit`` items of workers that died or hung (their lease ran out).

        The lost run counted as an attempt; an item with none left ends failed.
        Each item is rescued in a savepoint of its own, so one that cannot be
        written never keeps the others stuck.
        """
        with self._read():
            if not self._exists(queries.expired_leases(self._now())):
                return 0  # without taking the write lock
        with self._write() as session:
            now = self._now()
            expired = session.execute(
                queries.expired_leases(now)
                .add_columns(
                    QueueItem.document_id,
                    QueueItem.priority,
                    QueueItem.max_attempts,
                    QueueItem.attempts,
                    QueueItem.locked_by,
                )
                .order_by(QueueItem.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            events: list[DocumentEvent] = []
            rescued = [row for row in expired if self._rescue(row, now, events)]
            self._sync_documents([row.document_id for row in expired], now)
            record_events(session, events)
        # Said once committed: a crashing or hung worker shows in the log and in
        # /metrics (docqueue_rescued_items_total), not only in the items' history.
        for row in rescued:
            _log_rescue(row)
        record_rescues(len(rescued))
        return len(rescued)

    def _rescue(self, row: Any, now: datetime, events: list[DocumentEvent]) -> bool:
        """Rescue one item in a savepoint; its event (when it ended failed) goes to ``events``."""
        try:
            with self.session.begin_nested():
                message = lost_worker_message(row.attempts, row.max_attempts)
                ended = self._settle(row, row.attempts, Cause.LEASE_EXPIRED, message, now)
        except Exception as exc:
            if is_outage(exc):
                raise
            log.exception("rescuing queue item %s failed; the others go on", row.id)
            return False
        if ended is not None:
            events.append(ended)
        return True

    def take_pruner_turn(self, every_seconds: float) -> bool:
        """True for the one process (of any host) whose turn it is to prune now."""
        every = timedelta(seconds=every_seconds)
        with self._read() as session:
            last = session.scalar(
                select(QueueState.pruned_at).where(QueueState.id == QUEUE_STATE_ID)
            )
            if last is not None and last > self._now() - every:
                return False  # without taking the write lock
        with self._write() as session:
            self._queue_state()
            return session.execute(queries.take_pruner_turn(self._now(), every)).rowcount == 1

    def prune_finished_items(self, older_than_days: float) -> int:
        """The pruner's work: finished items past the retention period go (documents stay)."""
        return self.purge_items(older_than_days)

    # -- reading ----------------------------------------------------------------

    def get_queue_stats(self) -> dict[str, Any]:
        with self._read() as session:
            now = self._now()
            counts = dict(
                session.execute(
                    select(QueueItem.status, func.count()).group_by(QueueItem.status)
                ).all()
            )
            oldest_due = session.scalar(
                select(func.min(QueueItem.run_at)).where(
                    QueueItem.status == ItemStatus.PENDING, QueueItem.run_at <= now
                )
            )
            paused = self._paused()
        stats: dict[str, Any] = {status.value: counts.get(status, 0) for status in ItemStatus}
        stats["total"] = sum(counts.values())
        stats["paused"] = paused
        stats["oldest_pending_age_seconds"] = (
            round((now - oldest_due).total_seconds(), 3) if oldest_due else None
        )
        return stats

    # -- bookkeeping shared by the transitions ----------------------------------

    def _sync_documents(self, document_ids: Iterable[int], now: Any) -> None:
        """Each document's status and error from its latest item, as committed now.

        On PostgreSQL the documents are locked first, in a statement of their own:
        an UPDATE that waits for a row reads the other rows as they were when it
        began (READ COMMITTED), so a cancel or a failure that waited for a
        reprocess's commit set the document "cancelled" or "failed" while the
        reprocess's item was pending. The next statement sees that item.
        """
        ids = sorted(set(document_ids))
        if not ids:
            return
        if self._dialect() == "postgresql":
            self.session.execute(queries.lock_documents(ids))
        self.session.execute(*queries.sync_documents(ids, now))

    # -- bulk admin actions -----------------------------------------------------

    def retry_items(self, item_ids: Iterable[int]) -> int:
        """Retry these failed or cancelled items; returns how many were retried.

        BULK_BATCH items per transaction, each committed before the next begins:
        uploads, claims and workers go on in between, and workers start on the
        first batches while the last are written. Items whose state changed since
        they were chosen (no longer failed or cancelled, superseded, deleted) are
        skipped.
        """
        return self._retry_in_batches(item_ids, RETRYABLE_STATUSES)

    def cancel_items(self, item_ids: Iterable[int]) -> int:
        """Cancel these pending or in-progress items, BULK_BATCH per transaction (as
        ``retry_items``); returns how many were cancelled.

        Items that finished or vanished since they were chosen are skipped.
        """
        return sum(self._cancel_batch(batch) for batch in _batches(item_ids))

    def _retry_in_batches(self, item_ids: Iterable[int], statuses: Sequence[ItemStatus]) -> int:
        return sum(self._retry_batch(batch, statuses) for batch in _batches(item_ids))

    def _retry_batch(self, item_ids: list[int], statuses: Sequence[ItemStatus]) -> int:
        """One transaction: those of ``item_ids`` still in ``statuses`` and their
        document's latest back to pending (as ``retry_item``), their documents with
        them; how many.

        On PostgreSQL a reprocess may queue a pending item for one of the documents
        meanwhile: the unique index refuses the batch, which is then retried one
        item at a time, so only that item (superseded) is left out.
        """
        try:
            with self._write() as session:
                now = self._now()
                if self._dialect() == "postgresql":
                    session.execute(queries.lock_items(item_ids, statuses))
                retried = session.scalars(queries.retry_latest(item_ids, statuses, now)).all()
                self._sync_documents(retried, now)
        except IntegrityError:
            if len(item_ids) == 1:
                return 0  # superseded: a reprocess's pending item won its document
            return sum(self._retry_batch([item_id], statuses) for item_id in item_ids)
        if retried:
            announce_due_work(self.session)  # the workers start on this batch at once
        return len(retried)

    def _cancel_batch(self, item_ids: list[int]) -> int:
        """One transaction: those of ``item_ids`` still pending or in progress cancelled;
        how many.

        On PostgreSQL the items another transaction holds (a worker recording
        outcomes locks its items in an order of its own) are passed over rather than
        waited for while this one holds the others, which could deadlock; each is
        then cancelled alone, as ``cancel_item`` does.
        """
        lock = queries.lock_items(item_ids, CANCELLABLE_STATUSES, skip_locked=True)
        with self._write() as session:
            items = session.execute(lock).all()
            if items:
                self._cancel_locked(items, self._now())
        cancelled = {item.id for item in items}
        return len(cancelled) + self._cancel_one_by_one(
            [item_id for item_id in item_ids if item_id not in cancelled]
        )

    def _cancel_one_by_one(self, item_ids: list[int]) -> int:
        """Cancel those of ``item_ids`` still pending or in progress, each alone; how many."""
        if not item_ids:
            return 0
        with self._read() as session:
            busy = session.scalars(queries.items_in(item_ids, CANCELLABLE_STATUSES)).all()
        cancelled = 0
        for item_id in busy:
            try:
                self.cancel_item(item_id)
            except (InvalidTransition, LookupError):
                continue  # finished or deleted since
            cancelled += 1
        return cancelled


class _DeliveriesOwed(Exception):
    """A record on SQLite's driver found a document with a callback_url: nothing written."""


def _batches(item_ids: Iterable[int]) -> Iterator[list[int]]:
    """``item_ids`` in lists of BULK_BATCH (the last one shorter)."""
    batch: list[int] = []
    for item_id in item_ids:
        batch.append(item_id)
        if len(batch) == BULK_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _id_of(item: QueueItem | ClaimedItem) -> int:
    """The item's id without a database round trip (the row may be gone already)."""
    if isinstance(item, ClaimedItem):
        return item.id
    identity = inspect(item).identity
    return identity[0] if identity else item.id


def _claim_of(item: QueueItem | ClaimedItem) -> Claim:
    """The fencing token of a claimed item; for an item loaded fresh, its current holder."""
    claim = getattr(item, "claim", None)
    if claim is None:
        claim = Claim(item.locked_by or "", item.attempts, item.started_at)
    return claim


def _detached(model: type[Any], **values: Any) -> Any:
    """An ORM object for a row just written: every column set, so reading it asks nothing.

    Detached, not in the session: a later ``get`` of the row reads it afresh.
    Filled the way the ORM fills a loaded row (no attribute events: 5 times
    cheaper than the constructor, measured).
    """
    mapper = inspect(model)
    instance = mapper.class_manager.new_instance()
    instance.__dict__.update({column.key: values.get(column.key) for column in mapper.column_attrs})
    make_transient_to_detached(instance)
    return instance


def _superseded(newer: int) -> InvalidTransition:
    return InvalidTransition(
        f"it was superseded by queue item {newer}; reprocess the document instead"
    )


def _check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError("priority must be an integer")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")


# Lone surrogates (from a lenient decoder) cannot be encoded as UTF-8, and
# PostgreSQL's text type cannot hold NUL: neither can be stored, so both go.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` as any back end can store it: NUL dropped, lone surrogates as U+FFFD."""
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def _storable_json(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): _storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_json(v) for v in value]
    return value


def _claimed_items(cursor: Any, document_columns: int = 0) -> list[ClaimedItem]:
    """The rows a claim returned on the driver, in claim order: each item's columns,
    then (PostgreSQL) the last ``document_columns``, what the claim read of its document."""
    names = tuple(column[0] for column in cursor.description)
    split = len(names) - document_columns
    positions, timestamps = _item_layout(names[:split])
    callback = names.index(_HAS_CALLBACK) if _HAS_CALLBACK in names else None
    items = []
    for row in cursor.fetchall():
        values = [row[position] for position in positions]
        for field in timestamps:  # as the ORM's UTCDateTime reads them
            values[field] = _read_timestamp(values[field])
        document = ClaimedDocument(*row[split:]) if document_columns else None
        # SQLite gives 0 or 1; None: the document is gone.
        has_callback = None if callback is None or row[callback] is None else bool(row[callback])
        items.append(ClaimedItem(*values, document_read=document, has_callback=has_callback))
    return queries.in_claim_order(items)


def _storable_error(message: str | None) -> str:
    message = storable(str(message or ""))
    return message if len(message) <= _ERROR_LIMIT else message[: _ERROR_LIMIT - 1] + "…"


def _document_result_values(result: dict[str, Any]) -> dict[str, Any]:
    text = storable(result.get("text") or "")
    title = result.get("title")
    return {
        "text": text,
        "title": storable(title) if isinstance(title, str) else title,
        "page_count": result.get("page_count"),
        "metadata": _storable_json(result.get("metadata") or {}),
        "word_count": count_words(text),
        "char_count": len(text),
    }


# Texts longer than this travel apart from the SQLite batch's JSON
# (queries.document_text_sqlite): through it, a text took about 12 times its size.
_LARGE_TEXT_CHARS = 1_000_000


def _set_aside_large_texts(results: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Take the large texts out of ``results`` (left empty there): (document id, text)."""
    large = []
    for values in results:
        if len(values["text"]) > _LARGE_TEXT_CHARS:
            large.append((values["document_id"], values["text"]))
            values["text"] = ""
    return large


def _log_rescue(row: Any) -> None:
    out_of_attempts = row.attempts >= row.max_attempts
    log.log(
        logging.ERROR if out_of_attempts else logging.WARNING,
        "queue item %s of document %s: the lease of worker %s ran out during attempt %s of %s; %s",
        row.id,
        row.document_id,
        row.locked_by,
        row.attempts,
        row.max_attempts,
        "it failed for good" if out_of_attempts else "handed back to run again",
    )
