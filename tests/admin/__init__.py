"""The admin console (/admin/); ``Queue`` builds items in the states a test needs."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask

from docqueue_app.models import QueueItem, db, utcnow
from docqueue_app.queue import DocumentQueueService
from tests.helpers import execute_sql


class Queue:
    """Builds queue items in given states through the service, as workers would."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.uploads = 0

    def item(
        self,
        filename: str = "note.txt",
        state: str = "pending",
        error: str = "boom",
        retries: int = 0,
    ) -> int:
        """A new document and its item, brought to ``state``; returns the item's id.

        ``retries`` transient failures (each by another worker) come first, so the
        item's history has that many attempts before the one that ends in ``state``.
        """
        self.uploads += 1
        with self.app.app_context():
            service = DocumentQueueService()
            document, _ = service.submit_document(
                filename, f"{filename} {self.uploads}".encode(), "text/plain"
            )
            item = db.session.scalar(
                db.select(QueueItem).where(QueueItem.document_id == document.id)
            )
            for attempt in range(retries):
                assert service.mark_in_progress(item, f"worker-{attempt + 2}")
                assert service.mark_failed(item, f"transient error {attempt + 1}")
                self._make_due(item.id)
            if state != "pending":
                assert service.mark_in_progress(item, "worker-1")
            if state == "failed":
                assert service.mark_failed(item, error, permanent=True)
            elif state == "completed":
                assert service.mark_completed(item)
            elif state == "cancelled":
                service.cancel_item(item.id)
            return item.id

    def status(self, item_id: int) -> str:
        with self.app.app_context():
            return db.session.get(QueueItem, item_id).status

    def document_id(self, item_id: int) -> int:
        with self.app.app_context():
            return db.session.get(QueueItem, item_id).document_id

    def _make_due(self, item_id: int) -> None:
        """Skip the retry backoff: the item is due now."""
        past = utcnow() - timedelta(seconds=1)
        execute_sql(
            self.app, "UPDATE queue_items SET run_at = :at WHERE id = :id", at=past, id=item_id
        )
