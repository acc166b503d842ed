"""DocumentQueueService: the only code that writes queue and document state.

Every method runs in a transaction of its own and commits it. Claims are atomic
compare-and-set statements: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, and on
SQLite a ``BEGIN IMMEDIATE`` transaction that holds the database's write lock.

Fencing: each claim records the worker and the attempt number on the item
object (``item.claim``). An outcome is only recorded while the row still shows
that worker and that attempt, so a worker whose lease was taken over cannot
overwrite the newer owner's result.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import (
    and_,
    case,
    delete,
    exists,
    func,
    inspect,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from ..models import (
    DOCUMENT_STATUS_OF_ITEM,
    QUEUE_STATE_ID,
    SQLITE_WRITE_OPTION,
    AttemptOutcome,
    Document,
    DocumentContent,
    DocumentStatus,
    ItemStatus,
    Operation,
    QueueAttempt,
    QueueItem,
    QueueState,
    db,
    utcnow,
)
from .backoff import retry_delay

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 10, 5
FINISHED_STATUSES = (ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.CANCELLED)
_ERROR_LIMIT = 4000


class DocumentNotFound(LookupError):
    """The document does not exist (any more)."""


class InvalidTransition(RuntimeError):
    """The item or document is not in a state that allows the action."""


@dataclass(frozen=True)
class Claim:
    """Who holds an item, and for which attempt: the fencing token."""

    worker: str
    attempt: int


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

    @classmethod
    def of(cls, item: QueueItem, **details: Any) -> Outcome:
        return cls(_id_of(item), _claim_of(item), **details)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class DocumentQueueService:
    """Every change to queue items and document status, each method one transaction."""

    def __init__(self, session: Session | None = None) -> None:
        # The scoped session's current Session: the service needs its transaction API.
        self.session = session if session is not None else db.session()
        config = current_app.config
        self.max_attempts: int = config["MAX_ATTEMPTS"]
        self.lease = timedelta(seconds=config["LEASE_SECONDS"])
        self.retry_base: float = config["RETRY_BASE_SECONDS"]
        self.retry_max: float = config["RETRY_MAX_SECONDS"]

    # -- transactions -----------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A fresh transaction that holds the write lock from its first statement."""
        session = self.session
        if session.in_transaction():
            session.commit()
        session.connection(execution_options={SQLITE_WRITE_OPTION: True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A fresh transaction, so reads see everything committed before the call."""
        session = self.session
        if session.in_transaction():
            session.commit()
        try:
            yield session
        finally:
            session.commit()

    def _exists(self, query: Any) -> bool:
        return self.session.execute(query.limit(1)).first() is not None

    def _paused(self) -> bool:
        return bool(
            self.session.scalar(select(QueueState.paused).where(QueueState.id == QUEUE_STATE_ID))
        )

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
        _check_priority(priority)
        digest = hashlib.sha256(content).hexdigest()
        try:
            with self._write() as session:
                existing = self._document_by_sha256(digest)
                if existing is not None:
                    return existing, False
                now = utcnow()
                document = Document(
                    filename=filename,
                    content_type=content_type,
                    size=len(content),
                    sha256=digest,
                    status=DocumentStatus.PENDING,
                    created_at=now,
                    updated_at=now,
                )
                session.add(document)
                session.flush()
                session.add(DocumentContent(document_id=document.id, data=content))
                session.add(self._new_item(document.id, Operation.PROCESS, priority, now))
        except IntegrityError:
            # Another upload of the same bytes committed first.
            existing = self._document_by_sha256(digest)
            if existing is None:
                raise
            return existing, False
        return document, True

    def _document_by_sha256(self, digest: str) -> Document | None:
        return self.session.scalar(select(Document).where(Document.sha256 == digest))

    def delete_document(self, document_id: int) -> bool:
        """Remove a document, its bytes, its queue items and their history."""
        with self._write() as session:
            items = select(QueueItem.id).where(QueueItem.document_id == document_id)
            session.execute(delete(QueueAttempt).where(QueueAttempt.queue_item_id.in_(items)))
            session.execute(delete(QueueItem).where(QueueItem.document_id == document_id))
            session.execute(
                delete(DocumentContent).where(DocumentContent.document_id == document_id)
            )
            deleted = session.execute(delete(Document).where(Document.id == document_id))
        return deleted.rowcount > 0

    # -- enqueue ----------------------------------------------------------------

    def enqueue(
        self, document_id: int, operation: str, priority: int = DEFAULT_PRIORITY
    ) -> QueueItem:
        """Queue work for a document, coalescing with its not-yet-started item."""
        operation = Operation(operation)
        _check_priority(priority)
        try:
            return self._enqueue(document_id, operation, priority)
        except IntegrityError:
            # A concurrent enqueue inserted the pending item first: join it.
            return self._enqueue(document_id, operation, priority)

    def _enqueue(self, document_id: int, operation: Operation, priority: int) -> QueueItem:
        with self._write() as session:
            now = utcnow()
            if session.get(Document, document_id) is None:
                raise DocumentNotFound(document_id)
            pending = session.scalar(
                select(QueueItem)
                .where(
                    QueueItem.document_id == document_id,
                    QueueItem.status == ItemStatus.PENDING,
                )
                .with_for_update()
            )
            if pending is not None:
                pending.priority = max(pending.priority, priority)
                pending.run_at = min(pending.run_at, now)
                item = pending
            else:
                item = self._new_item(document_id, operation, priority, now)
                session.add(item)
            session.flush()
            self._sync_documents([document_id], now)
        return item

    def _new_item(
        self, document_id: int, operation: Operation, priority: int, now: datetime
    ) -> QueueItem:
        return QueueItem(
            document_id=document_id,
            operation=operation,
            status=ItemStatus.PENDING,
            priority=priority,
            attempts=0,
            max_attempts=self.max_attempts,
            run_at=now,
            created_at=now,
        )

    # -- claiming ---------------------------------------------------------------

    def get_pending_items(self, limit: int) -> list[QueueItem]:
        """Due items in claim order: highest priority first, then oldest.

        Items whose lease ran out are first handed back (or failed when they had
        no attempts left), so they appear here as due pending items.
        """
        self.rescue_expired_leases()
        with self._read() as session:
            return list(session.scalars(self._due_items_query(utcnow()).limit(limit)).all())

    def _due_items_query(self, now: datetime) -> Any:
        """Due pending items in the order of ``ix_queue_items_claim``, walking that index.

        The status is written into the SQL, not bound, because a partial index
        only serves a query whose WHERE visibly implies the index's; SQLite is
        told the index by name, as without statistics it would sort instead.
        """
        busy = aliased(QueueItem)
        document_busy = exists().where(
            busy.document_id == QueueItem.document_id,
            busy.status == ItemStatus.IN_PROGRESS,
        )
        return (
            select(QueueItem)
            .with_hint(QueueItem, "INDEXED BY ix_queue_items_claim", "sqlite")
            .where(
                QueueItem.status == literal(ItemStatus.PENDING.value, literal_execute=True),
                QueueItem.run_at <= now,
                ~document_busy,
            )
            .order_by(QueueItem.priority.desc(), QueueItem.run_at, QueueItem.id)
        )

    def mark_in_progress(self, item: QueueItem, worker_id: str | None = None) -> bool:
        """Claim one item; False when another worker got it first."""
        worker = worker_id or default_worker_id()
        item_id = _id_of(item)
        with self._write() as session:
            now = utcnow()
            busy = aliased(QueueItem)
            other_running = exists().where(
                busy.document_id == QueueItem.document_id,
                busy.id != QueueItem.id,
                busy.status == ItemStatus.IN_PROGRESS,
                busy.lease_expires_at > now,
            )
            claimable = or_(
                and_(QueueItem.status == ItemStatus.PENDING, QueueItem.run_at <= now),
                and_(
                    QueueItem.status == ItemStatus.IN_PROGRESS,
                    QueueItem.lease_expires_at <= now,
                    QueueItem.attempts < QueueItem.max_attempts,
                ),
            )
            row = session.execute(
                update(QueueItem)
                .where(QueueItem.id == item_id, claimable, ~other_running)
                .values(**self._claim_values(worker, now))
                .returning(QueueItem.attempts, QueueItem.document_id)
                .execution_options(synchronize_session=False)
            ).first()
            if row is None:
                return False
            self._close_open_attempts([item_id], now, AttemptOutcome.LOST, "worker lost")
            self._open_attempts([(item_id, row.attempts)], worker, now)
            self._sync_documents([row.document_id], now)
        item.claim = Claim(worker, row.attempts)
        session.refresh(item)
        return True

    def claim_due_items(self, limit: int, worker_id: str) -> list[QueueItem]:
        """Claim up to ``limit`` due items in one statement (the worker's fast path).

        Nothing is claimed while the queue is paused.
        """
        # One read-only look decides the poll, so an idle one never takes SQLite's
        # write lock.
        with self._read():
            now = utcnow()
            if self._paused():
                return []
            lost = self._exists(_expired_leases(now))
            due = self._exists(self._due_items_query(now).with_only_columns(QueueItem.id))
        if lost:
            self.rescue_expired_leases()
        elif not due:
            return []
        with self._write() as session:
            now = utcnow()
            due_ids = (
                self._due_items_query(now)
                .with_only_columns(QueueItem.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=QueueItem)
            )
            rows = session.execute(
                update(QueueItem)
                .where(QueueItem.id.in_(due_ids.scalar_subquery()))
                .values(**self._claim_values(worker_id, now))
                .returning(QueueItem.id, QueueItem.attempts, QueueItem.document_id)
                .execution_options(synchronize_session=False)
            ).all()
            if not rows:
                return []
            self._open_attempts([(row.id, row.attempts) for row in rows], worker_id, now)
            self._sync_documents([row.document_id for row in rows], now)
        attempts = {row.id: row.attempts for row in rows}
        items = session.scalars(
            select(QueueItem)
            .where(QueueItem.id.in_(attempts))
            .order_by(QueueItem.priority.desc(), QueueItem.run_at, QueueItem.id)
        ).all()
        session.commit()
        for item in items:
            item.claim = Claim(worker_id, attempts[item.id])
        return list(items)

    def _claim_values(self, worker: str, now: datetime) -> dict[str, Any]:
        return {
            "status": ItemStatus.IN_PROGRESS,
            "locked_by": worker,
            "lease_expires_at": now + self.lease,
            "attempts": QueueItem.attempts + 1,
            "started_at": now,
            "finished_at": None,
        }

    def extend_leases(self, claims: dict[int, Claim]) -> int:
        """Heartbeat: push out the leases of the items (id -> claim) a worker still holds."""
        if not claims:
            return 0
        extended = 0
        with self._write() as session:
            expires = utcnow() + self.lease
            for item_id, claim in claims.items():
                result = session.execute(
                    update(QueueItem)
                    .where(_held_by(item_id, claim))
                    .values(lease_expires_at=expires)
                    .execution_options(synchronize_session=False)
                )
                extended += result.rowcount
        return extended

    def release_items(self, items: Iterable[QueueItem]) -> int:
        """Hand claimed but unstarted items back as pending, their attempt not counted.

        When the document got a newer pending item meanwhile, the released item
        folds into it (it is cancelled and the newer one keeps the higher priority).
        """
        released = 0
        with self._write() as session:
            now = utcnow()
            for item in items:
                claim, item_id = _claim_of(item), _id_of(item)
                held = session.execute(
                    select(QueueItem.document_id, QueueItem.priority).where(
                        _held_by(item_id, claim)
                    )
                ).first()
                if held is None:
                    continue
                newer = session.scalar(
                    select(QueueItem).where(
                        QueueItem.document_id == held.document_id,
                        QueueItem.status == ItemStatus.PENDING,
                    )
                )
                if newer is not None:
                    newer.priority = max(newer.priority, held.priority)
                    values: dict[str, Any] = {
                        "status": ItemStatus.CANCELLED,
                        "finished_at": now,
                        "last_error": f"superseded by queue item {newer.id}",
                    }
                else:
                    values = {"status": ItemStatus.PENDING, "started_at": None}
                session.execute(
                    update(QueueItem)
                    .where(QueueItem.id == item_id)
                    .values(
                        attempts=QueueItem.attempts - 1,
                        locked_by=None,
                        lease_expires_at=None,
                        **values,
                    )
                    .execution_options(synchronize_session=False)
                )
                session.execute(
                    delete(QueueAttempt).where(
                        QueueAttempt.queue_item_id == item_id,
                        QueueAttempt.attempt == claim.attempt,
                        QueueAttempt.finished_at.is_(None),
                    )
                )
                self._sync_documents([held.document_id], now)
                released += 1
        return released

    # -- outcomes ---------------------------------------------------------------

    def mark_completed(self, item: QueueItem, result: dict[str, Any] | None = None) -> bool:
        """Record success (and the extraction ``result`` on the document)."""
        return self.record_outcomes([Outcome.of(item, result=result)]) == 1

    def mark_failed(self, item: QueueItem, error_message: str, permanent: bool = False) -> bool:
        """Record a failure: back to pending after a backoff, or ``failed`` for good."""
        outcome = Outcome.of(item, error=error_message, permanent=permanent)
        return self.record_outcomes([outcome]) == 1

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> int:
        """Record the outcomes of several items in one transaction: one commit for all.

        Returns how many were recorded; an item whose claim no longer holds (its
        lease was taken over, or its document deleted) is left as it is.
        """
        with self._write():
            now = utcnow()
            recorded = self._record_successes([o for o in outcomes if o.error is None], now)
            for outcome in outcomes:
                if outcome.error is not None:
                    document_id = self._record_failure(outcome, now)
                    if document_id is not None:
                        recorded.append(document_id)
            self._sync_documents(recorded, now)
        return len(recorded)

    def _record_successes(self, outcomes: list[Outcome], now: datetime) -> list[int]:
        """Complete many items in a few statements; the documents of those recorded."""
        if not outcomes:
            return []
        held = tuple_(QueueItem.id, QueueItem.locked_by, QueueItem.attempts).in_(
            [(o.item_id, o.claim.worker, o.claim.attempt) for o in outcomes]
        )
        rows = self.session.execute(
            update(QueueItem)
            .where(QueueItem.status == ItemStatus.IN_PROGRESS, held)
            .values(
                status=ItemStatus.COMPLETED,
                locked_by=None,
                lease_expires_at=None,
                last_error=None,
                finished_at=now,
            )
            .returning(QueueItem.id, QueueItem.document_id)
            .execution_options(synchronize_session=False)
        ).all()
        document_of = {row.id: row.document_id for row in rows}
        recorded = [o for o in outcomes if o.item_id in document_of]
        if not recorded:
            return []
        self._close_attempts(
            [(o.item_id, o.claim.attempt) for o in recorded], now, AttemptOutcome.COMPLETED
        )
        results = [
            {"id": document_of[o.item_id], "processed_at": now, **_document_result_values(o.result)}
            for o in recorded
            if o.result is not None
        ]
        if results:
            self.session.execute(update(Document), results)  # executemany by primary key
        return list(document_of.values())

    def _record_failure(self, outcome: Outcome, now: datetime) -> int | None:
        item_id, claim = outcome.item_id, outcome.claim
        max_attempts = self.session.scalar(
            select(QueueItem.max_attempts).where(_held_by(item_id, claim))
        )
        if max_attempts is None:
            return None
        error = _truncate(outcome.error or "")
        if outcome.permanent or claim.attempt >= max_attempts:
            status, attempt_outcome = ItemStatus.FAILED, AttemptOutcome.FAILED
            values: dict[str, Any] = {"finished_at": now}
        else:
            status, attempt_outcome = ItemStatus.PENDING, AttemptOutcome.RETRY
            delay = retry_delay(claim.attempt, self.retry_base, self.retry_max)
            values = {"run_at": now + timedelta(seconds=delay)}
        document_id = self._finish(
            item_id, claim, status=status, values={"last_error": error, **values}
        )
        self._close_attempts([(item_id, claim.attempt)], now, attempt_outcome, error)
        return document_id

    def _finish(
        self, item_id: int, claim: Claim, status: ItemStatus, values: dict[str, Any]
    ) -> int | None:
        """Move a held item out of in_progress; None when the claim no longer holds."""
        return self.session.execute(
            update(QueueItem)
            .where(_held_by(item_id, claim))
            .values(status=status, locked_by=None, lease_expires_at=None, **values)
            .returning(QueueItem.document_id)
            .execution_options(synchronize_session=False)
        ).scalar()

    # -- admin actions ----------------------------------------------------------

    def retry_item(self, item_id: int) -> QueueItem:
        """A failed or cancelled item back to pending, due now, its attempts reset."""
        with self._write() as session:
            item = self._item_for_update(item_id)
            if item.status not in (ItemStatus.FAILED, ItemStatus.CANCELLED):
                raise InvalidTransition(f"a {item.status} item cannot be retried")
            if self._has_pending_item(item.document_id):
                raise InvalidTransition("the document already has a pending item")
            now = utcnow()
            item.status = ItemStatus.PENDING
            item.attempts = 0
            item.run_at = now
            item.finished_at = None
            session.flush()
            self._sync_documents([item.document_id], now)
        return item

    def cancel_item(self, item_id: int) -> QueueItem:
        """Withdraw a pending item before it runs."""
        with self._write() as session:
            item = self._item_for_update(item_id)
            if item.status != ItemStatus.PENDING:
                raise InvalidTransition(f"a {item.status} item cannot be cancelled")
            now = utcnow()
            item.status = ItemStatus.CANCELLED
            item.finished_at = now
            session.flush()
            self._sync_documents([item.document_id], now)
        return item

    def retry_failed_items(self) -> int:
        """Retry every failed item whose document has nothing else pending."""
        failed_ids = self.session.scalars(
            select(QueueItem.id).where(QueueItem.status == ItemStatus.FAILED).order_by(QueueItem.id)
        ).all()
        retried = 0
        for item_id in failed_ids:
            try:
                self.retry_item(item_id)
            except (InvalidTransition, LookupError):
                continue
            retried += 1
        return retried

    def purge_items(
        self, older_than_days: float, statuses: Iterable[str] = FINISHED_STATUSES
    ) -> int:
        """Delete finished items older than N days; documents are kept as they are."""
        chosen = {ItemStatus(status) for status in statuses}
        if not chosen <= set(FINISHED_STATUSES):
            raise ValueError("only completed, failed and cancelled items can be purged")
        cutoff = utcnow() - timedelta(days=older_than_days)
        with self._write() as session:
            old = select(QueueItem.id).where(
                QueueItem.status.in_(chosen), QueueItem.finished_at < cutoff
            )
            session.execute(delete(QueueAttempt).where(QueueAttempt.queue_item_id.in_(old)))
            deleted = session.execute(
                delete(QueueItem)
                .where(QueueItem.id.in_(old))
                .execution_options(synchronize_session=False)
            )
        return deleted.rowcount

    def _item_for_update(self, item_id: int) -> QueueItem:
        item = self.session.scalar(
            select(QueueItem).where(QueueItem.id == item_id).with_for_update()
        )
        if item is None:
            raise LookupError(f"queue item {item_id} not found")
        return item

    def _has_pending_item(self, document_id: int) -> bool:
        return (
            self.session.scalar(
                select(QueueItem.id).where(
                    QueueItem.document_id == document_id, QueueItem.status == ItemStatus.PENDING
                )
            )
            is not None
        )

    def set_paused(self, paused: bool) -> bool:
        """Pause or resume the queue: while paused no scheduler, worker or cron call claims."""
        with self._write() as session:
            state = session.get(QueueState, QUEUE_STATE_ID)
            if state is None:
                state = QueueState(id=QUEUE_STATE_ID)
                session.add(state)
            state.paused = paused
            state.updated_at = utcnow()
        return paused

    def is_paused(self) -> bool:
        with self._read():
            return self._paused()

    # -- maintenance ------------------------------------------------------------

    def rescue_expired_leases(self) -> int:
        """Hand back the items of workers that died or hung (their lease ran out).

        The lost run counted as an attempt; an item with none left ends failed.
        """
        with self._read():
            if not self._exists(_expired_leases(utcnow())):
                return 0  # without taking the write lock
        with self._write() as session:
            now = utcnow()
            expired = session.execute(
                _expired_leases(now)
                .add_columns(QueueItem.document_id, QueueItem.attempts, QueueItem.max_attempts)
                .with_for_update(skip_locked=True)
            ).all()
            if not expired:
                return 0
            for row in expired:
                exhausted = row.attempts >= row.max_attempts
                message = (
                    f"worker lost: its lease expired during attempt {row.attempts} "
                    f"of {row.max_attempts}"
                )
                values: dict[str, Any] = (
                    {"status": ItemStatus.FAILED, "finished_at": now}
                    if exhausted
                    else {"status": ItemStatus.PENDING, "run_at": now}
                )
                session.execute(
                    update(QueueItem)
                    .where(QueueItem.id == row.id, QueueItem.status == ItemStatus.IN_PROGRESS)
                    .values(locked_by=None, lease_expires_at=None, last_error=message, **values)
                    .execution_options(synchronize_session=False)
                )
            self._close_open_attempts(
                [row.id for row in expired], now, AttemptOutcome.LOST, "worker lost"
            )
            self._sync_documents([row.document_id for row in expired], now)
        return len(expired)

    def prune_finished_items(self, older_than_days: float) -> int:
        """The pruner: finished items past the retention period go (documents stay)."""
        return self.purge_items(older_than_days)

    # -- reading ----------------------------------------------------------------

    def get_queue_stats(self) -> dict[str, Any]:
        with self._read() as session:
            now = utcnow()
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

    def _sync_documents(self, document_ids: Iterable[int], now: datetime) -> None:
        """Set each document's status and error from its latest queue item."""
        ids = sorted(set(document_ids))
        if not ids:
            return
        latest = (
            select(QueueItem.id)
            .where(QueueItem.document_id == Document.id)
            .order_by(QueueItem.id.desc())
            .limit(1)
            .correlate(Document)
            .scalar_subquery()
        )
        latest_status = select(QueueItem.status).where(QueueItem.id == latest).scalar_subquery()
        latest_error = select(QueueItem.last_error).where(QueueItem.id == latest).scalar_subquery()
        self.session.execute(
            update(Document)
            .where(Document.id.in_(ids))
            .values(
                status=case(
                    *[
                        (latest_status == item, doc)
                        for item, doc in DOCUMENT_STATUS_OF_ITEM.items()
                    ],
                    else_=Document.status,
                ),
                error=case((latest_status == ItemStatus.FAILED, latest_error), else_=None),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )

    def _open_attempts(
        self, item_attempts: list[tuple[int, int]], worker: str, now: datetime
    ) -> None:
        self.session.execute(
            QueueAttempt.__table__.insert(),
            [
                {"queue_item_id": item_id, "attempt": attempt, "worker": worker, "started_at": now}
                for item_id, attempt in item_attempts
            ],
        )

    def _close_attempts(
        self,
        item_attempts: list[tuple[int, int]],
        now: datetime,
        outcome: AttemptOutcome,
        error: str | None = None,
    ) -> None:
        """End the open history rows of these (item id, attempt number) pairs."""
        self.session.execute(
            update(QueueAttempt)
            .where(
                tuple_(QueueAttempt.queue_item_id, QueueAttempt.attempt).in_(item_attempts),
                QueueAttempt.finished_at.is_(None),
            )
            .values(finished_at=now, outcome=outcome, error=error)
            .execution_options(synchronize_session=False)
        )

    def _close_open_attempts(
        self, item_ids: list[int], now: datetime, outcome: AttemptOutcome, error: str
    ) -> None:
        self.session.execute(
            update(QueueAttempt)
            .where(QueueAttempt.queue_item_id.in_(item_ids), QueueAttempt.finished_at.is_(None))
            .values(finished_at=now, outcome=outcome, error=error)
            .execution_options(synchronize_session=False)
        )


def _expired_leases(now: datetime) -> Any:
    """Items whose worker stopped extending its lease: dead, hung or cut off."""
    return select(QueueItem.id).where(
        QueueItem.status == ItemStatus.IN_PROGRESS, QueueItem.lease_expires_at <= now
    )


def _id_of(item: QueueItem) -> int:
    """The item's id without a database round trip (the row may be gone already)."""
    identity = inspect(item).identity
    return identity[0] if identity else item.id


def _claim_of(item: QueueItem) -> Claim:
    """The fencing token of a claimed item; for an item loaded fresh, its current holder."""
    claim = getattr(item, "claim", None)
    if claim is None:
        claim = Claim(item.locked_by or "", item.attempts)
    return claim


def _held_by(item_id: int, claim: Claim) -> Any:
    return and_(
        QueueItem.id == item_id,
        QueueItem.status == ItemStatus.IN_PROGRESS,
        QueueItem.locked_by == claim.worker,
        QueueItem.attempts == claim.attempt,
    )


def _check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError("priority must be an integer")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")


def _truncate(message: str) -> str:
    message = str(message)
    return message if len(message) <= _ERROR_LIMIT else message[: _ERROR_LIMIT - 1] + "…"


def _document_result_values(result: dict[str, Any]) -> dict[str, Any]:
    text = result.get("text") or ""
    return {
        "text": text,
        "title": result.get("title"),
        "page_count": result.get("page_count"),
        "extracted_metadata": result.get("metadata") or {},
        "word_count": len(text.split()),
        "char_count": len(text),
    }
