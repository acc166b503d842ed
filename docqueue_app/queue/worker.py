"""Processing the queue: claim due items, run the processor, record each outcome.

No database transaction stays open while a document is processed: the bytes are
read in a short transaction, the processor runs (by default in a child process),
and the outcome is handed to a bookkeeping thread. That thread writes the
outcomes that have arrived every few milliseconds, many in one transaction (one
commit, one disk sync, for a run of fast documents), and extends the leases of
the items the pass still holds, so only a dead or stuck worker's items are
reclaimed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from flask import Flask, current_app
from sqlalchemy.orm import Session

from ..database import OUTAGES, Backoff, is_disk_full, report_failure, report_success
from ..metrics import PROCESSING_SECONDS, record_outcome
from ..models import db, run_on_driver, unpooled_after_large_message
from ..printable import printable
from ..processing import (
    PermanentProcessingError,
    ProcessingCancelled,
    TransientProcessingError,
    run_processor,
)
from ..processing.heap import (
    give_back_freed_memory,
    is_large_document,
    keep_large_blocks_returnable,
)
from ..transactions import one_statement_options
from .service import Claim, ClaimedItem, DocumentQueueService, Outcome, default_worker_id

log = logging.getLogger(__name__)

# How long a finished document's outcome may wait to share a commit with others.
OUTCOME_FLUSH_SECONDS = 0.05
# How often the item of the document in hand is looked at, so a cancel stops it.
WATCH_SECONDS = 1.0
# Bytes of documents read in one query.
LOAD_GROUP_BYTES = 8 * 1024 * 1024

# A pass whose outcomes cannot be written (the database is away) keeps trying
# while its leases hold, less this margin, so an outage shorter than a lease
# costs no document a second run. A stopping pass gives up sooner: its leases
# run out and its items are processed again, later but never lost.
LEASE_MARGIN_SECONDS = 5.0
STOPPING_WRITE_SECONDS = 10.0
# How often an idle bookkeeping thread looks whether the thread it serves has ended.
OWNER_CHECK_SECONDS = 5.0

# The bookkeeping tasks as the log names them when they fail (report_failure): each
# a task of its own, so one that keeps failing is told in full once.
WRITING_OUTCOMES = "writing %d outcomes"
WRITING_ONE_OUTCOME = "writing the outcome of queue item %s"
HANDING_BACK = "handing back %d unstarted items"
CHECKING_ITEM = "checking queue item %s"
HEARTBEAT = "lease heartbeat"

_worker_ids: dict[int, str] = {}


def current_worker_id() -> str:
    """One id per process (forked gunicorn workers each get their own)."""
    pid = os.getpid()
    if pid not in _worker_ids:
        _worker_ids[pid] = default_worker_id()
    return _worker_ids[pid]


def process_document_queue(
    limit: int | None = None,
    worker_id: str | None = None,
    stop: threading.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
    look_first: bool = True,
) -> dict:
    """Claim up to ``limit`` (default BATCH_SIZE) due items and process them.

    Call inside an app context. Returns ``{"processed", "completed", "failed", "retried"}``
    once every outcome is written. When ``stop`` is set, the document in hand is
    finished and the claimed items not yet started go back to pending at once,
    their attempt not counted. A document whose item is cancelled while it runs
    is stopped (its child killed) and counts in none of the numbers.
    ``heartbeat`` is called whenever the pass makes
    progress (after its claim, before and after each document), so a caller can
    tell a busy pass from a hung one. ``look_first=False`` claims without
    polling first (``DocumentQueueService.claim_due_items``): for a caller that
    was just woken by new work.
    """
    beat = heartbeat or _no_heartbeat
    keep_large_blocks_returnable()
    config = current_app.config
    limit = config["BATCH_SIZE"] if limit is None else limit
    counts = {"processed": 0, "completed": 0, "failed": 0, "retried": 0}
    with Session(db.engine) as session:
        service = DocumentQueueService(session)
        items = service.claim_due_items(
            limit, worker_id or current_worker_id(), look_first, LOAD_GROUP_BYTES // max(limit, 1)
        )
        beat()
        if not items:
            return counts
        app = current_app._get_current_object()
        with OutcomeWriter(app, items, stop) as writer:
            largest = _process_claimed_items(session, items, writer, beat, counts)
    if is_large_document(largest):
        # Every document and result of the pass is written and dropped by now.
        give_back_freed_memory()
    return counts


def _process_claimed_items(
    session: Session,
    items: list[ClaimedItem],
    writer: OutcomeWriter,
    beat: Callable[[], None],
    counts: dict[str, int],
) -> int:
    """Process the claimed items in turn, counting outcomes in ``counts``; the size in
    bytes of the largest document processed."""
    largest = 0
    for item, document in load_documents(session, items):
        cancel = writer.start(item)
        if cancel is None:
            break  # stopping: the writer hands back what was not started
        if document is None:
            continue  # deleted while queued: nothing to record
        largest = max(largest, len(document.content))
        beat()
        outcome = process_item(item, document, cancel)
        beat()
        if outcome is None:
            log.info(
                "document %s: cancelled while it was processed (queue item %s)",
                item.document_id,
                item.id,
            )
            continue
        writer.submit(outcome)
        label = outcome_label(outcome, item)
        record_outcome(label)
        log_outcome(label, outcome, item)
        counts[label] += 1
        counts["processed"] += 1
    return largest


def _no_heartbeat() -> None:
    pass


def process_item(
    item: ClaimedItem, document: LoadedDocument, cancel: threading.Event | None = None
) -> Outcome | None:
    """Run the processor on one claimed item's document and say how it went.

    None when ``cancel`` was set meanwhile: the item is no longer ours to record.
    """
    try:
        with PROCESSING_SECONDS.time():
            result = _process_document_content(
                document.content, document.filename, document.content_type, cancel
            )
    except ProcessingCancelled:
        return None
    except PermanentProcessingError as exc:
        return Outcome.of(item, error=str(exc), permanent=True)
    except Exception as exc:  # any other error is transient by contract
        return Outcome.of(item, error=_describe(exc))
    return Outcome.success(item, result)


def outcome_label(outcome: Outcome, item: ClaimedItem) -> str:
    if outcome.error is None:
        return "completed"
    gave_up = outcome.permanent or outcome.claim.attempt >= item.max_attempts
    return "failed" if gave_up else "retried"


# One line per attempt, with what an operator needs to look it up: a failure for
# good is an error (someone must act), a retry a warning (it may yet complete).
# A completion is a debug line: at thousands of documents a second, a line each
# would cost the worker about 5% of its time and fill the log (journald's default
# limit, 10,000 lines in 30 s, then drops the errors too); the counters and each
# document's history say what completed.
_OUTCOME_LOGS = {
    "completed": (logging.DEBUG, "document %s completed: queue item %s, attempt %s of %s"),
    "retried": (
        logging.WARNING,
        "document %s will be retried: queue item %s, attempt %s of %s failed: %s",
    ),
    "failed": (logging.ERROR, "document %s failed for good: queue item %s, attempt %s of %s: %s"),
}


def log_outcome(label: str, outcome: Outcome, item: ClaimedItem) -> None:
    level, message = _OUTCOME_LOGS[label]
    ids = (item.document_id, item.id, outcome.claim.attempt, item.max_attempts)
    # A processor's message may hold newlines or escape sequences: one line, escaped.
    error = () if outcome.error is None else (printable(outcome.error),)
    log.log(level, message, *ids, *error)


def _describe(exc: Exception) -> str:
    if isinstance(exc, TransientProcessingError):
        return str(exc)  # already says what happened to the child process
    return f"{type(exc).__name__}: {exc}"


class LoadedDocument(NamedTuple):
    content: bytes
    filename: str
    content_type: str


def load_documents(
    session: Session, items: list[ClaimedItem]
) -> Iterator[tuple[ClaimedItem, LoadedDocument | None]]:
    """Each item with its document's bytes (None when the document is gone).

    The claim (on PostgreSQL) or one query read every document's size, and the
    bytes of those small enough that all of them together stay under
    LOAD_GROUP_BYTES: a run of small documents costs no more. Larger documents
    are then read in groups of up to LOAD_GROUP_BYTES, each read in a short
    transaction of its own, so a large one is never held in memory long before
    its turn.
    """
    documents = _read_with_the_claim(items)
    if documents is None:
        small = LOAD_GROUP_BYTES // max(len(items), 1)
        documents = _read_documents(session, [item.document_id for item in items], small)
    sizes = {document_id: size for document_id, (size, _) in documents.items()}
    for group in _groups_by_size(items, sizes):
        unread = [item.document_id for item in group if _unread(documents, item.document_id)]
        if unread:
            documents.update(_read_documents(session, unread))
        for item in group:
            _, loaded = documents.pop(item.document_id, (0, None))
            yield item, loaded


def _read_with_the_claim(
    items: list[ClaimedItem],
) -> dict[int, tuple[int, LoadedDocument | None]] | None:
    """What the claim read of the items' documents (PostgreSQL), as ``_read_documents``
    answers; None when it read nothing."""
    reads = [getattr(item, "document_read", None) for item in items]
    if not items or None in reads:
        return None
    return {
        item.document_id: (
            read.size,
            None
            if read.content is None
            else LoadedDocument(read.content, read.filename, read.content_type),
        )
        for item, read in zip(items, reads, strict=True)
        if read.size is not None
    }


def _unread(documents: dict[int, tuple[int, LoadedDocument | None]], document_id: int) -> bool:
    return document_id in documents and documents[document_id][1] is None


# Documents' sizes, names and bytes (the bytes only of those of up to up_to_size), on
# the driver (run_on_driver): PostgreSQL's rows then come in binary, not as hex.
_READ_DOCUMENTS = """
    SELECT d.id, d.size, CASE WHEN d.size <= {up_to_size} THEN c.data END,
        d.filename, d.content_type
    FROM documents AS d JOIN document_contents AS c ON c.document_id = d.id
    WHERE {among_ids}"""
_READ_DOCUMENTS_ON = {
    "postgresql": _READ_DOCUMENTS.format(
        up_to_size="%(up_to_size)s", among_ids="d.id = ANY(%(document_ids)s)"
    ),
    "sqlite": _READ_DOCUMENTS.format(
        up_to_size=":up_to_size", among_ids="d.id IN (SELECT value FROM json_each(:document_ids))"
    ),
}
_ANY_SIZE = 2**63 - 1


def _read_documents(
    session: Session, document_ids: list[int], up_to_size: int | None = None
) -> dict[int, tuple[int, LoadedDocument | None]]:
    """document id -> (size, its bytes and names); bytes only up to ``up_to_size``, if given."""
    connection = session.connection(execution_options=one_statement_options(session))
    dialect = connection.dialect.name
    ids = sorted(set(document_ids))
    parameters = {
        "document_ids": ids if dialect == "postgresql" else json.dumps(ids),
        "up_to_size": _ANY_SIZE if up_to_size is None else up_to_size,
    }
    rows = run_on_driver(connection, _READ_DOCUMENTS_ON[dialect], parameters).fetchall()
    if dialect == "postgresql":
        unpooled_after_large_message(connection, sum(len(row[2] or b"") for row in rows))
    session.commit()
    return {row[0]: (row[1], None if row[2] is None else LoadedDocument(*row[2:])) for row in rows}


def _groups_by_size(items: list[ClaimedItem], sizes: dict[int, int]) -> Iterator[list[ClaimedItem]]:
    group: list[ClaimedItem] = []
    group_bytes = 0
    for item in items:
        size = sizes.get(item.document_id, 0)
        if group and group_bytes + size > LOAD_GROUP_BYTES:
            yield group
            group, group_bytes = [], 0
        group.append(item)
        group_bytes += size
    if group:
        yield group


def _process_document_content(
    content: bytes, filename: str, content_type: str, cancel: threading.Event | None = None
) -> dict[str, Any]:
    """Run the configured processor on one document, isolated as configured.

    Setting ``cancel`` kills its child process (``ProcessingCancelled`` is raised).
    """
    config = current_app.config
    return run_processor(
        content,
        filename,
        content_type,
        processor=config["PROCESSOR"],
        isolation=config["PROCESS_ISOLATION"],
        memory_mb=config["PROCESS_MEMORY_MB"],
        timeout_seconds=config["PROCESS_TIMEOUT_SECONDS"],
        ocr=config["OCR"],
        cancel=cancel,
    )


class Bookkeeper:
    """The thread that runs the bookkeeping (``OutcomeWriter``) of one claiming thread's
    passes, one pass after another.

    Kept from pass to pass: a thread started for every pass sat between a woken
    worker's claim and its first document (and was a tenth of a busy claiming
    thread's wall time, py-spy, claims of 10). It ends once the thread it serves
    has ended.
    """

    def __init__(self, owner: threading.Thread) -> None:
        self.owner = owner
        self.jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self.thread = threading.Thread(target=self._serve, name="docqueue-outcomes", daemon=True)
        self.thread.start()

    def run(self, job: Callable[[], None]) -> threading.Event:
        """Run ``job`` on the bookkeeping thread; the event is set once it has returned."""
        finished = threading.Event()
        self.jobs.put((job, finished))
        return finished

    def _serve(self) -> None:
        while True:
            try:
                job, finished = self.jobs.get(timeout=OWNER_CHECK_SECONDS)
            except queue.Empty:
                if self.owner.is_alive():
                    continue
                return
            try:
                job()
            except Exception:  # a bug: the pass's items are reclaimed when their leases end
                log.exception("the bookkeeping of a pass failed")
            finally:
                finished.set()


_bookkeepers = threading.local()


def bookkeeper_of_this_thread() -> Bookkeeper:
    """The calling thread's bookkeeper, started on first use (and again in a forked
    process, where the parent's threads are gone)."""
    bookkeeper = getattr(_bookkeepers, "current", None)
    if bookkeeper is None or not bookkeeper.thread.is_alive():
        bookkeeper = _bookkeepers.current = Bookkeeper(threading.current_thread())
    return bookkeeper


class OutcomeWriter:
    """A pass's bookkeeping, on its claiming thread's ``Bookkeeper``: writes outcomes,
    keeps leases, watches for stops.

    - Outcomes are written in groups, every few milliseconds; leaving the
      ``with`` block waits until every submitted outcome is written. An outcome
      that cannot be written (the database is away) is retried on the next
      flush; if it never can be, the item's lease runs out and it is processed
      again, so nothing is lost.
    - Leases of the items the pass still holds are extended (a heartbeat).
    - The document in hand is watched: when its item is cancelled (or taken
      over), its ``cancel`` event is set and its processing stops.
    - When ``stop`` is set, the claimed items not yet started go back to pending
      at once, not after the document in hand.
    """

    def __init__(self, app: Flask, items: list[ClaimedItem], stop: threading.Event | None) -> None:
        self.app = app
        self.claims: dict[int, Claim] = {item.id: item.claim for item in items}
        self.lease_seconds: float = app.config["LEASE_SECONDS"]
        self.beat_every = self.lease_seconds / 3
        # When the leases of the items still held run out, as far as this host knows.
        self.leases_until = time.monotonic() + self.lease_seconds
        self.watch_every = min(app.config["POLL_INTERVAL"], WATCH_SECONDS)
        self.inbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.unwritten: list[Outcome] = []
        self.stop = stop or threading.Event()
        # Items not yet started, and the one in hand with its cancel event; the
        # main loop and this thread both change them, under the lock.
        self.unstarted: list[ClaimedItem] = list(items)
        self.in_hand: tuple[int, threading.Event] | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.finished: threading.Event | None = None

    def __enter__(self) -> OutcomeWriter:
        self.finished = bookkeeper_of_this_thread().run(self._run)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        assert self.finished is not None
        self.finished.wait()

    def start(self, item: ClaimedItem) -> threading.Event | None:
        """The item is about to be processed: its cancel event, or None when stopping."""
        with self.lock:
            if self.stop.is_set() or item not in self.unstarted:
                return None
            self.unstarted.remove(item)
            cancel = threading.Event()
            self.in_hand = (item.id, cancel)
            return cancel

    def submit(self, outcome: Outcome) -> None:
        self.inbox.put(outcome)

    def _run(self) -> None:
        with self.app.app_context(), Session(db.engine, expire_on_commit=False) as session:
            service = DocumentQueueService(session)
            next_beat = time.monotonic() + self.beat_every
            next_watch = time.monotonic() + self.watch_every
            while not self.done.wait(OUTCOME_FLUSH_SECONDS):
                self._flush(service)
                if self.stop.is_set():
                    self._release_unstarted(service)
                now = time.monotonic()
                if now >= next_watch:
                    self._watch_in_hand(service)
                    next_watch = now + self.watch_every
                if now >= next_beat:
                    self._extend_leases(service)
                    next_beat = now + self.beat_every
            self._write_the_rest(service)

    def _write_the_rest(self, service: DocumentQueueService) -> None:
        """The pass is over: write its last outcomes and hand back what it never started."""
        backoff = Backoff(first=0.2)
        deadline = self.leases_until - min(LEASE_MARGIN_SECONDS, self.lease_seconds / 3)
        while True:
            released = self._release_unstarted(service)
            if self._flush(service) and released:
                return
            if self.stop.is_set():
                deadline = min(deadline, time.monotonic() + STOPPING_WRITE_SECONDS)
            pause = backoff.next_pause()
            if time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
            self._extend_leases(service)
        log.error(
            "gave up writing %d outcomes and handing back %d items: the database stayed away;"
            " they are processed again once their leases run out",
            len(self.unwritten) + self.inbox.qsize(),
            len(self.unstarted),
        )

    def _flush(self, service: DocumentQueueService) -> bool:
        """Write what has arrived; False when the database refused (kept for next time)."""
        while not self.inbox.empty():
            self.unwritten.append(self.inbox.get())
        if not self.unwritten:
            return True
        try:
            service.record_outcomes(self.unwritten)
        except Exception as exc:
            report_failure(exc, WRITING_OUTCOMES, len(self.unwritten))
            if len(self.unwritten) > 1 and is_disk_full(exc):
                self._write_one_by_one(service)
            return not self.unwritten
        OUTAGES.succeeded()
        report_success(WRITING_OUTCOMES)
        self._written(self.unwritten)
        self.unwritten = []
        return True

    def _write_one_by_one(self, service: DocumentQueueService) -> None:
        """Write each unwritten outcome alone, keeping those that still do not fit.

        A full disk may take the outcomes one at a time though not all at once: a
        group needs room for all its results together, and PostgreSQL a temporary
        file as large as the group besides. Retried whole, a group that did not fit
        after room returned never did, and its documents were processed again once
        their leases ran out.
        """
        unwritten = []
        for outcome in self.unwritten:
            try:
                service.record_outcomes([outcome])
            except Exception as exc:
                report_failure(exc, WRITING_ONE_OUTCOME, outcome.item_id)
                unwritten.append(outcome)
            else:
                report_success(WRITING_ONE_OUTCOME)
                self._written([outcome])
        self.unwritten = unwritten
        if not unwritten:
            OUTAGES.succeeded()

    def _written(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.claims.pop(outcome.item_id, None)

    def _release_unstarted(self, service: DocumentQueueService) -> bool:
        """Hand back the claimed items not started; False when the database refused (kept)."""
        with self.lock:
            unstarted, self.unstarted = self.unstarted, []
        if not unstarted:
            return True
        try:
            service.release_items(unstarted)
        except Exception as exc:
            report_failure(exc, HANDING_BACK, len(unstarted))
            with self.lock:
                self.unstarted = unstarted + self.unstarted
            return False
        report_success(HANDING_BACK)
        for item in unstarted:
            self.claims.pop(item.id, None)
        return True

    def _watch_in_hand(self, service: DocumentQueueService) -> None:
        with self.lock:
            in_hand = self.in_hand
        if in_hand is None or in_hand[1].is_set() or in_hand[0] not in self.claims:
            return
        item_id, cancel = in_hand
        try:
            lost = service.lost_claims({item_id: self.claims[item_id]})
        except Exception as exc:  # looked at again next time
            report_failure(exc, CHECKING_ITEM, item_id)
            return
        report_success(CHECKING_ITEM)
        if lost:
            cancel.set()
            self.claims.pop(item_id, None)

    def _extend_leases(self, service: DocumentQueueService) -> None:
        beat_at = time.monotonic()
        try:
            service.extend_leases(self.claims)
        except Exception as exc:  # a missed beat is retried; the lease has slack
            report_failure(exc, HEARTBEAT)
            return
        report_success(HEARTBEAT)
        self.leases_until = beat_at + self.lease_seconds
