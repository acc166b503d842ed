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

from docqueue_app.models import Document, QueueItem, db
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
    """A new document whose item a worker holds: its id and the claimed item."""
    document_id = new_document(service, name)
    [item] = service.claim_due_items(1, "worker")
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
