"""DocumentQueueService on both back ends: ordering, coalescing, claims, outcomes, fencing."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from docqueue_app.models import Document, QueueAttempt, QueueItem, db, utcnow
from docqueue_app.queue import (
    DocumentNotFound,
    DocumentQueueService,
    InvalidTransition,
    Outcome,
    process_document_queue,
)
from docqueue_app.queue.service import ClaimedItem
from tests.helpers import engine_events, execute_sql


@pytest.fixture
def service(app_ctx):
    return DocumentQueueService()


def new_document(service: DocumentQueueService, name: str = "a.txt", priority: int = 5) -> int:
    document, created = service.submit_document(name, name.encode() * 3, "text/plain", priority)
    assert created
    return document.id


def item_of(document_id: int) -> QueueItem:
    db.session.commit()
    return db.session.scalars(
        db.select(QueueItem).where(QueueItem.document_id == document_id).order_by(QueueItem.id)
    ).all()[-1]


def document(document_id: int) -> Document:
    db.session.commit()
    return db.session.get(Document, document_id)


def claim(service: DocumentQueueService, document_id: int, worker: str = "w1") -> QueueItem:
    item = item_of(document_id)
    assert service.mark_in_progress(item, worker)
    return item


def race_to_claim(app, item_id: int, racers: int = 2) -> list[bool]:
    """Let ``racers`` sessions, each in its own thread, claim one item at the same moment."""
    wins: list[bool] = []
    barrier = threading.Barrier(racers)

    def contend(worker: str) -> None:
        with app.app_context(), Session(db.engine) as session:
            racer = DocumentQueueService(session)
            item = session.get(QueueItem, item_id)
            barrier.wait()
            wins.append(racer.mark_in_progress(item, worker))

    threads = [threading.Thread(target=contend, args=(f"w{k}",)) for k in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wins


class TestEnqueue:
    def test_upload_queues_one_pending_item(self, service):
        doc_id = new_document(service)
        item = item_of(doc_id)
        assert (item.status, item.operation, item.priority, item.attempts) == (
            "pending",
            "process",
            5,
            0,
        )
        assert item.max_attempts == 5
        assert document(doc_id).status == "pending"

    def test_same_bytes_return_the_existing_document(self, service):
        first, created = service.submit_document("a.txt", b"same", "text/plain")
        second, created_again = service.submit_document("b.txt", b"same", "text/plain")
        assert created and not created_again
        assert second.id == first.id
        assert db.session.scalar(db.select(db.func.count()).select_from(QueueItem)) == 1

    def test_enqueue_while_pending_returns_that_item_with_raised_priority(self, service):
        doc_id = new_document(service, priority=3)
        first = item_of(doc_id)
        again = service.enqueue(doc_id, "reprocess", priority=8)
        assert again.id == first.id
        assert item_of(doc_id).priority == 8
        lower = service.enqueue(doc_id, "reprocess", priority=1)
        assert lower.id == first.id
        assert item_of(doc_id).priority == 8

    def test_enqueue_makes_a_waiting_item_due_now(self, app, service):
        doc_id = new_document(service)
        execute_sql(
            app, "UPDATE queue_items SET run_at = :later", later=utcnow() + timedelta(hours=1)
        )
        assert service.get_pending_items(10) == []
        service.enqueue(doc_id, "reprocess")
        assert [i.document_id for i in service.get_pending_items(10)] == [doc_id]

    def test_enqueue_unknown_document(self, service):
        with pytest.raises(DocumentNotFound):
            service.enqueue(12345, "reprocess")

    @pytest.mark.parametrize("priority", [-1, 11])
    def test_priority_out_of_range(self, service, priority):
        doc_id = new_document(service)
        with pytest.raises(ValueError):
            service.enqueue(doc_id, "reprocess", priority)

    def test_unknown_operation(self, service):
        doc_id = new_document(service)
        with pytest.raises(ValueError):
            service.enqueue(doc_id, "explode")


class TestOrdering:
    def test_higher_priority_first_then_oldest(self, service):
        low = new_document(service, "low.txt", priority=1)
        high_old = new_document(service, "high-old.txt", priority=9)
        mid = new_document(service, "mid.txt", priority=5)
        high_new = new_document(service, "high-new.txt", priority=9)
        order = [i.document_id for i in service.get_pending_items(10)]
        assert order == [high_old, high_new, mid, low]

    def test_limit_and_not_yet_due_items(self, app, service):
        ids = [new_document(service, f"{n}.txt") for n in range(3)]
        execute_sql(
            app,
            "UPDATE queue_items SET run_at = :later WHERE document_id = :doc",
            later=utcnow() + timedelta(minutes=5),
            doc=ids[0],
        )
        assert [i.document_id for i in service.get_pending_items(1)] == [ids[1]]
        assert [i.document_id for i in service.get_pending_items(10)] == ids[1:]

    def test_claim_due_items_claims_in_priority_order(self, service):
        low = new_document(service, "low.txt", priority=0)
        high = new_document(service, "high.txt", priority=10)
        items = service.claim_due_items(1, "w1")
        assert [i.document_id for i in items] == [high]
        assert item_of(high).status == "in_progress"
        assert item_of(low).status == "pending"
        assert document(high).status == "processing"


class TestClaims:
    def test_mark_in_progress_sets_the_lease(self, service):
        doc_id = new_document(service)
        item = claim(service, doc_id, "worker-a")
        fresh = item_of(doc_id)
        assert fresh.status == "in_progress"
        assert fresh.locked_by == "worker-a"
        assert fresh.attempts == 1
        assert fresh.lease_expires_at > utcnow() + timedelta(seconds=290)
        assert fresh.started_at is not None
        assert not service.mark_in_progress(item, "worker-b")

    def test_two_sessions_racing_for_one_item_exactly_one_wins(self, app, service):
        for n in range(40):
            doc_id = new_document(service, f"race-{n}.txt")
            wins = race_to_claim(app, item_of(doc_id).id)
            assert sorted(wins) == [False, True], f"round {n}: {wins}"
            assert item_of(doc_id).attempts == 1

    def test_concurrent_batch_claims_never_share_an_item(self, app, service):
        ids = {new_document(service, f"batch-{n}.txt") for n in range(30)}
        claimed: list[list[int]] = []
        barrier = threading.Barrier(3)

        def worker(name: str) -> None:
            with app.app_context(), Session(db.engine) as session:
                racer = DocumentQueueService(session)
                barrier.wait()
                mine: list[int] = []
                while batch := racer.claim_due_items(4, name):
                    mine.extend(item.document_id for item in batch)
                claimed.append(mine)

        threads = [threading.Thread(target=worker, args=(f"w{k}",)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        everything = [doc for mine in claimed for doc in mine]
        assert sorted(everything) == sorted(ids)

    def test_a_document_never_has_two_items_in_progress(self, service):
        doc_id = new_document(service)
        running = claim(service, doc_id)
        queued = service.enqueue(doc_id, "reprocess", priority=10)
        assert queued.id != running.id
        assert document(doc_id).status == "pending"  # the latest item is the queued one
        assert service.get_pending_items(10) == []
        assert service.claim_due_items(10, "w2") == []
        assert not service.mark_in_progress(item_of(doc_id), "w2")
        assert service.mark_completed(running, {"text": "first run"})
        assert [i.id for i in service.get_pending_items(10)] == [queued.id]
        assert document(doc_id).text == "first run"  # kept while the reprocess waits


class TestOutcomes:
    def test_completion_records_the_result_on_the_document(self, service):
        doc_id = new_document(service)
        item = claim(service, doc_id)
        result = {"text": "two words", "title": "T", "page_count": 2, "metadata": {"k": "v"}}
        assert service.mark_completed(item, result)
        doc = document(doc_id)
        assert (doc.status, doc.text, doc.title, doc.page_count) == (
            "completed",
            "two words",
            "T",
            2,
        )
        assert (doc.word_count, doc.char_count, doc.error) == (2, 9, None)
        assert doc.processed_at is not None
        fresh = item_of(doc_id)
        assert (fresh.status, fresh.locked_by, fresh.finished_at is not None) == (
            "completed",
            None,
            True,
        )

    @pytest.mark.parametrize(("attempt", "low", "high"), [(1, 10, 12.5), (2, 20, 25), (3, 40, 50)])
    def test_transient_failure_backs_off_exponentially(self, app, service, attempt, low, high):
        doc_id = new_document(service)
        execute_sql(app, "UPDATE queue_items SET attempts = :n", n=attempt - 1)
        item = claim(service, doc_id)
        before = utcnow()
        assert service.mark_failed(item, "network hiccup")
        fresh = item_of(doc_id)
        assert fresh.status == "pending"
        assert fresh.last_error == "network hiccup"
        assert fresh.attempts == attempt
        delay = (fresh.run_at - before).total_seconds()
        assert low - 1 <= delay <= high + 1
        doc = document(doc_id)
        assert (doc.status, doc.error) == ("pending", None)

    def test_backoff_is_capped(self, make_app):
        app = make_app(RETRY_BASE_SECONDS=10, RETRY_MAX_SECONDS=30, MAX_ATTEMPTS=10)
        with app.app_context():
            service = DocumentQueueService()
            doc_id = new_document(service)
            execute_sql(app, "UPDATE queue_items SET attempts = 6")
            item = claim(service, doc_id)
            before = utcnow()
            service.mark_failed(item, "again")
            delay = (item_of(doc_id).run_at - before).total_seconds()
            assert 29 <= delay <= 30 * 1.25 + 1

    def test_permanent_failure_ends_failed(self, service):
        doc_id = new_document(service)
        item = claim(service, doc_id)
        assert service.mark_failed(item, "encrypted PDF", permanent=True)
        assert item_of(doc_id).status == "failed"
        doc = document(doc_id)
        assert (doc.status, doc.error) == ("failed", "encrypted PDF")

    def test_last_attempt_ends_failed(self, app, service):
        doc_id = new_document(service)
        execute_sql(app, "UPDATE queue_items SET attempts = 4")
        item = claim(service, doc_id)
        assert service.mark_failed(item, "still broken")
        fresh = item_of(doc_id)
        assert (fresh.status, fresh.attempts) == ("failed", 5)
        assert document(doc_id).error == "still broken"

    def test_history_keeps_every_attempt(self, app, service):
        doc_id = new_document(service)
        service.mark_failed(claim(service, doc_id), "first")
        execute_sql(app, "UPDATE queue_items SET run_at = :now", now=utcnow())
        service.mark_completed(claim(service, doc_id, "w2"))
        history = item_of(doc_id).history
        assert [(h.attempt, h.worker, h.outcome, h.error) for h in history] == [
            (1, "w1", "retry", "first"),
            (2, "w2", "completed", None),
        ]
        assert all(h.duration_seconds is not None for h in history)

    def test_result_of_a_deleted_document_is_dropped(self, service):
        doc_id = new_document(service)
        item = claim(service, doc_id)
        assert service.delete_document(doc_id)
        assert not service.mark_completed(item, {"text": "late"})
        assert not service.mark_failed(item, "late")
        assert db.session.get(Document, doc_id) is None

    def test_result_of_a_deleted_document_never_lands_on_the_next_upload(self, service):
        # SQLite numbers a new row max(id) + 1: had the next upload taken the deleted
        # document's ids, the same worker's claim of it would pass the old fencing check.
        doc_id = new_document(service, "old.txt")
        item = claim(service, doc_id)
        old_ids = (doc_id, item.id)
        assert service.delete_document(doc_id)
        new_id = new_document(service, "new.txt")
        new_item = claim(service, new_id)

        assert not service.mark_completed(item, {"text": "the deleted document's"})
        assert service.mark_completed(new_item, {"text": "its own"})
        assert (new_id, new_item.id) != old_ids
        assert document(new_id).text == "its own"


class TestLeases:
    def expire(self, app, doc_id: int) -> None:
        execute_sql(
            app,
            "UPDATE queue_items SET lease_expires_at = :past WHERE document_id = :doc",
            past=utcnow() - timedelta(seconds=1),
            doc=doc_id,
        )

    def test_expired_lease_is_claimable_again_and_counts_an_attempt(self, app, service):
        doc_id = new_document(service)
        claim(service, doc_id, "dead-worker")
        self.expire(app, doc_id)
        assert [i.document_id for i in service.get_pending_items(10)] == [doc_id]
        assert service.mark_in_progress(item_of(doc_id), "rescuer")
        fresh = item_of(doc_id)
        assert (fresh.attempts, fresh.locked_by) == (2, "rescuer")
        assert [h.outcome for h in fresh.history] == ["lost", None]

    def test_expired_in_progress_item_can_be_claimed_directly(self, app, service):
        doc_id = new_document(service)
        claim(service, doc_id, "dead-worker")
        self.expire(app, doc_id)
        assert service.mark_in_progress(item_of(doc_id), "rescuer")
        assert item_of(doc_id).attempts == 2

    def test_fencing_a_late_result_changes_nothing(self, app, service):
        doc_id = new_document(service)
        with Session(db.engine) as slow_session:
            slow = DocumentQueueService(slow_session)
            stale = slow_session.get(QueueItem, item_of(doc_id).id)
            assert slow.mark_in_progress(stale, "slow-worker")
            self.expire(app, doc_id)
            fresh = claim(service, doc_id, "new-owner")
            assert not slow.mark_completed(stale, {"text": "stale"})
            assert not slow.mark_failed(stale, "stale", permanent=True)
        current = item_of(doc_id)
        assert (current.status, current.locked_by, current.attempts) == (
            "in_progress",
            "new-owner",
            2,
        )
        assert service.mark_completed(fresh, {"text": "fresh"})
        assert document(doc_id).text == "fresh"

    def test_lost_worker_on_the_last_attempt_fails_the_item(self, app, service):
        doc_id = new_document(service)
        execute_sql(app, "UPDATE queue_items SET attempts = 4")
        claim(service, doc_id)
        self.expire(app, doc_id)
        assert service.rescue_expired_leases() == 1
        fresh = item_of(doc_id)
        assert fresh.status == "failed"
        assert "worker lost" in fresh.last_error
        assert document(doc_id).status == "failed"

    def test_heartbeat_extends_only_held_leases(self, app, service):
        doc_id = new_document(service)
        item = claim(service, doc_id)
        execute_sql(app, "UPDATE queue_items SET lease_expires_at = :soon", soon=utcnow())
        held = {item.id: item.claim}
        assert service.extend_leases(held) == 1
        assert item_of(doc_id).lease_expires_at > utcnow() + timedelta(seconds=200)
        self.expire(app, doc_id)
        claim(service, doc_id, "other")
        assert service.extend_leases(held) == 0

    def test_released_items_go_back_without_counting_the_attempt(self, service):
        doc_id = new_document(service)
        [item] = service.claim_due_items(5, "stopping-worker")
        assert service.release_items([item]) == 1
        fresh = item_of(doc_id)
        assert (fresh.status, fresh.attempts, fresh.locked_by) == ("pending", 0, None)
        assert fresh.history == []
        assert document(doc_id).status == "pending"

    def test_released_items_keep_their_place_ahead_of_later_uploads(self, service):
        # SPEC §3: among equal priority, older first; a stopping worker never started them.
        first = new_document(service, "first.txt")
        claimed = service.claim_due_items(5, "stopping-worker")
        later = new_document(service, "later.txt")
        service.release_items(claimed)

        [next_item] = service.claim_due_items(1, "next-worker")

        assert next_item.document_id == first
        assert later != first


class TestStatsAndPruning:
    def test_stats_count_each_status(self, app, service):
        done = new_document(service, "done.txt")
        service.mark_completed(claim(service, done))
        broken = new_document(service, "broken.txt")
        service.mark_failed(claim(service, broken), "bad", permanent=True)
        claim(service, new_document(service, "busy.txt"))
        new_document(service, "waiting.txt")
        execute_sql(
            app,
            "UPDATE queue_items SET run_at = :t WHERE status = 'pending'",
            t=utcnow() - timedelta(seconds=30),
        )
        stats = service.get_queue_stats()
        assert {
            k: stats[k]
            for k in ("pending", "in_progress", "completed", "failed", "cancelled", "total")
        } == {
            "pending": 1,
            "in_progress": 1,
            "completed": 1,
            "failed": 1,
            "cancelled": 0,
            "total": 4,
        }
        assert 29 <= stats["oldest_pending_age_seconds"] <= 60

    def test_oldest_pending_age_is_null_without_due_items(self, service):
        assert service.get_queue_stats()["oldest_pending_age_seconds"] is None

    def test_pruning_deletes_old_finished_items_but_keeps_documents(self, app, service):
        doc_id = new_document(service)
        service.mark_completed(claim(service, doc_id), {"text": "first"})
        service.enqueue(doc_id, "reprocess")
        service.mark_completed(claim(service, doc_id), {"text": "kept"})
        execute_sql(app, "UPDATE queue_items SET finished_at = :t", t=utcnow() - timedelta(days=31))
        assert service.prune_finished_items(30) == 2
        assert db.session.scalar(db.select(db.func.count()).select_from(QueueAttempt)) == 0
        doc = document(doc_id)
        assert (doc.status, doc.text) == ("completed", "kept")


class TestAdminActions:
    def test_retry_a_failed_item_resets_its_attempts(self, service):
        doc_id = new_document(service)
        item = claim(service, doc_id)
        service.mark_failed(item, "broken", permanent=True)
        service.retry_item(item.id)
        fresh = item_of(doc_id)
        assert (fresh.status, fresh.attempts) == ("pending", 0)
        assert document(doc_id).status == "pending"
        service.mark_completed(claim(service, doc_id, "w2"))
        assert [h.outcome for h in item_of(doc_id).history] == ["failed", "completed"]

    def test_retry_refuses_a_pending_item(self, service):
        doc_id = new_document(service)
        with pytest.raises(InvalidTransition):
            service.retry_item(item_of(doc_id).id)

    def test_cancel_a_pending_item(self, service):
        doc_id = new_document(service)
        service.cancel_item(item_of(doc_id).id)
        assert item_of(doc_id).status == "cancelled"
        assert document(doc_id).status == "cancelled"
        assert service.get_pending_items(10) == []

    def test_cancel_refuses_a_completed_item(self, service):
        doc_id = new_document(service)
        service.mark_completed(claim(service, doc_id))
        with pytest.raises(InvalidTransition):
            service.cancel_item(item_of(doc_id).id)

    def test_retry_failed_items_skips_documents_with_pending_work(self, service):
        lonely = new_document(service, "lonely.txt")
        service.mark_failed(claim(service, lonely), "x", permanent=True)
        busy = new_document(service, "busy.txt")
        service.mark_failed(claim(service, busy), "x", permanent=True)
        service.enqueue(busy, "reprocess")
        assert service.retry_failed_items() == 1
        assert item_of(lonely).status == "pending"

    def test_purge_refuses_unfinished_statuses(self, service):
        with pytest.raises(ValueError):
            service.purge_items(1, ["pending"])

    def test_purging_all_of_a_documents_items_keeps_its_status_and_error(self, app, service):
        doc_id = new_document(service)
        service.mark_failed(claim(service, doc_id), "bad", permanent=True)
        service.enqueue(doc_id, "reprocess")
        service.mark_failed(claim(service, doc_id), "worse", permanent=True)
        execute_sql(app, "UPDATE queue_items SET finished_at = :t", t=utcnow() - timedelta(days=2))
        assert service.purge_items(1, ["failed"]) == 2
        assert (document(doc_id).status, document(doc_id).error) == ("failed", "worse")
        assert service.purge_items(1, ["failed"]) == 0
        assert service.retry_failed_items() == 0


class TestPause:
    # A woken worker claims without polling first: the claim itself must see the pause.
    @pytest.mark.parametrize("look_first", [True, False], ids=["polled", "woken"])
    def test_a_paused_queue_claims_nothing_until_resumed(self, service, look_first):
        doc_id = new_document(service)
        assert service.get_queue_stats()["paused"] is False
        assert service.set_paused(True) is True
        assert service.is_paused()
        assert service.get_queue_stats()["paused"] is True
        assert service.claim_due_items(10, "w", look_first) == []
        assert item_of(doc_id).status == "pending"
        new_document(service, "still-accepted.txt")  # uploads still queue
        service.set_paused(False)
        claimed = service.claim_due_items(10, "w", look_first)
        assert {i.document_id for i in claimed} >= {doc_id}
        assert document(doc_id).status == "processing"

    def test_a_pause_that_lands_between_the_poll_and_the_claim_is_honoured(self, app, service):
        # The poll found work and no pause; another process pauses the queue
        # before the claim's transaction begins: the claim itself must see it.
        doc_id = new_document(service)
        service.set_paused(False)
        paused_after_the_poll: list[bool] = []

        def pause_once_polled(_conn, _cursor, statement: str, *_: object) -> None:
            if " AS lost" in statement and not paused_after_the_poll:
                paused_after_the_poll.append(True)
                execute_sql(app, "UPDATE queue_state SET paused = :paused", paused=True)

        with engine_events(app, after_cursor_execute=pause_once_polled):
            assert service.claim_due_items(10, "w", look_first=True) == []

        assert paused_after_the_poll
        assert service.is_paused()
        assert item_of(doc_id).status == "pending"


class TestOneDocumentNeverStopsTheQueue:
    """Defect 1: a reprocess queued behind a running item, then that item comes back."""

    def reprocessed_while_running(self, service: DocumentQueueService) -> tuple[int, QueueItem]:
        doc_id = new_document(service, "busy.txt")
        running = claim(service, doc_id, "w1")
        service.enqueue(doc_id, "reprocess", priority=2)
        return doc_id, running

    def assert_folded(self, service, doc_id: int, running: QueueItem) -> None:
        old = db.session.get(QueueItem, running.id)
        db.session.refresh(old)
        newer = item_of(doc_id)
        assert old.status == "cancelled"
        assert old.last_error == f"superseded by queue item {newer.id}"
        assert (newer.status, document(doc_id).status) == ("pending", "pending")
        other = new_document(service, "other.txt")
        claimed = {i.document_id for i in service.claim_due_items(10, "w2")}
        assert claimed == {doc_id, other}  # the queue goes on, the document too

    def test_a_transient_failure_folds_into_the_queued_reprocess(self, service):
        doc_id, running = self.reprocessed_while_running(service)
        assert service.mark_failed(running, "network hiccup")
        self.assert_folded(service, doc_id, running)

    def test_a_lost_worker_folds_into_the_queued_reprocess(self, app, service):
        doc_id, running = self.reprocessed_while_running(service)
        execute_sql(app, "UPDATE queue_items SET lease_expires_at = :t", t=utcnow())
        assert service.rescue_expired_leases() == 1
        self.assert_folded(service, doc_id, running)
        assert [h.outcome for h in db.session.get(QueueItem, running.id).history] == ["lost"]

    def test_a_release_folds_into_the_queued_reprocess(self, service):
        doc_id, running = self.reprocessed_while_running(service)
        assert service.release_items([running]) == 1
        self.assert_folded(service, doc_id, running)

    def test_a_failure_behind_a_cancelled_reprocess_folds_too(self, service):
        # Found by the state machine: an older item pending behind the document's
        # latest (cancelled) one made retrying that one hit the unique index.
        doc_id, running = self.reprocessed_while_running(service)
        queued = item_of(doc_id)
        service.cancel_item(queued.id)
        service.mark_failed(running, "hiccup")
        assert db.session.get(QueueItem, running.id).status == "cancelled"
        assert service.retry_item(queued.id).status == "pending"
        assert document(doc_id).status == "pending"

    def test_the_queued_item_keeps_the_higher_priority(self, service):
        doc_id = new_document(service, "busy.txt", priority=9)
        running = claim(service, doc_id)
        service.enqueue(doc_id, "reprocess", priority=1)
        service.mark_failed(running, "hiccup")
        assert item_of(doc_id).priority == 9

    def test_the_worker_pass_goes_on_after_such_a_failure(self, app, service):
        doc_id, _running = self.reprocessed_while_running(service)
        execute_sql(app, "UPDATE queue_items SET lease_expires_at = :t", t=utcnow())
        others = [new_document(service, f"other-{n}.txt") for n in range(3)]
        assert process_document_queue()["completed"] == 4
        assert {document(i).status for i in [doc_id, *others]} == {"completed"}


class TestTheLatestItemIsTheDocument:
    """Defect 7: a document's status never drifts from its latest item."""

    def superseded_failure(self, service) -> tuple[int, QueueItem]:
        doc_id = new_document(service)
        old = claim(service, doc_id)
        service.mark_failed(old, "broken", permanent=True)
        service.enqueue(doc_id, "reprocess")
        service.mark_completed(claim(service, doc_id, "w2"), {"text": "done"})
        return doc_id, old

    def test_a_superseded_item_cannot_be_retried(self, service):
        doc_id, old = self.superseded_failure(service)
        with pytest.raises(InvalidTransition, match="superseded"):
            service.retry_item(old.id)
        assert document(doc_id).status == "completed"
        assert service.get_pending_items(10) == []

    def test_retry_failed_leaves_superseded_items_alone(self, service):
        doc_id, _old = self.superseded_failure(service)
        assert service.retry_failed_items() == 0
        assert document(doc_id).status == "completed"

    def test_purge_takes_a_superseded_item_and_keeps_the_latest(self, app, service):
        doc_id, old = self.superseded_failure(service)
        old_id = old.id
        execute_sql(app, "UPDATE queue_items SET finished_at = :t", t=utcnow() - timedelta(days=9))
        assert service.purge_items(1, ["failed"]) == 1
        assert item_of(doc_id).status == "completed"
        assert db.session.get(QueueItem, old_id) is None


class TestCancelInProgress:
    """Defect 8 (SPEC §3, updated): cancelling a running item ends it at once."""

    def test_cancel_ends_a_running_item_and_its_late_result_changes_nothing(self, service):
        doc_id = new_document(service)
        running = claim(service, doc_id)
        cancelled = service.cancel_item(running.id)
        assert (cancelled.status, cancelled.locked_by, cancelled.lease_expires_at) == (
            "cancelled",
            None,
            None,
        )
        assert document(doc_id).status == "cancelled"
        assert not service.mark_completed(running, {"text": "too late"})
        assert not service.mark_failed(running, "too late")
        fresh = item_of(doc_id)
        assert fresh.status == "cancelled"
        assert [(h.outcome, h.error) for h in fresh.history] == [("cancelled", "cancelled")]
        assert document(doc_id).text is None

    def test_the_worker_learns_its_claim_is_gone(self, service):
        doc_id = new_document(service)
        running = claim(service, doc_id)
        kept = claim(service, new_document(service, "kept.txt"))
        service.cancel_item(running.id)
        claims = {running.id: running.claim, kept.id: kept.claim}
        assert service.lost_claims(claims) == {running.id}

    def test_a_cancelled_item_can_be_retried(self, service):
        doc_id = new_document(service)
        running = claim(service, doc_id)
        service.cancel_item(running.id)
        service.retry_item(running.id)
        assert (item_of(doc_id).status, document(doc_id).status) == ("pending", "pending")


class TestOneBadResultFailsOnlyItsDocument:
    """Defect 2: one outcome the database cannot store never loses the batch."""

    def claimed(self, service, count: int) -> list[QueueItem]:
        for n in range(count):
            new_document(service, f"doc-{n}.txt")
        return service.claim_due_items(count, "w1")

    def test_text_the_database_cannot_hold_is_stored_cleaned(self, service):
        first, second = self.claimed(service, 2)
        dirty = {
            "text": "lone \ud800 and nul \x00 end",
            "title": "t\x00",
            "metadata": {"k\x00": "\udfff"},
        }
        outcomes = [Outcome.success(first, dirty), Outcome.success(second, {"text": "fine"})]
        assert service.record_outcomes(outcomes) == 2
        doc = document(first.document_id)
        assert (doc.status, doc.text, doc.title) == ("completed", "lone \ufffd and nul  end", "t")
        assert doc.extracted_metadata == {"k": "\ufffd"}
        assert document(second.document_id).text == "fine"

    @pytest.mark.parametrize(
        ("result", "words"),
        [
            ("just a string", "a dict is expected, not str"),
            ({"text": b"bytes"}, "text"),
            ({"text": "x", "metadata": {"when": object()}}, "metadata: not JSON"),
            ({"text": "x", "metadata": {"ratio": float("nan")}}, "metadata: not JSON"),
            ({"text": "x", "page_count": "many"}, "page_count"),
        ],
    )
    def test_a_result_not_of_the_processor_shape_fails_permanently(self, service, result, words):
        bad, good = self.claimed(service, 2)
        outcomes = [Outcome.success(bad, result), Outcome.success(good, {"text": "fine"})]
        assert service.record_outcomes(outcomes) == 2
        failed = item_of(bad.document_id)
        assert failed.status == "failed"
        assert failed.last_error.startswith("invalid processor result")
        assert words in failed.last_error
        assert document(good.document_id).status == "completed"

    def test_an_unstorable_outcome_is_written_alone_and_fails_its_document(self, service):
        items = self.claimed(service, 3)
        # Built by hand, past the validation: a page count no INTEGER column holds.
        unstorable = Outcome(items[1].id, items[1].claim, result={"text": "x", "page_count": 2**70})
        outcomes = [
            Outcome.success(items[0], {"text": "a"}),
            unstorable,
            Outcome.of(items[2], error="e"),
        ]
        assert service.record_outcomes(outcomes) == 3
        assert document(items[0].document_id).status == "completed"
        failed = item_of(items[1].document_id)
        assert failed.status == "failed" and "cannot be stored" in failed.last_error
        assert item_of(items[2].document_id).status == "pending"


class TestFencingAcrossRetries:
    """A retry resets attempts (SPEC §4), so the same worker's next claim is attempt 1
    again: the claim it lost (cancelled, then retried) must stay lost all the same."""

    @staticmethod
    def cancelled_retried_and_claimed_again(service) -> tuple[int, ClaimedItem, ClaimedItem]:
        doc_id = new_document(service)
        [first] = service.claim_due_items(1, "worker-1")
        service.cancel_item(first.id)
        service.retry_item(first.id)
        [second] = service.claim_due_items(1, "worker-1")
        assert (second.id, second.attempts) == (first.id, first.attempts)
        return doc_id, first, second

    def test_a_cancelled_run_stays_cancelled_after_a_retry_and_a_new_claim(self, service):
        doc_id, first, second = self.cancelled_retried_and_claimed_again(service)
        # The worker's watch sees the first run lost, so it kills it...
        assert service.lost_claims({first.id: first.claim}) == {first.id}
        assert service.lost_claims({second.id: second.claim}) == set()
        # ...and should its late result arrive all the same, it changes nothing.
        assert not service.mark_completed(first, {"text": "the cancelled run"})
        assert not service.extend_leases({first.id: first.claim})
        assert service.extend_leases({second.id: second.claim}) == 1
        assert item_of(doc_id).status == "in_progress"
        assert document(doc_id).status == "processing"
        assert service.mark_completed(second, {"text": "the retried run"})
        assert document(doc_id).text == "the retried run"

    def test_a_cancelled_runs_late_failure_changes_nothing_after_a_retry(self, service):
        doc_id, first, second = self.cancelled_retried_and_claimed_again(service)
        assert not service.mark_failed(first, "the cancelled run", permanent=True)
        assert item_of(doc_id).status == "in_progress"
        assert service.mark_completed(second, {"text": "the retried run"})
        assert document(doc_id).status == "completed"
