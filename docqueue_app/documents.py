"""Reading documents for the API and the web pages: lookups, lists, text and bytes.

Writes go through ``DocumentQueueService``; this module only reads. Not-found is
raised as an HTTP error here so both front ends answer it alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from werkzeug.exceptions import NotFound

from .models import (
    WITH_METADATA,
    Document,
    QueueAttempt,
    QueueItem,
    WebhookDelivery,
    db,
    latest_items,
    run_on_driver,
)


class DocumentView:
    """A document with its latest queue item: what the API and the pages show.

    Attribute access falls through to the document, so a schema or a template
    reads ``view.filename`` and ``view.queue_item`` alike.
    """

    def __init__(
        self, document: Document, queue_item: QueueItem | None, duplicate: bool = False
    ) -> None:
        self.document = document
        self.queue_item = queue_item
        self.duplicate = duplicate

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not set in __init__: the document's columns.
        return getattr(self.document, name)


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, as every list envelope (API and pages) shows it."""

    items: list[T]
    page: int
    per_page: int
    total: int


DocumentPage = Page[DocumentView]


def fetch_page(query: Select[Any], page: int, per_page: int) -> tuple[list[Any], int]:
    """The rows of one page of an ordered ``query``, and how many rows it has in all."""
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = db.session.scalars(query.limit(per_page).offset((page - 1) * per_page)).all()
    return list(rows), total or 0


def find_document(document_id: int, with_metadata: bool = False) -> Document:
    options = [WITH_METADATA] if with_metadata else []
    document = db.session.get(Document, document_id, options=options)
    if document is None:
        raise _not_found(document_id)
    return document


def show_document(document_id: int) -> DocumentView:
    """A document as its JSON shows it (metadata and latest item); 404 when unknown."""
    return document_view(find_document(document_id, with_metadata=True))


def document_view(document: Document, duplicate: bool = False) -> DocumentView:
    items = latest_items(db.session, [document.id])
    return DocumentView(document, items.get(document.id), duplicate)


def list_documents(
    status: str | None,
    page: int,
    per_page: int,
    filename_contains: str | None = None,
    with_metadata: bool = False,
) -> DocumentPage:
    """One page of documents, newest first, optionally of one status.

    ``filename_contains`` keeps the documents whose file name holds it, ignoring
    case; ``%`` and ``_`` in it are matched as themselves. ``with_metadata``
    loads the processor's metadata with the rows (the JSON shows it; pages don't).
    """
    query = select(Document).order_by(Document.created_at.desc(), Document.id.desc())
    if with_metadata:
        query = query.options(WITH_METADATA)
    if status is not None:
        query = query.where(Document.status == status)
    if filename_contains:
        query = query.where(Document.filename.icontains(filename_contains, autoescape=True))
    documents, total = fetch_page(query, page, per_page)
    items = latest_items(db.session, [document.id for document in documents])
    views = [DocumentView(document, items.get(document.id)) for document in documents]
    return DocumentPage(views, page, per_page, total)


def text_preview(document_id: int, max_chars: int) -> str | None:
    """The first ``max_chars`` characters of the extracted text, cut by the database."""
    return db.session.scalar(
        select(func.substr(Document.text, 1, max_chars)).where(Document.id == document_id)
    )


def document_attempts(document_id: int) -> list[QueueAttempt]:
    """Every attempt at any of the document's queue items, oldest first."""
    query = (
        select(QueueAttempt)
        .join(QueueItem, QueueItem.id == QueueAttempt.queue_item_id)
        .where(QueueItem.document_id == document_id)
        .order_by(QueueAttempt.started_at, QueueAttempt.id)
    )
    return list(db.session.scalars(query))


def document_deliveries(document_id: int, limit: int) -> list[WebhookDelivery]:
    """The document's newest ``limit`` webhook deliveries, newest first; 404 when unknown."""
    find_document(document_id)
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.document_id == document_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    return list(db.session.scalars(query))


# On the driver (run_on_driver), so that PostgreSQL sends the bytes in binary: through
# the ORM they came as hex text, twice their size, decoded at 24 instructions a byte
# (a 10 MB download cost the web server 35-47 ms of CPU that way, 18-25 ms this way).
_ORIGINAL_BYTES = {
    "postgresql": "SELECT data FROM document_contents WHERE document_id = %s",
    "sqlite": "SELECT data FROM document_contents WHERE document_id = ?",
}


def original_bytes(document_id: int) -> bytes:
    connection = db.session.connection()
    statement = _ORIGINAL_BYTES[connection.dialect.name]
    row = run_on_driver(connection, statement, (document_id,)).fetchone()
    if row is None:
        raise _not_found(document_id)
    return row[0]


def _not_found(document_id: int) -> NotFound:
    return NotFound(f"Document {document_id} does not exist.")
