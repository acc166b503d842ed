"""The webhook events a queue outcome owes, recorded in that outcome's own transaction.

``DocumentQueueService`` calls ``record_events`` inside the transaction that
ends queue items (completed, failed for good, cancelled by an admin), after the
documents follow their items: each event gets one delivery per destination
(``DOCQUEUE_WEBHOOK_URL`` and the document's ``callback_url``, each when set),
its body frozen then, reflecting what that transaction wrote. So an outcome and
the deliveries it owes commit together or not at all: no crash between them
can lose one. After the commit, ``wake_senders`` starts this process's senders
at once; other processes find the deliveries at their next poll.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import current_app
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, undefer

from ..database import database_now
from ..documents import DocumentView
from ..models import Document, WebhookDelivery, latest_items
from ..schemas import DocumentSchema
from ..states import DeliveryStatus, WebhookEvent
from ..transactions import after_commit


@dataclass(frozen=True)
class DocumentEvent:
    """A queue item of this document ended so (one event; a retry is none)."""

    document_id: int
    event: WebhookEvent
    # Whether the document has a callback_url, when the caller read it with the
    # item (None: unknown, the database is asked).
    has_callback: bool | None = None


def record_events(session: Session, events: Sequence[DocumentEvent]) -> int:
    """Insert the deliveries ``events`` owe, in the caller's transaction; how many.

    With no global URL, only documents with a ``callback_url`` owe deliveries:
    most have none, and when the events say so (``has_callback``) recording
    them costs no query at all; otherwise one small query asks.
    """
    if not events:
        return 0
    global_url = current_app.config["WEBHOOK_URL"]
    document_ids = sorted({event.document_id for event in events})
    if not global_url:
        document_ids = _with_callbacks(session, events)
        if not document_ids:
            return 0
    views = _document_views(session, document_ids)
    now = database_now(session)
    max_attempts = current_app.config["WEBHOOK_MAX_ATTEMPTS"]
    documents = {document_id: _DOCUMENT_SCHEMA.dump(view) for document_id, view in views.items()}
    rows = [
        _delivery_row(event, documents[event.document_id], url, now, max_attempts)
        for event in events
        if (view := views.get(event.document_id)) is not None
        for url in _destinations(global_url, view.document)
    ]
    if rows:
        session.execute(insert(WebhookDelivery), rows)
        after_commit(session, wake_senders)
    return len(rows)


def _with_callbacks(session: Session, events: Sequence[DocumentEvent]) -> list[int]:
    """The documents of ``events`` that have a callback_url."""
    known = {event.document_id for event in events if event.has_callback}
    unknown = {event.document_id for event in events if event.has_callback is None}
    if unknown:
        known.update(
            session.scalars(
                select(Document.id).where(
                    Document.id.in_(unknown), Document.callback_url.is_not(None)
                )
            )
        )
    return sorted(known)


def _document_views(session: Session, document_ids: list[int]) -> dict[int, DocumentView]:
    """The documents as this transaction left them, with their latest items.

    Read afresh (``populate_existing``): the queue's updates bypass the
    session, so objects it holds from before would show the old status.
    """
    documents = session.scalars(
        select(Document)
        .where(Document.id.in_(document_ids))
        .options(undefer(Document.extracted_metadata))
        .execution_options(populate_existing=True)
    )
    items = latest_items(session, document_ids, refresh=True)
    return {document.id: DocumentView(document, items.get(document.id)) for document in documents}


# One instance: building a schema costs more than dumping a document with it.
_DOCUMENT_SCHEMA = DocumentSchema()


def _destinations(global_url: str | None, document: Document) -> list[str]:
    return [url for url in (global_url, document.callback_url) if url]


def _delivery_row(
    event: DocumentEvent, document: dict[str, Any], url: str, now: datetime, max_attempts: int
) -> dict[str, Any]:
    delivery_id = str(uuid.uuid4())
    return {
        "delivery_id": delivery_id,
        "document_id": event.document_id,
        "event": event.event.value,
        "url": url,
        "payload": payload(delivery_id, event.event, now, document),
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "max_attempts": max_attempts,
        "next_attempt_at": now,
        "created_at": now,
    }


def payload(
    delivery_id: str, event: WebhookEvent, created_at: datetime, document: dict[str, Any]
) -> str:
    """The body every attempt of the delivery sends (SPEC §8), as JSON text.

    ``document`` is the document's JSON (SPEC §4), dumped once for all its destinations.
    """
    body = {
        "id": delivery_id,
        "event": event.value,
        "created_at": created_at.isoformat(),
        "document": document,
    }
    return json.dumps(body, separators=(",", ":"))


# -- waking this process's senders --------------------------------------------------

_senders: set[threading.Event] = set()
_senders_lock = threading.Lock()


def listen_for_deliveries(wake: threading.Event) -> None:
    """Set ``wake`` whenever this process records a delivery or makes one due."""
    with _senders_lock:
        _senders.add(wake)


def stop_listening(wake: threading.Event) -> None:
    with _senders_lock:
        _senders.discard(wake)


def wake_senders() -> None:
    """Deliveries were just committed: this process's senders look at once."""
    with _senders_lock:
        wakes = list(_senders)
    for wake in wakes:
        wake.set()
