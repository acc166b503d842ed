"""Admins, uploads and workers acting on the same rows at the same time, for real.

The state machine test runs one operation at a time; here each actor is a thread
with its own session (its own connection), on both back ends. Where an
interleaving matters, one actor is held at a point of its transaction (before
its commit, or before a statement) while the other runs into its locks, so the
race is the same at every run; the rest run many rounds from a barrier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from docqueue_app.models import Document, DocumentContent, QueueItem, db
from docqueue_app.queue import DocumentQueueService, InvalidTransition
from docqueue_app.queue.submissions import NewDocument
from docqueue_app.states import DOCUMENT_STATUS_OF_ITEM
from tests.helpers import backend_name

Action = Callable[[DocumentQueueService], Any]
WAIT = 30  # seconds an actor waits for the test to let it go: only a broken test waits


class Actor:
    """An action run by a service of its own session in a thread; its answer or error."""

    def __init__(
        self, app: Flask, action: Action, setup: Callable[[Session], None] | None = None
    ) -> None:
        self.answer: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(app, action, setup))

    def _run(self, app: Flask, action: Action, setup: Callable[[Session], None] | None) -> None:
        with app.app_context(), Session(db.engine) as session:
            if setup is not None:
                setup(session)
            try:
                self.answer = action(DocumentQueueService(session))
            except BaseException as exc:  # the test reads it
                self.error = exc

    def start(self) -> Actor:
        self._thread.start()
        return self

    def result(self) -> Any:
        """The action's answer once it ended; its exception raised here."""
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the actor never finished"
        if self.error is not None:
            raise self.error
        return self.answer


@contextmanager
def held_before_commit(app: Flask, action: Action) -> Iterator[Actor]:
    """Run ``action`` in a thread and hold its first transaction before it commits
    (its locks held, its rows unseen by others) until the block ends."""
    reached, go = threading.Event(), threading.Event()

    def hold_first_commit(session: Session) -> None:
        @event.listens_for(session, "before_commit")
        def hold(_: Session) -> None:
            if not reached.is_set():
                reached.set()
                go.wait(WAIT)

    actor = Actor(app, action, hold_first_commit).start()
    assert reached.wait(WAIT), "the held action never reached its commit"
    try:
        yield actor
    finally:
        go.set()


@contextmanager
def held_before_statement(app: Flask, action: Action, starting: str) -> Iterator[Actor]:
    """Run ``action`` in a thread and hold it before its first statement that starts
    with ``starting``, until the block ends.

    The listener stays on the test app's engine, inert once it held: removing it
    while another thread runs a statement breaks that thread's event dispatch.
    """
    reached, go = threading.Event(), threading.Event()
    actor = Actor(app, action)

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        mine = threading.current_thread() is actor._thread
        if mine and not reached.is_set() and statement.lstrip().startswith(starting):
            reached.set()
            go.wait(WAIT)

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", hold)
    actor.start()
    assert reached.wait(WAIT), f"the held action never sent {starting!r}"
    try:
        yield actor
    finally:
        go.set()


@contextmanager
def held_after_commit(app: Flask, action: Action) -> Iterator[Actor]:
    """Run ``action`` in a thread; hold it at its first statement after its first commit,
    if it sends one, until the block ends (the block starts once it is held or done)."""
    reached, go, committed = threading.Event(), threading.Event(), threading.Event()
    actor = Actor(app, action)

    def note_commit(conn: Any) -> None:
        if threading.current_thread() is actor._thread:
            committed.set()

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        mine = threading.current_thread() is actor._thread
        if mine and committed.is_set() and not reached.is_set():
            reached.set()
            go.wait(WAIT)

    with app.app_context():
        event.listen(db.engine, "commit", note_commit)
        event.listen(db.engine, "before_cursor_execute", hold)
    actor.start()
    while not reached.wait(0.01) and actor._thread.is_alive():
        pass
    try:
        yield actor
    finally:
        go.set()


def wait_until_blocked(app: Flask, actor: Actor) -> None:
    """Return once ``actor`` waits for a lock another transaction holds.

    PostgreSQL says so in pg_stat_activity. SQLite has no such view: there the
    actor waits for the database's one write lock whatever it does, so the
    order in which the two go cannot change the outcome.
    """
    if backend_name(app) != "postgresql":
        return
    with app.app_context(), db.engine.connect() as connection:
        for _ in range(WAIT * 100):
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
            )
            connection.commit()
            if waiting:
                return
            threading.Event().wait(0.01)
    raise AssertionError("the actor never waited for a lock")


def race(app: Flask, *actions: Action) -> list[Actor]:
    """Run the actions at once, each in its own thread, started from one barrier."""
    barrier = threading.Barrier(len(actions))

    def after_barrier(action: Action) -> Action:
        def run(service: DocumentQueueService) -> Any:
            barrier.wait(WAIT)
            return action(service)

        return run

    actors = [Actor(app, after_barrier(action)).start() for action in actions]
    for actor in actors:
        actor._thread.join(WAIT)
    return actors


# -- what a user sees ------------------------------------------------------------


def items_of(document_id: int) -> list[QueueItem]:
    db.session.commit()
    return db.session.scalars(
        select(QueueItem).where(QueueItem.document_id == document_id).order_by(QueueItem.id)
    ).all()


def document(document_id: int) -> Document | None:
    db.session.commit()
    return db.session.get(Document, document_id)


def assert_document_follows_its_latest_item(document_id: int) -> None:
    """SPEC §3: a document's status is its latest item's; never two pending, or two running."""
    items = items_of(document_id)
    shown = document(document_id)
    assert shown is not None
    statuses = [item.status for item in items]
    assert statuses.count("pending") <= 1, statuses
    assert statuses.count("in_progress") <= 1, statuses
    if items:
        assert shown.status == DOCUMENT_STATUS_OF_ITEM[items[-1].status], (shown.status, statuses)


def new_document(service: DocumentQueueService, name: str = "a.txt") -> int:
    document, created = service.submit_document(name, name.encode() * 3, "text/plain")
    assert created
    return document.id


def running(service: DocumentQueueService, name: str = "a.txt") -> tuple[int, Any]:
    """A new document whose item a worker holds: its id and the claimed item.

    What earlier rounds left pending is withdrawn first, so the claim takes this one.
    """
    service.cancel_items(
        db.session.scalars(select(QueueItem.id).where(QueueItem.status == "pending")).all()
    )
    document_id = new_document(service, name)
    [item] = service.claim_due_items(1, "worker")
    assert item.document_id == document_id
    return document_id, item


def failed(service: DocumentQueueService, name: str = "a.txt") -> tuple[int, int]:
    """A new document whose item failed for good: its id and the item's."""
    document_id, item = running(service, name)
    assert service.mark_failed(item, "broken", permanent=True)
    return document_id, item.id


@pytest.fixture
def service(app_ctx: Flask) -> DocumentQueueService:
    return DocumentQueueService()


# -- a reprocess committing while an item's end waits for it ----------------------


ENDS: dict[str, Callable[[Any], Action]] = {
    "completed": lambda item: lambda s: s.mark_completed(item, {"text": "done"}),
    "failed": lambda item: lambda s: s.mark_failed(item, "broken", permanent=True),
    "cancelled": lambda item: lambda s: s.cancel_item(item.id),
}


@pytest.mark.parametrize("end", sorted(ENDS))
def test_an_item_ending_while_a_reprocess_commits_leaves_the_document_pending(app, service, end):
    """The reprocess answered 'pending', and its item waits: the document says so.

    It said completed, failed or cancelled on PostgreSQL: the end waited for the
    document row the reprocess held and then wrote the status it had read before.
    """
    document_id, item = running(service)
    with held_before_commit(app, lambda s: s.enqueue(document_id, "reprocess")) as reprocess:
        ending = Actor(app, ENDS[end](item)).start()
        wait_until_blocked(app, ending)
    assert reprocess.result().status == "pending"
    ending.result()
    assert [i.status for i in items_of(document_id)] == [end, "pending"]
    assert document(document_id).status == "pending"
    assert_document_follows_its_latest_item(document_id)


def test_a_retry_that_waits_for_a_reprocess_is_refused_as_superseded(app, service):
    """The admin is told the item was superseded (a 409), not a 500: PostgreSQL's unique
    index refused the retry's second pending item with an IntegrityError."""
    document_id, item_id = failed(service)
    with held_before_commit(app, lambda s: s.enqueue(document_id, "reprocess")) as reprocess:
        retry = Actor(app, lambda s: s.retry_item(item_id)).start()
        wait_until_blocked(app, retry)
    newer = reprocess.result().id
    with pytest.raises(InvalidTransition, match=f"superseded by queue item {newer}"):
        retry.result()
    assert [i.status for i in items_of(document_id)] == ["failed", "pending"]
    assert_document_follows_its_latest_item(document_id)


def test_a_reprocess_that_waits_for_a_retry_joins_the_retried_item(app, service):
    document_id, item_id = failed(service)
    with held_before_commit(app, lambda s: s.retry_item(item_id)) as retry:
        reprocess = Actor(app, lambda s: s.enqueue(document_id, "reprocess", 8)).start()
        wait_until_blocked(app, reprocess)
    assert retry.result().status == "pending"
    assert reprocess.result().id == item_id
    [item] = items_of(document_id)
    assert (item.status, item.priority) == ("pending", 8)
    assert_document_follows_its_latest_item(document_id)


def test_a_delete_while_a_worker_records_a_failure_deletes_the_document(app, service):
    """The admin's delete is not refused with a deadlock (a 503 on PostgreSQL): it took
    the document's history rows before its items, the worker's failure the other way."""
    document_id, item = running(service)
    fail = ENDS["failed"](item)
    with held_before_statement(app, fail, "UPDATE queue_attempts") as failure:
        delete = Actor(app, lambda s: s.delete_document(document_id)).start()
        wait_until_blocked(app, delete)
    assert failure.result() is True
    assert delete.result() is True
    assert document(document_id) is None
    assert items_of(document_id) == []


ADMIN_ACTIONS: dict[str, Callable[[DocumentQueueService], tuple[int, int]]] = {
    "retry": lambda s: failed(s, "retried.txt"),
    "cancel": lambda s: (d := new_document(s, "cancelled.txt"), items_of(d)[0].id),
}


@pytest.mark.parametrize("action", sorted(ADMIN_ACTIONS))
def test_an_admin_action_answers_the_item_it_changed_though_deleted_right_after(
    app, service, action
):
    """The retry or cancel committed: its answer is the item as it left it (200), even
    when a delete lands before the answer is written. The item was read again after the
    commit, and the deleted row made that an InvalidRequestError, a 500."""
    document_id, item_id = ADMIN_ACTIONS[action](service)
    act = (
        (lambda s: s.retry_item(item_id))
        if action == "retry"
        else (lambda s: s.cancel_item(item_id))
    )
    with held_after_commit(app, act) as admin:
        Actor(app, lambda s: s.delete_document(document_id)).start().result()
    answer = admin.result()
    expected = "pending" if action == "retry" else "cancelled"
    assert (answer.id, answer.document_id, answer.status) == (item_id, document_id, expected)
    assert document(document_id) is None


# -- many rounds from one barrier ------------------------------------------------

ROUNDS = 15


def _uploaded(submitted: tuple[Document, bool]) -> tuple[int, bool]:
    """An upload's answer as the API gives it: the document's id and whether it is new."""
    document, created = submitted
    return document.id, created


def outcome(actor: Actor) -> Any:
    """The actor's answer, or its refusal's class (any other error fails the test)."""
    try:
        return actor.result()
    except (InvalidTransition, LookupError) as refusal:
        return type(refusal)


def test_two_admins_retrying_one_item_at_once_one_is_refused(app, service):
    for n in range(ROUNDS):
        document_id, item_id = failed(service, f"retry-{n}.txt")
        answers = [outcome(a) for a in race(app, *[lambda s, i=item_id: s.retry_item(i)] * 2)]
        refused = [a for a in answers if a is InvalidTransition]
        assert len(refused) == 1, answers
        [item] = items_of(document_id)
        assert (item.status, item.attempts) == ("pending", 0)
        assert_document_follows_its_latest_item(document_id)


def test_a_cancel_racing_the_workers_completion_answers_what_happened(app, service):
    """Exactly one wins, and each is told which: a cancelled run's result changes
    nothing; a completed item refuses the cancel (409)."""
    for n in range(ROUNDS):
        document_id, item = running(service, f"cancel-{n}.txt")
        cancel, complete = race(app, lambda s, i=item.id: s.cancel_item(i), ENDS["completed"](item))
        cancelled, recorded = outcome(cancel), complete.result()
        if cancelled is InvalidTransition:
            assert recorded is True
            assert document(document_id).status == "completed"
        else:
            assert (cancelled.status, recorded) == ("cancelled", False)
            assert document(document_id).status == "cancelled"
            assert document(document_id).text is None  # the dropped result
        assert_document_follows_its_latest_item(document_id)


def test_a_cancel_racing_the_claim_of_its_item_stops_it_either_way(app, service):
    """Cancelled while pending (nothing claimed) or while just claimed (the worker's
    result dropped): the admin's 200 holds, and the document ends cancelled."""
    for n in range(ROUNDS):
        document_id = new_document(service, f"claimed-{n}.txt")
        [item_id] = [i.id for i in items_of(document_id)]
        cancel, claim = race(
            app,
            lambda s, i=item_id: s.cancel_item(i),
            lambda s: s.claim_due_items(5, "claimer", look_first=False),
        )
        assert cancel.result().status == "cancelled"
        for claimed in claim.result():
            assert service.mark_completed(claimed, {"text": "late"}) is (claimed.id != item_id)
        assert [i.status for i in items_of(document_id)] == ["cancelled"]
        assert document(document_id).status == "cancelled"


def test_a_delete_racing_the_workers_end_always_deletes(app, service):
    """The worker's late end never brings the document back, and the delete is not lost."""
    for n in range(ROUNDS):
        end = ("completed", "failed")[n % 2]
        document_id, item = running(service, f"delete-{n}.txt")
        delete, finish = race(app, lambda s, d=document_id: s.delete_document(d), ENDS[end](item))
        assert delete.result() is True
        assert finish.result() in (True, False)
        assert document(document_id) is None
        assert items_of(document_id) == []


def test_two_reprocesses_at_once_queue_one_item_behind_the_running_one(app, service):
    for n in range(ROUNDS):
        document_id, running_item = running(service, f"reprocess-{n}.txt")
        first, second = race(
            app,
            lambda s, d=document_id: s.enqueue(d, "reprocess", 3),
            lambda s, d=document_id: s.enqueue(d, "reprocess", 7),
        )
        assert first.result().id == second.result().id
        items = items_of(document_id)
        assert [(i.status, i.priority) for i in items] == [("in_progress", 5), ("pending", 7)]
        assert_document_follows_its_latest_item(document_id)
        assert service.mark_completed(running_item, {"text": "first run"})
        assert_document_follows_its_latest_item(document_id)
        assert document(document_id).status == "pending"


def test_the_same_bytes_uploaded_at_once_make_one_document(app, service):
    for n in range(ROUNDS):
        content = f"the same bytes {n}".encode()
        upload = lambda s, c=content: _uploaded(s.submit_document("x.txt", c, "text/plain"))  # noqa: E731
        answers = [a.result() for a in race(app, *[upload] * 4)]
        assert sorted(created for _, created in answers) == [False, False, False, True]
        assert len({document_id for document_id, _ in answers}) == 1
        assert [i.status for i in items_of(answers[0][0])] == ["pending"]


def test_an_upload_racing_the_delete_of_its_bytes_answers_a_document_that_was_there(app, service):
    """Either the upload came first (a duplicate of the document then deleted), or it
    stored the bytes anew: a document of its own, queued, with its bytes."""
    for n in range(ROUNDS):
        content = f"deleted bytes {n}".encode()
        old, _ = service.submit_document("old.txt", content, "text/plain")
        delete, upload = race(
            app,
            lambda s, d=old.id: s.delete_document(d),
            lambda s, c=content: _uploaded(s.submit_document("new.txt", c, "text/plain")),
        )
        assert delete.result() is True
        answered, created = upload.result()
        assert document(old.id) is None
        if not created:
            assert answered == old.id
            continue
        assert answered != old.id
        assert [i.status for i in items_of(answered)] == ["pending"]
        assert db.session.get(DocumentContent, answered).data == content


def test_a_purge_racing_a_retry_of_its_item_is_one_or_the_other(app, service):
    """README: the purge locks what it chose, so a retry that made an item pending wins;
    a retry that comes after the purge finds no item (404)."""
    for n in range(ROUNDS):
        document_id, item_id = failed(service, f"purge-{n}.txt")
        purge, retry = race(
            app, lambda s: s.purge_items(0, ["failed"]), lambda s, i=item_id: s.retry_item(i)
        )
        purged, retried = purge.result(), outcome(retry)
        if retried is LookupError:
            assert purged == 1
            assert items_of(document_id) == []
            assert document(document_id).status == "failed"
        else:
            assert (purged, retried.status) == (0, "pending")
            assert_document_follows_its_latest_item(document_id)


def test_a_retry_racing_the_workers_failure_answers_what_happened(app, service):
    """409 while the item still ran (it then ends failed), or pending again after it failed."""
    for n in range(ROUNDS):
        document_id, item = running(service, f"retried-{n}.txt")
        retry, failure = race(app, lambda s, i=item.id: s.retry_item(i), ENDS["failed"](item))
        assert failure.result() is True
        retried = outcome(retry)
        [stored] = items_of(document_id)
        if retried is InvalidTransition:
            assert stored.status == "failed"
        else:
            assert (retried.status, stored.status, stored.attempts) == ("pending", "pending", 0)
        assert_document_follows_its_latest_item(document_id)


def test_a_purge_racing_the_workers_completion_keeps_the_documents_result(app, service):
    """The purge takes finished items only: the running one completes, and the document
    keeps its status and text whether its items went or not."""
    for n in range(ROUNDS):
        document_id, first = running(service, f"purged-{n}.txt")
        assert service.mark_completed(first, {"text": "first"})
        service.enqueue(document_id, "reprocess")
        [item] = service.claim_due_items(1, "worker")
        purge, finish = race(
            app,
            lambda s: s.purge_items(0),
            lambda s, i=item: s.mark_completed(i, {"text": "second"}),
        )
        assert finish.result() is True
        assert purge.result() >= 1
        shown = document(document_id)
        assert (shown.status, shown.text) == ("completed", "second")
        assert [i.status for i in items_of(document_id)] in ([], ["completed"])


# -- bulk actions and the pause against a worker draining the queue ---------------


def drain(outcome_of: Callable[[DocumentQueueService, Any], bool]) -> Action:
    """A worker: claims three at a time until nothing is due; how many outcomes it recorded."""

    def work(service: DocumentQueueService) -> int:
        recorded = 0
        while batch := service.claim_due_items(3, "drainer", look_first=False):
            recorded += sum(outcome_of(service, item) for item in batch)
        return recorded

    return work


def complete(service: DocumentQueueService, item: Any) -> bool:
    return service.mark_completed(item, {"text": "done"})


def fail_for_good(service: DocumentQueueService, item: Any) -> bool:
    return service.mark_failed(item, "broken", permanent=True)


def test_cancelling_everything_while_a_worker_drains_counts_what_it_cancelled(app, service):
    """Each item ends cancelled (pending, or stopped while running: the worker's result
    dropped) or completed, and the admin's count is the number cancelled."""
    documents = [new_document(service, f"bulk-{n}.txt") for n in range(40)]
    ids = [items_of(document_id)[0].id for document_id in documents]
    cancel, worker = race(app, lambda s: s.cancel_items(ids), drain(complete))
    statuses = [items_of(document_id)[0].status for document_id in documents]
    assert statuses.count("cancelled") == cancel.result()
    assert statuses.count("completed") == worker.result()
    assert len(statuses) == cancel.result() + worker.result()
    for document_id in documents:
        assert_document_follows_its_latest_item(document_id)


def test_retrying_all_failed_while_a_worker_fails_them_again_retries_each_once(app, service):
    documents = [failed(service, f"again-{n}.txt")[0] for n in range(20)]
    retry, worker = race(app, lambda s: s.retry_failed_items(), drain(fail_for_good))
    assert retry.result() == 20
    assert worker.result() <= 20
    DocumentQueueService().retry_failed_items()  # what the worker did not reach is pending
    for document_id in documents:
        [item] = items_of(document_id)
        assert item.status in ("pending", "failed")
        assert_document_follows_its_latest_item(document_id)


@pytest.mark.parametrize("look_first", [True, False])
def test_no_claim_begun_after_the_pause_answered_claims_anything(app, service, look_first):
    """A claim under way when the pause commits may still start its batch (documents in
    hand finish); one begun after the pause answered claims nothing."""
    for n in range(150):
        new_document(service, f"paused-{n}.txt")
    answered, enough = threading.Event(), threading.Event()
    late: list[list[Any]] = []

    def claim_until_enough(worker: DocumentQueueService) -> None:
        while not enough.is_set():
            after_the_answer = answered.is_set()
            claimed = worker.claim_due_items(2, "claimer", look_first=look_first)
            for item in claimed:
                complete(worker, item)
            if after_the_answer:
                late.append(claimed)
                if len(late) >= 20:
                    enough.set()

    claimers = [Actor(app, claim_until_enough).start() for _ in range(2)]
    assert service.set_paused(True) is True
    answered.set()
    for claimer in claimers:
        claimer.result()
    assert [claimed for claimed in late if claimed] == []
    assert service.get_queue_stats()["in_progress"] == 0


def test_a_duplicate_upload_answers_the_document_it_found_even_once_deleted(app, service):
    """The upload's answer is the document as its lookup found it, with its queue item.

    It was read again to be answered: deleted meanwhile (a delete racing the upload
    of the same bytes), the answer was an ObjectDeletedError, a 500.
    """
    document_id = new_document(service, "found.txt")
    [duplicate] = service.submit([NewDocument("again.txt", b"found.txt" * 3, "text/plain")])
    Actor(app, lambda s: s.delete_document(document_id)).start().result()
    assert not duplicate.created
    found = duplicate.document
    assert (found.id, found.filename, found.status) == (document_id, "found.txt", "pending")
    assert found.extracted_metadata is None
    assert (duplicate.item.document_id, duplicate.item.status) == (document_id, "pending")
