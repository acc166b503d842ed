"""Reading queue items for the admin API and pages: lookups and filtered lists.

Writes go through ``DocumentQueueService``; this module only reads. Not-found is
raised as an HTTP error here so both front ends answer it alike.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload
from werkzeug.exceptions import NotFound

from .documents import Page, fetch_page
from .models import QueueItem, db

QueueItemPage = Page[QueueItem]


def list_queue_items(
    status: str | None, document_id: int | None, page: int, per_page: int
) -> QueueItemPage:
    """One page of queue items, newest first, optionally of one status and one document."""
    query = select(QueueItem).order_by(QueueItem.id.desc())
    if status is not None:
        query = query.where(QueueItem.status == status)
    if document_id is not None:
        query = query.where(QueueItem.document_id == document_id)
    items, total = fetch_page(query, page, per_page)
    return QueueItemPage(items, page, per_page, total)


def find_queue_item(item_id: int) -> QueueItem:
    """The item with its attempt history loaded, or 404."""
    item = db.session.scalar(
        select(QueueItem).where(QueueItem.id == item_id).options(selectinload(QueueItem.history))
    )
    if item is None:
        raise queue_item_not_found(item_id)
    return item


def queue_item_not_found(item_id: int) -> NotFound:
    return NotFound(f"Queue item {item_id} does not exist.")
