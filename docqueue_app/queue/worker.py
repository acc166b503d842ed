"""Processing the queue: claim due items, run the processor, record each outcome.

No database transaction stays open while a document is processed: the bytes are
read in a short transaction, the processor runs (by default in a child process),
and the outcome is written in another. A heartbeat thread extends the leases of
the items this pass holds, so only a dead or stuck worker's items are reclaimed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session

from ..metrics import PROCESSING_SECONDS, record_outcome
from ..models import Document, DocumentContent, QueueItem, db
from ..processing import PermanentProcessingError, TransientProcessingError, run_processor
from .service import Claim, DocumentQueueService, default_worker_id

log = logging.getLogger(__name__)

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
) -> dict:
    """Claim up to ``limit`` (default BATCH_SIZE) due items and process them.

    Call inside an app context. Returns ``{"processed", "completed", "failed", "retried"}``.
    When ``stop`` is set, the document in hand is finished and the claimed items
    not yet started go back to pending, their attempt not counted.
    """
    config = current_app.config
    limit = config["BATCH_SIZE"] if limit is None else limit
    outcome_counts = {"processed": 0, "completed": 0, "failed": 0, "retried": 0}
    # Objects stay as claimed (no expiry on commit): the pass reads them after
    # each outcome is written, and a deleted document must not make that fail.
    with Session(db.engine, expire_on_commit=False) as session:
        service = DocumentQueueService(session)
        if is_paused(session):
            return outcome_counts
        items = service.claim_due_items(limit, worker_id or current_worker_id())
        with lease_heartbeat(items, config["LEASE_SECONDS"]):
            for index, item in enumerate(items):
                if stop is not None and stop.is_set():
                    service.release_items(items[index:])
                    break
                outcome = process_item(service, item)
                outcome_counts[outcome] += 1
                outcome_counts["processed"] += 1
    return outcome_counts


def is_paused(session: Session) -> bool:
    """Queue pausing arrives with the admin API; until then the queue always runs."""
    return False


def process_item(service: DocumentQueueService, item: QueueItem) -> str:
    """Process one claimed item; returns "completed", "failed" or "retried"."""
    loaded = _load_document(service.session, item.document_id)
    if loaded is None:
        # Deleted while queued: the item went with it, nothing to record.
        return "failed"
    content, filename, content_type = loaded
    try:
        with PROCESSING_SECONDS.time():
            result = _process_document_content(content, filename, content_type)
    except PermanentProcessingError as exc:
        return _record_failure(service, item, str(exc), permanent=True)
    except Exception as exc:  # any other error is transient by contract
        log.warning("document %s attempt failed: %s", item.document_id, exc)
        return _record_failure(service, item, _describe(exc), permanent=False)
    service.mark_completed(item, result)
    record_outcome("completed")
    return "completed"


def _describe(exc: Exception) -> str:
    if isinstance(exc, TransientProcessingError):
        return str(exc)  # already says what happened to the child process
    return f"{type(exc).__name__}: {exc}"


def _record_failure(
    service: DocumentQueueService, item: QueueItem, message: str, permanent: bool
) -> str:
    service.mark_failed(item, message, permanent=permanent)
    gave_up = permanent or item.claim.attempt >= item.max_attempts
    outcome = "failed" if gave_up else "retried"
    record_outcome(outcome)
    return outcome


def _load_document(session: Session, document_id: int) -> tuple[bytes, str, str] | None:
    row = session.execute(
        db.select(DocumentContent.data, Document.filename, Document.content_type)
        .join(Document, Document.id == DocumentContent.document_id)
        .where(DocumentContent.document_id == document_id)
    ).first()
    session.commit()
    return None if row is None else (row.data, row.filename, row.content_type)


def _process_document_content(content: bytes, filename: str, content_type: str) -> dict[str, Any]:
    """Run the configured processor on one document, isolated as configured."""
    config = current_app.config
    return run_processor(
        content,
        filename,
        content_type,
        processor=config["PROCESSOR"],
        isolation=config["PROCESS_ISOLATION"],
        memory_mb=config["PROCESS_MEMORY_MB"],
        timeout_seconds=config["PROCESS_TIMEOUT_SECONDS"],
    )


@contextmanager
def lease_heartbeat(items: list[QueueItem], lease_seconds: float) -> Iterator[None]:
    """Extend the leases of ``items`` every third of a lease until the block ends."""
    if not items:
        yield
        return
    claims = {item.id: item.claim for item in items}
    stop = threading.Event()
    thread = threading.Thread(
        target=_beat,
        args=(current_app._get_current_object(), claims, lease_seconds / 3, stop),
        name="docqueue-heartbeat",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _beat(app: Any, claims: dict[int, Claim], interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        with app.app_context(), Session(db.engine) as session:
            try:
                DocumentQueueService(session).extend_leases(claims)
            except Exception:  # a missed beat is retried; the lease has slack
                log.exception("lease heartbeat failed")
