"""The pruner: once per cluster per interval, in bounded batches, as a purge does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from docqueue_app.models import QueueItem, QueueState, db, utcnow
from docqueue_app.queue import DocumentQueueService, pruner
from docqueue_app.queue import service as service_module
from tests.helpers import execute_sql


@pytest.fixture
def service(app_ctx):
    return DocumentQueueService()


def old_finished_items(app, service: DocumentQueueService, documents: int) -> None:
    """Each document processed twice, both items finished 40 days ago."""
    for n in range(documents):
        document, _ = service.submit_document(f"{n}.txt", f"doc {n}".encode(), "text/plain")
        for _ in range(2):
            [item] = service.claim_due_items(1, "w")
            service.mark_completed(item, {"text": "done"})
            service.enqueue(document.id, "reprocess") if _ == 0 else None
    execute_sql(app, "UPDATE queue_items SET finished_at = :t", t=utcnow() - timedelta(days=40))


def item_count() -> int:
    db.session.commit()
    return db.session.scalar(db.select(db.func.count()).select_from(QueueItem))


def test_only_one_process_of_the_cluster_prunes_per_interval(app, service):
    old_finished_items(app, service, 2)
    with Session(db.engine) as other_session:
        other_host = DocumentQueueService(other_session)
        assert pruner.prune_if_due(service, retention_days=30) == 4
        assert pruner.prune_if_due(other_host, retention_days=30) == 0
    db.session.commit()
    assert db.session.get(QueueState, 1).pruned_at > utcnow() - timedelta(minutes=1)


def test_the_turn_comes_again_after_the_interval(app, service):
    assert service.take_pruner_turn(3600)
    assert not service.take_pruner_turn(3600)
    execute_sql(app, "UPDATE queue_state SET pruned_at = :t", t=utcnow() - timedelta(hours=2))
    assert service.take_pruner_turn(3600)


def test_a_fresh_database_without_the_state_row_still_gets_its_turn(app, service):
    execute_sql(app, "DELETE FROM queue_state")
    assert service.take_pruner_turn(3600)


def test_deletes_go_in_bounded_batches_until_done(app, service, monkeypatch):
    monkeypatch.setattr(service_module, "MAINTENANCE_BATCH", 2)
    old_finished_items(app, service, 5)
    assert item_count() == 10
    assert pruner.prune_if_due(service, retention_days=30) == 10
    assert item_count() == 0


def test_recent_items_are_kept(app, service):
    old_finished_items(app, service, 1)
    execute_sql(app, "UPDATE queue_items SET finished_at = :t", t=utcnow() - timedelta(days=3))
    assert pruner.prune_if_due(service, retention_days=30) == 0
    assert item_count() == 2
