"""Model-based stateful test of webhook deliveries (DeliveryService), on SQLite and PostgreSQL.

Hypothesis drives the real paths that record, send and change deliveries: documents
are uploaded (with a ``callback_url`` or not, on an app with ``DOCQUEUE_WEBHOOK_URL``
set or not) and end through the queue (completed, failed for good by a worker or by
the rescuer, cancelled by an admin), lanes claim due deliveries under a lease and
record their attempts (delivered, failed and retried with or without Retry-After,
refused, out of attempts), late results of stale claims arrive, lanes die (their
leases run out; a delivery whose extra attempt, one past its last, was lost too is
given up by the next claim), time passes, admins send failed deliveries again and read them,
and the pruner runs. A small model (``DeliveryModel`` below) predicts every step;
after each one every delivery row is compared with it.

As in the queue's state machine (``tests/queue/test_state_machine.py``), time moves
by rewriting the rows' timestamps: a lane dies by its lease being moved into the
past, and "time passes" moves every timestamp of every delivery back by the same
amount. Every time the model knows is either well past (30 s or more) or well ahead
of the clock, so an example never runs long enough to make it ambiguous.

``make test`` runs a bounded number of examples per back end. For a long run:

    DOCQUEUE_STRESS_MINUTES=20 .venv/bin/python -m pytest \\
        tests/webhooks/test_delivery_state_machine.py -s -q -p no:cacheprovider

loops over fresh examples for 20 minutes (10 per back end), then prints the examples
and steps checked and the situations the deliveries reached. (``make stress`` runs
only the queue's state machine.)
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from hypothesis import currently_in_test_context, settings, stateful, target
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import select, update

from docqueue_app.admin import queries as admin_queries
from docqueue_app.models import QueueItem, WebhookDelivery, db, utcnow
from docqueue_app.queue import DocumentQueueService, InvalidTransition
from docqueue_app.queue.pruner import prune_if_due
from docqueue_app.queue.retry import JITTER_FRACTION
from docqueue_app.queue.service import Outcome
from docqueue_app.queue.submissions import NewDocument
from docqueue_app.webhooks.deliveries import (
    ClaimedDelivery,
    DeliveryService,
    lease_seconds,
    lost_sender_message,
)
from docqueue_app.webhooks.sender import AttemptResult
from tests.helpers import backend_name, execute_sql
from tests.queue.test_state_machine import (
    BACK_ENDS,
    DEFAULT_SETTINGS,
    STRESS_MINUTES,
    clear_tables,
    divergence_after,
    run_together,
)

GLOBAL_URL = "https://hooks.example/docqueue"
MAX_ATTEMPTS = 3  # a delivery's
QUEUE_MAX_ATTEMPTS = 2  # an item's
TIMEOUT_SECONDS = 100.0
BASE_SECONDS = 100.0
MAX_SECONDS = 1000.0
LEASE = timedelta(seconds=lease_seconds(TIMEOUT_SECONDS))
# How far from the clock every known time stays (see the module's docstring).
MARGIN = timedelta(seconds=30)
# The database's clock and this process's may differ a little (PostgreSQL's now()
# is its transaction's start).
SLACK = timedelta(seconds=2)

MACHINE_CONFIG: dict[str, Any] = {
    "MAX_ATTEMPTS": QUEUE_MAX_ATTEMPTS,
    "WEBHOOK_MAX_ATTEMPTS": MAX_ATTEMPTS,
    "WEBHOOK_TIMEOUT_SECONDS": TIMEOUT_SECONDS,
    "RETRY_BASE_SECONDS": BASE_SECONDS,
    "RETRY_MAX_SECONDS": MAX_SECONDS,
    "PROCESS_ISOLATION": "none",
    "PROCESSOR": "tests.processing.sample_processors:echo_text",
}

SENDERS = ("host1/webhooks", "host2/webhooks", "host3/webhooks")
WORKERS = ("w1", "w2")
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
COMPLETED, ITEM_FAILED, CANCELLED = "document.completed", "document.failed", "document.cancelled"
DOCUMENT_SHOWS = {COMPLETED: "completed", ITEM_FAILED: "failed", CANCELLED: "cancelled"}

# How an attempt went, as the sender reports it.
RESULTS: dict[str, AttemptResult] = {
    "delivered": AttemptResult(True, 204),
    "error": AttemptResult(False, 500, "HTTP 500 Internal Server Error"),
    "timeout": AttemptResult(False, None, "timed out after 100 s"),
    "retry after 50 s": AttemptResult(False, 503, "HTTP 503 Service Unavailable", retry_after=50),
    "retry after 700 s": AttemptResult(False, 429, "HTTP 429 Too Many Requests", retry_after=700),
    "retry after a week": AttemptResult(False, 429, "HTTP 429", retry_after=7 * 86400),
    "refused": AttemptResult(False, None, "not sent: the destination is refused", permanent=True),
}

# The queue's state machine's settings (and its DOCQUEUE_STRESS_MINUTES), fewer steps:
# make test runs these examples in a few seconds per back end.
MAKE_TEST = settings(DEFAULT_SETTINGS, max_examples=50, stateful_step_count=50)
STRESS_BATCH = settings(DEFAULT_SETTINGS, max_examples=25)
STATS = {"examples": 0, "steps": 0}
SITUATIONS: set[str] = set()  # reached by this process's examples (reported in stress runs)

_SERIALS = itertools.count(1)


# -- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """A claim handed out: what the lane holds (``claimed``) and which claim it was."""

    delivery: int  # the row id
    claimed: ClaimedDelivery
    serial: int = field(default_factory=lambda: next(_SERIALS))


@dataclass
class Delivery:
    """What the model knows of one delivery row (times as the database wrote them)."""

    id: int
    delivery_id: str
    document_id: int | None
    event: str
    url: str
    payload: str
    created_at: datetime
    due_at: datetime
    status: str = PENDING
    attempts: int = 0
    holder: Held | None = None
    lease_until: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None

    def due(self, now: datetime) -> bool:
        unleased = self.lease_until is None or self.lease_until <= now
        return self.status == PENDING and self.due_at <= now and unleased

    def past_its_extra_attempt(self) -> bool:
        """Sent once past its last attempt (that one's sender lost), and that sender lost too."""
        return self.attempts > MAX_ATTEMPTS

    def claimable(self, now: datetime) -> bool:
        return self.due(now) and not self.past_its_extra_attempt()

    def leased(self, now: datetime) -> bool:
        return self.lease_until is not None and self.lease_until > now


@dataclass
class Item:
    id: int
    document_id: int
    status: str = PENDING  # pending, in_progress, completed, failed, cancelled
    attempts: int = 0
    due: bool = True


@dataclass
class Document:
    id: int
    filename: str
    callback_url: str | None
    items: list[int]
    deleted: bool = False


class DeliveryModel:
    def __init__(self, global_url: str | None) -> None:
        self.global_url = global_url
        self.deliveries: dict[int, Delivery] = {}
        # The delivery ids of pruned deliveries. (SQLite may give a pruned row's id
        # to a new row: rows are told apart by their delivery ids.)
        self.gone: set[str] = set()
        self.documents: dict[int, Document] = {}
        self.items: dict[int, Item] = {}

    def destinations(self, document_id: int) -> list[str]:
        callback = self.documents[document_id].callback_url
        return [url for url in (self.global_url, callback) if url]

    def latest(self, document: Document) -> Item:
        return self.items[document.items[-1]]

    # -- deliveries -----------------------------------------------------------------

    def claimable(self, now: datetime) -> list[Delivery]:
        due = [d for d in self.deliveries.values() if d.claimable(now)]
        return sorted(due, key=lambda d: (d.due_at, d.id))

    def give_up_lost(self, now: datetime, limit: int) -> list[Delivery]:
        """What a claim of ``limit`` does first: of the first ``limit`` due deliveries,
        those past their extra attempt end failed, without being sent."""
        due = sorted(
            (d for d in self.deliveries.values() if d.due(now)), key=lambda d: (d.due_at, d.id)
        )
        given_up = [d for d in due[:limit] if d.past_its_extra_attempt()]
        for delivery in given_up:
            delivery.status, delivery.holder, delivery.lease_until = FAILED, None, None
            delivery.last_status_code = None
            delivery.last_error = lost_sender_message(delivery.attempts, MAX_ATTEMPTS)
        return given_up

    def holds(self, held: Held) -> Delivery | None:
        """The delivery ``held`` still holds: pending, and no claim made since."""
        delivery = self.deliveries.get(held.delivery)
        if delivery is None or delivery.status != PENDING or delivery.holder is None:
            return None
        return delivery if delivery.holder.serial == held.serial else None

    def finish(self, delivery: Delivery, result: AttemptResult, attempt: int) -> str:
        """The attempt's result written: what becomes of the delivery."""
        delivery.holder, delivery.lease_until = None, None
        delivery.last_status_code, delivery.last_error = result.status_code, result.error
        if result.delivered:
            delivery.status = DELIVERED
        elif result.permanent or attempt >= MAX_ATTEMPTS:
            delivery.status = FAILED
        return delivery.status

    def shift(self, delta: timedelta) -> None:
        """Every known time moves ``delta`` into the past (time passed by that much)."""
        for delivery in self.deliveries.values():
            delivery.created_at -= delta
            delivery.due_at -= delta
            if delivery.lease_until is not None:
                delivery.lease_until -= delta

    def situations(self, now: datetime) -> set[str]:
        """Labels of the less common situations the deliveries are in (to steer the search)."""
        found = set()
        for delivery in self.deliveries.values():
            found.add(delivery.status)
            if delivery.status != PENDING:
                continue
            if delivery.holder is not None:
                found.add("in flight" if delivery.leased(now) else "lease ran out")
            elif delivery.attempts:
                found.add("waiting for a retry" if delivery.due_at > now else "retry due")
            if delivery.attempts > MAX_ATTEMPTS:
                found.add("past its last attempt")
            if delivery.document_id is None:
                found.add("its document deleted")
        if self.gone:
            found.add("pruned")
        return found

    def future_times(self, now: datetime) -> list[datetime]:
        times = [d.due_at for d in self.deliveries.values() if d.status == PENDING]
        times += [d.lease_until for d in self.deliveries.values() if d.lease_until is not None]
        return sorted(t for t in times if t > now)


def retry_window(
    attempt: int, retry_after: float | None, started: datetime, ended: datetime
) -> tuple[datetime, datetime]:
    """When a retried attempt may next be due: the backoff, or Retry-After (capped) if later."""
    capped = min(BASE_SECONDS * 2.0 ** max(attempt - 1, 0), MAX_SECONDS)
    low = started + timedelta(seconds=capped)
    high = ended + timedelta(seconds=capped * (1 + JITTER_FRACTION))
    if retry_after is not None:
        asked = timedelta(seconds=min(retry_after, MAX_SECONDS))
        low, high = max(low, started + asked), max(high, ended + asked)
    return low - SLACK, high + SLACK


# -- reading the database ----------------------------------------------------------------


def delivery_rows() -> dict[int, Any]:
    table = WebhookDelivery.__table__
    with db.engine.connect() as connection:
        return {row.id: row for row in connection.execute(select(table))}


def differences(model: DeliveryModel, rows: dict[int, Any], now: datetime) -> list[str]:
    problems = []
    for row_id in sorted(model.deliveries.keys() | rows.keys()):
        delivery, row = model.deliveries.get(row_id), rows.get(row_id)
        if delivery is None or row is None:
            where = "the database" if delivery is None else "the model"
            problems.append(f"delivery {row_id} exists only in {where}: {delivery or row}")
            continue
        expected = (
            delivery.delivery_id,
            delivery.document_id,
            delivery.event,
            delivery.url,
            delivery.status,
            delivery.attempts,
            MAX_ATTEMPTS,
            delivery.created_at,
            delivery.holder.claimed.sender if delivery.holder else None,
            delivery.lease_until,
            delivery.last_status_code,
            delivery.last_error,
            delivery.status == DELIVERED,
        )
        actual = (
            row.delivery_id,
            row.document_id,
            row.event,
            row.url,
            row.status,
            row.attempts,
            row.max_attempts,
            row.created_at,
            row.locked_by,
            row.locked_until,
            row.last_status_code,
            row.last_error,
            row.delivered_at is not None,
        )
        if expected != actual:
            problems.append(f"delivery {row_id}:\n  model    {expected}\n  database {actual}")
        if delivery.status == PENDING and row.next_attempt_at != delivery.due_at:
            problems.append(
                f"delivery {row_id}: due at {row.next_attempt_at}, model {delivery.due_at}"
            )
        if row.payload != delivery.payload:
            problems.append(f"delivery {row_id}: its body changed to {row.payload!r}")
    return problems


def one_delivery_per_event_and_destination(model: DeliveryModel, rows: dict[int, Any]) -> None:
    """The body of each new row names its delivery and event; no delivery id twice."""
    ids = Counter(row.delivery_id for row in rows.values())
    ids.update(model.gone)
    assert max(ids.values(), default=1) == 1, f"a delivery id recorded twice: {ids}"


# -- the machine ---------------------------------------------------------------------------


class DeliveryMachine(RuleBasedStateMachine):
    """The delivery service and the model side by side: after every rule they agree."""

    claims = Bundle("claims")  # every claim handed out, held or long stale

    def __init__(self, apps: dict[bool, Flask]) -> None:
        super().__init__()
        self.apps = apps
        self.app = apps[False]
        self.context = self.app.app_context()
        self.context.push()
        clear_tables()
        self.model = DeliveryModel(None)
        self.queue = DocumentQueueService()
        self.deliveries = DeliveryService()
        self.last_action = "the start"
        self.uploads = itertools.count(1)
        self.checked_once = False
        self.handed_out: list[Held] = []  # every claim, in order (for the scenarios)
        self.situations: set[str] = set()
        STATS["examples"] += 1

    def teardown(self) -> None:
        # Steer the search (Hypothesis' target phase) toward examples that reach
        # many different situations, as the queue's state machine does.
        if currently_in_test_context():
            target(len(self.situations), label="situations reached")
        SITUATIONS.update(self.situations)
        db.session.remove()
        self.context.pop()

    # -- helpers ------------------------------------------------------------------

    def acting(self, action: str) -> None:
        self.last_action = action

    def sql(self, statement: str, **params: Any) -> None:
        self.last_action = "time passing"
        execute_sql(self.app, statement, **params)

    def require(self, problems: list[str], what: str) -> None:
        if problems:
            raise divergence_after(self.last_action)(
                f"after {self.last_action}, {what}:\n" + "\n".join(problems)
            )

    def expect_events(self, events: list[tuple[int, str]], action: Callable[[], Any]) -> Any:
        """Run a queue action that ends items; it must record one delivery per event and
        destination, with the event's body, and nothing else."""
        known = {d.delivery_id for d in self.model.deliveries.values()} | self.model.gone
        started = utcnow()
        result = action()
        ended = utcnow()
        rows = delivery_rows()
        new = {row_id: row for row_id, row in rows.items() if row.delivery_id not in known}
        owed = Counter(
            (document_id, event, url)
            for document_id, event in events
            for url in self.model.destinations(document_id)
        )
        recorded = Counter((row.document_id, row.event, row.url) for row in new.values())
        self.require(
            [f"owed {sorted(owed.elements())}, recorded {sorted(recorded.elements())}"]
            if owed != recorded
            else [],
            "the deliveries recorded are not one per event and destination",
        )
        for row_id, row in sorted(new.items()):
            body = json.loads(row.payload)
            assert body["id"] == row.delivery_id and body["event"] == row.event, body
            assert body["document"]["id"] == row.document_id, body
            # The document as the outcome's transaction left it (nothing is queued behind
            # an item here, so it shows that item's end), created when the row was.
            shown = (body["document"]["status"], body["document"]["queue_item"]["status"])
            assert shown == (DOCUMENT_SHOWS[row.event],) * 2, body
            assert datetime.fromisoformat(body["created_at"]) == row.created_at, body
            assert row.status == PENDING and row.attempts == 0, row
            assert started - SLACK <= row.next_attempt_at <= ended + SLACK, row
            self.model.deliveries[row_id] = Delivery(
                row_id,
                row.delivery_id,
                row.document_id,
                row.event,
                row.url,
                row.payload,
                row.created_at,
                row.next_attempt_at,
            )
        one_delivery_per_event_and_destination(self.model, rows)
        return result

    def draw_document(self, data: st.DataObject, fits: Callable[[Document], bool]) -> Document:
        candidates = [d for d in self.model.documents.values() if not d.deleted and fits(d)]
        return data.draw(st.sampled_from(candidates), label="document")

    def has_document(self, fits: Callable[[Document], bool]) -> bool:
        return any(not d.deleted and fits(d) for d in self.model.documents.values())

    def held_claims(self) -> list[Held]:
        return sorted(
            (d.holder for d in self.model.deliveries.values() if d.holder and d.status == PENDING),
            key=lambda held: held.serial,
        )

    # -- documents end through the queue -------------------------------------------------

    @stateful.initialize(global_url=st.booleans())
    def choose_app(self, global_url: bool) -> None:
        """An app with DOCQUEUE_WEBHOOK_URL set, or without."""
        self.context.pop()
        self.app = self.apps[global_url]
        self.context = self.app.app_context()
        self.context.push()
        self.model.global_url = self.app.config["WEBHOOK_URL"]
        self.queue = DocumentQueueService()
        self.deliveries = DeliveryService()

    @rule(callback=st.booleans())
    def upload(self, callback: bool) -> None:
        number = next(self.uploads)
        url = f"https://client.example/callbacks/{number}" if callback else None
        filename = f"document-{number}.txt"
        file = NewDocument(filename, f"document {number}".encode(), "text/plain", 5, url)
        self.acting("submit")
        [submission] = self.queue.submit([file])
        document_id, item_id = submission.document.id, submission.item.id
        self.model.documents[document_id] = Document(document_id, filename, url, [item_id])
        self.model.items[item_id] = Item(item_id, document_id)

    @rule(
        worker=st.sampled_from(WORKERS),
        kinds=st.lists(
            st.sampled_from(("success", "transient", "permanent", "vanish")),
            min_size=1,
            max_size=3,
        ),
    )
    def worker_pass(self, worker: str, kinds: list[str]) -> None:
        """A worker claims a batch and reports each outcome (a vanished one: never)."""
        self.acting("claim_due_items")
        claimable = {i.id for i in self.model.items.values() if i.status == PENDING and i.due}
        claimed = self.queue.claim_due_items(len(kinds), worker)
        ids = [item.id for item in claimed]
        assert set(ids) <= claimable, f"claimed {ids}, claimable were {sorted(claimable)}"
        assert len(ids) == min(len(kinds), len(claimable)), f"claimed {ids} of {claimable}"
        outcomes, events = [], []
        for claimed_item, kind in zip(claimed, kinds, strict=False):
            item = self.model.items[claimed_item.id]
            item.status, item.attempts = "in_progress", item.attempts + 1
            event = self.item_outcome(item, kind)
            if kind == "success":
                result = {"text": f"text {item.id}", "title": "a title", "page_count": 1}
                outcomes.append(Outcome.of(claimed_item, result=result))
            elif kind != "vanish":
                permanent = kind == "permanent"
                outcomes.append(Outcome.of(claimed_item, error=f"{kind}", permanent=permanent))
            if event:
                events.append((item.document_id, event))
        if outcomes:
            self.acting("record_outcomes")
            recorded = self.expect_events(events, lambda: self.queue.record_outcomes(outcomes))
            assert recorded == len(outcomes), f"recorded {recorded} of {len(outcomes)}"

    def item_outcome(self, item: Item, kind: str) -> str | None:
        """The model's item after ``kind``; the event it owes, if any."""
        if kind == "success":
            item.status = "completed"
            return COMPLETED
        if kind == "permanent" or (kind == "transient" and item.attempts >= QUEUE_MAX_ATTEMPTS):
            item.status = "failed"
            return ITEM_FAILED
        if kind == "transient":
            item.status, item.due = PENDING, False
        return None

    @precondition(lambda self: any(i.status == "in_progress" for i in self.model.items.values()))
    @rule()
    def queue_worker_lost(self) -> None:
        """Workers that vanished: their leases run out and the rescuer hands the items back
        (or fails them, on their last attempt: a "document.failed" event)."""
        self.sql(
            "UPDATE queue_items SET lease_expires_at = :past WHERE status = 'in_progress'",
            past=utcnow() - timedelta(seconds=1),
        )
        events = []
        running = [i for i in self.model.items.values() if i.status == "in_progress"]
        for item in running:
            if item.attempts >= QUEUE_MAX_ATTEMPTS:
                item.status = "failed"
                events.append((item.document_id, ITEM_FAILED))
            else:
                item.status, item.due = PENDING, True
        self.acting("rescue_expired_leases")
        rescued = self.expect_events(events, self.queue.rescue_expired_leases)
        assert rescued == len(running), f"rescued {rescued} of {len(running)}"

    @rule()
    def queue_backoffs_come_due(self) -> None:
        self.sql(
            "UPDATE queue_items SET run_at = :past WHERE status = 'pending'",
            past=utcnow() - timedelta(seconds=1),
        )
        for item in self.model.items.values():
            item.due = True

    @precondition(lambda self: self.has_document(lambda d: True))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """An admin cancels a document's latest item: refused once it has finished."""
        self.cancel_latest(self.draw_document(data, lambda d: True))

    def first_document(self) -> Document:
        return self.model.documents[min(self.model.documents)]

    def cancel_latest(self, document: Document) -> None:
        item = self.model.latest(document)
        self.acting("cancel_item")
        if item.status not in (PENDING, "in_progress"):
            try:
                self.queue.cancel_item(item.id)
            except InvalidTransition:
                db.session.rollback()
                return
            raise AssertionError(f"a {item.status} item was cancelled")
        self.expect_events([(document.id, CANCELLED)], lambda: self.queue.cancel_item(item.id))
        item.status = "cancelled"

    @precondition(lambda self: self.has_document(lambda d: True))
    @rule(data=st.data())
    def reprocess(self, data: st.DataObject) -> None:
        """A document whose item finished is queued again: its next end is a new event."""
        document = self.draw_document(data, lambda d: True)
        if self.model.latest(document).status in (PENDING, "in_progress"):
            return  # coalescing with running work is the queue's state machine's business
        self.acting("enqueue")
        item = self.queue.enqueue(document.id, "reprocess")
        document.items.append(item.id)
        self.model.items[item.id] = Item(item.id, document.id)

    @precondition(lambda self: self.has_document(lambda d: True))
    @rule(data=st.data())
    def delete_document(self, data: st.DataObject) -> None:
        """Its deliveries stay (still owed), without their document."""
        document = self.draw_document(data, lambda d: True)
        self.acting("delete_document")
        self.queue.delete_document(document.id)
        document.deleted = True
        for item_id in document.items:
            del self.model.items[item_id]
        for delivery in self.model.deliveries.values():
            if delivery.document_id == document.id:
                delivery.document_id = None

    # -- lanes ----------------------------------------------------------------------

    @rule(target=claims, sender=st.sampled_from(SENDERS), limit=st.integers(1, 4))
    def lane_claims(self, sender: str, limit: int) -> Any:
        """A lane looks (seconds_until_due) and claims what is due, oldest due first."""
        self.acting("seconds_until_due")
        now = utcnow()
        self.check_seconds_until_due(now)
        if self.model.give_up_lost(now, limit):
            self.situations.add("given up: its senders lost")
        expected = self.model.claimable(now)[:limit]
        self.acting("claim_due")
        started = utcnow()
        claimed = self.deliveries.claim_due(limit, sender)
        ended = utcnow()
        ids = [c.id for c in claimed]
        assert ids == sorted(d.id for d in expected), (
            f"{sender} claimed {ids}, the model {[d.id for d in expected]}"
        )
        rows = delivery_rows()
        helds = []
        for claim in claimed:
            delivery = self.model.deliveries[claim.id]
            assert delivery.status == PENDING, f"a {delivery.status} delivery was claimed again"
            assert not delivery.leased(started), f"delivery {claim.id}: its lease was live"
            delivery.attempts += 1
            sent = (claim.delivery_id, claim.event, claim.url, claim.payload, claim.attempt)
            assert sent == (
                delivery.delivery_id,
                delivery.event,
                delivery.url,
                delivery.payload,
                delivery.attempts,
            ), f"delivery {claim.id} claimed as {claim}"
            lease_until = rows[claim.id].locked_until
            assert started + LEASE - SLACK <= lease_until <= ended + LEASE + SLACK, lease_until
            held = Held(claim.id, claim)
            delivery.holder, delivery.lease_until = held, lease_until
            helds.append(held)
        self.handed_out += helds
        return stateful.multiple(*helds)

    def check_seconds_until_due(self, now: datetime) -> None:
        waiting = [
            d.due_at
            for d in self.model.deliveries.values()
            if d.status == PENDING and not d.leased(now)
        ]
        due_in = self.deliveries.seconds_until_due()
        if not waiting:
            assert due_in is None, f"seconds_until_due {due_in}, none waits"
            return
        expected = max((min(waiting) - now).total_seconds(), 0.0)
        assert due_in is not None and abs(due_in - expected) <= SLACK.total_seconds(), (
            f"seconds_until_due {due_in}, the model {expected}"
        )

    @precondition(lambda self: bool(self.held_claims()))
    @rule(nth=st.integers(0, 3), how=st.sampled_from(sorted(RESULTS)))
    def attempt_ends(self, nth: int, how: str) -> None:
        """A lane records how an attempt it holds went."""
        held = self.held_claims()
        self.record(held[nth % len(held)], how)

    @rule(held=claims, how=st.sampled_from(sorted(RESULTS)))
    def late_result(self, held: Held, how: str) -> None:
        """A lane records an attempt of a claim made some time ago: written only while that
        claim still holds the delivery (never over a later claim's, nor a finished one)."""
        self.record(held, how)

    def record(self, held: Held, how: str) -> None:
        result = RESULTS[how]
        delivery = self.model.holds(held)
        self.acting(f"record_attempt({how})")
        started = utcnow()
        written = self.deliveries.record_attempt(held.claimed, result)
        ended = utcnow()
        if delivery is None:
            self.situations.add("a stale result refused")
        assert written == (delivery is not None), (
            f"record_attempt of {held} wrote {written}, the model says {delivery is not None}"
        )
        if delivery is None:
            return
        attempt = held.claimed.attempt
        if self.model.finish(delivery, result, attempt) == PENDING:
            due_at = delivery_rows()[delivery.id].next_attempt_at
            low, high = retry_window(attempt, result.retry_after, started, ended)
            assert low <= due_at <= high, (
                f"attempt {attempt} ({how}) retried at {due_at}, expected {low} to {high}"
            )
            delivery.due_at = due_at

    @precondition(lambda self: bool(self.held_claims()))
    @rule(nth=st.integers(0, 3))
    def lane_dies(self, nth: int) -> None:
        """The lane holding a delivery dies mid-attempt: its lease runs out."""
        held = self.held_claims()
        delivery = self.model.deliveries[held[nth % len(held)].delivery]
        past = utcnow() - 2 * MARGIN
        self.sql(
            "UPDATE webhook_deliveries SET locked_until = :past WHERE id = :id",
            past=past,
            id=delivery.id,
        )
        delivery.lease_until = delivery_rows()[delivery.id].locked_until

    @rule(data=st.data())
    def time_passes(self, data: st.DataObject) -> None:
        """The clock moves past some of the times ahead (retries coming due, leases
        running out), never to within MARGIN of one."""
        now = utcnow()
        ahead = self.model.future_times(now)
        if not ahead:
            return
        index = data.draw(st.integers(0, len(ahead) - 1), label="up to")
        cut = ahead[index] + MARGIN
        for later in ahead[index + 1 :]:
            if later < cut + MARGIN:
                cut = later + MARGIN
        self.move_clock(cut - now)

    @rule()
    def days_pass(self) -> None:
        self.move_clock(timedelta(days=2))

    def move_clock(self, delta: timedelta) -> None:
        """Every timestamp of every delivery moves ``delta`` into the past."""
        self.last_action = "time passing"
        table = WebhookDelivery.__table__
        with db.engine.begin() as connection:
            for row in connection.execute(select(table)):
                moved = {
                    column: getattr(row, column) - delta
                    for column in ("created_at", "next_attempt_at", "locked_until", "delivered_at")
                    if getattr(row, column) is not None
                }
                connection.execute(update(table).where(table.c.id == row.id).values(**moved))
        self.model.shift(delta)

    # -- admins and the pruner -------------------------------------------------------

    @rule(data=st.data(), kind=st.sampled_from((FAILED, PENDING, DELIVERED, "pruned", "unknown")))
    def deliver_again(self, data: st.DataObject, kind: str) -> None:
        """An admin sends a delivery again: only a failed one, back to pending, due now."""
        if kind == "unknown":
            delivery_id, delivery = "00000000-0000-4000-8000-000000000000", None
        elif kind == "pruned":
            if not self.model.gone:
                return
            delivery_id, delivery = data.draw(st.sampled_from(sorted(self.model.gone))), None
        else:
            of_kind = sorted(i for i, d in self.model.deliveries.items() if d.status == kind)
            if not of_kind:
                return
            delivery = self.model.deliveries[data.draw(st.sampled_from(of_kind))]
            delivery_id = delivery.delivery_id
        self.send_again(delivery_id, delivery)

    def deliver_again_now(self, status: str) -> None:
        """deliver_again on the first delivery of that status."""
        delivery = min(
            (d for d in self.model.deliveries.values() if d.status == status), key=lambda d: d.id
        )
        self.send_again(delivery.delivery_id, delivery)

    def send_again(self, delivery_id: str, delivery: Delivery | None) -> None:
        self.acting("deliver_again")
        started = utcnow()
        try:
            self.deliveries.deliver_again(delivery_id)
        except LookupError:
            db.session.rollback()
            assert delivery is None, f"deliver_again({delivery_id}): not found"
            return
        except InvalidTransition:
            db.session.rollback()
            assert delivery is not None and delivery.status != FAILED, "refused"
            return
        ended = utcnow()
        assert delivery is not None and delivery.status == FAILED, (
            f"deliver_again revived a {delivery and delivery.status} delivery"
        )
        due_at = delivery_rows()[delivery.id].next_attempt_at
        assert started - SLACK <= due_at <= ended + SLACK, due_at
        delivery.status, delivery.attempts, delivery.due_at = PENDING, 0, due_at
        self.situations.add("sent again")
        delivery.holder, delivery.lease_until = None, None

    @rule(days=st.sampled_from((1, 30)))
    def pruner_runs(self, days: int) -> None:
        """The pruner's turn: delivered and failed deliveries recorded over N days ago go."""
        now = utcnow()
        cutoff = now - timedelta(days=days)
        near = [d for d in self.model.deliveries.values() if abs(d.created_at - cutoff) < MARGIN]
        if near:
            return  # too close to call
        self.sql("UPDATE queue_state SET pruned_at = NULL")
        self.acting("prune_if_due")
        prune_if_due(self.queue, days)
        for row_id, delivery in list(self.model.deliveries.items()):
            if delivery.status in (DELIVERED, FAILED) and delivery.created_at < cutoff:
                self.model.gone.add(delivery.delivery_id)
                del self.model.deliveries[row_id]

    @rule(data=st.data())
    def admin_reads(self, data: st.DataObject) -> None:
        """The console's failed deliveries, and a document's deliveries through the API."""
        self.acting("admin reads")
        failed = sorted(
            (d for d in self.model.deliveries.values() if d.status == FAILED),
            key=lambda d: -d.id,
        )
        count = admin_queries.failed_delivery_count()
        assert count.value == len(failed), f"failed count {count.value}, model {len(failed)}"
        page = admin_queries.list_failed_deliveries(1, 100)
        listed = [(row.delivery.delivery_id, row.filename) for row in page.rows]
        db.session.commit()
        expected = [(d.delivery_id, self.filename(d.document_id)) for d in failed]
        assert listed == expected, f"the console lists {listed}, the model {expected}"
        documents = [d for d in self.model.documents.values() if not d.deleted]
        if documents:
            self.document_deliveries(data.draw(st.sampled_from(documents), label="read"))

    def filename(self, document_id: int | None) -> str | None:
        return None if document_id is None else self.model.documents[document_id].filename

    def document_deliveries(self, document: Document) -> None:
        response = self.app.test_client().get(f"/api/documents/{document.id}/deliveries")
        assert response.status_code == 200, response.get_data(as_text=True)
        listed = [
            (d["id"], d["event"], d["url"], d["status"], d["attempts"])
            for d in response.get_json()["items"]
        ]
        expected = [
            (d.delivery_id, d.event, d.url, d.status, d.attempts)
            for d in sorted(self.model.deliveries.values(), key=lambda d: -d.id)
            if d.document_id == document.id
        ]
        assert listed == expected, f"GET deliveries of {document.id}: {listed}, model {expected}"

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        if self.checked_once:
            STATS["steps"] += 1
        self.checked_once = True
        rows = delivery_rows()
        now = utcnow()
        self.require(differences(self.model, rows, now), "the deliveries differ from the model")
        self.situations |= self.model.situations(now)
        # The ids of the items each model document knows: no other item exists.
        with db.engine.connect() as connection:
            items = set(connection.scalars(select(QueueItem.id)))
        assert items == self.model.items.keys(), f"items {items}, model {self.model.items.keys()}"


def test_delivery_state_machine(make_app: Callable[..., Flask]) -> None:
    apps = {
        False: make_app(**MACHINE_CONFIG),
        True: make_app(**MACHINE_CONFIG, WEBHOOK_URL=GLOBAL_URL),
    }
    STATS.update(examples=0, steps=0)
    started = time.monotonic()
    # Under stress, batches of fresh examples until this back end's share of the time is up.
    deadline = started + float(STRESS_MINUTES or 0) * 60 / BACK_ENDS
    batch = STRESS_BATCH if STRESS_MINUTES else MAKE_TEST
    while True:
        stateful.run_state_machine_as_test(lambda: DeliveryMachine(apps), settings=batch)
        if time.monotonic() >= deadline:
            break
    minutes = (time.monotonic() - started) / 60
    mode = f" (stress: {STRESS_MINUTES} min over {BACK_ENDS} back ends)" if STRESS_MINUTES else ""
    print(
        f"\ndelivery state machine on {backend_name(apps[False])}: {STATS['examples']} examples,"
        f" {STATS['steps']} steps checked in {minutes:.1f} min{mode};"
        f" situations reached: {', '.join(sorted(SITUATIONS))}"
    )


# -- scenarios: short sequences the random search reaches rarely, replayed every run ---------

Step = Callable[[DeliveryMachine], Any]


def do(rule_name: str, *args: Any, **kwargs: Any) -> Step:
    return lambda machine: getattr(machine, rule_name)(*args, **kwargs)


def stale_result(how: str, nth: int = 0) -> Step:
    """The result of the nth claim ever handed out, recorded (late) now."""
    return lambda machine: machine.record(machine.handed_out[nth], how)


CANCELLED_WITH_CALLBACK = [do("upload", True), lambda m: m.cancel_latest(m.first_document())]

SCENARIOS: dict[str, list[Step]] = {
    "a claim from before deliver_again cannot write over the same lane's new claim": [
        *CANCELLED_WITH_CALLBACK,
        do("lane_claims", SENDERS[0], 1),
        stale_result("refused"),
        lambda m: m.deliver_again_now(FAILED),
        do("lane_claims", SENDERS[0], 1),
        stale_result("delivered"),
    ],
    "a lane that died on the last attempt: sent once more, then failed": [
        *CANCELLED_WITH_CALLBACK,
        *[do("lane_claims", SENDERS[0], 1), stale_result("error", -1), do("days_pass")]
        * (MAX_ATTEMPTS - 1),
        do("lane_claims", SENDERS[1], 1),
        do("lane_dies", 0),
        do("lane_claims", SENDERS[2], 1),
        stale_result("delivered", MAX_ATTEMPTS - 1),
        stale_result("error", MAX_ATTEMPTS),
    ],
    "a lane that died on the extra attempt too: given up unsent, then sent again": [
        *CANCELLED_WITH_CALLBACK,
        *[do("lane_claims", SENDERS[0], 1), do("lane_dies", 0)] * (MAX_ATTEMPTS + 1),
        do("lane_claims", SENDERS[1], 2),  # gives it up, claims nothing
        stale_result("delivered", MAX_ATTEMPTS),  # the lost sender's result, too late
        lambda m: m.deliver_again_now(FAILED),
        do("lane_claims", SENDERS[2], 1),
        stale_result("delivered", MAX_ATTEMPTS + 1),
    ],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(make_app: Callable[..., Flask], scenario: str) -> None:
    machine = DeliveryMachine({False: make_app(**MACHINE_CONFIG)})
    try:
        for step in SCENARIOS[scenario]:
            step(machine)
            machine.database_matches_model()
    finally:
        machine.teardown()


# -- regressions the machine found ------------------------------------------------------------


def test_a_result_from_before_deliver_again_leaves_the_same_lanes_new_attempt_alone(make_app):
    """A lane's attempt reports late, after an admin sent its delivery again and the same
    lane (one sender id per process) claimed it again as attempt 1: the late result
    belongs to the old claim. Written over the new one, it released the new attempt's
    lease (another lane could send the delivery while it was in flight) and set the
    status from an attempt that no longer counted."""
    app = make_app(**MACHINE_CONFIG)
    with app.app_context():
        queue = DocumentQueueService()
        document = NewDocument("a.txt", b"sent again", "text/plain", 5, "https://client.example/cb")
        [submission] = queue.submit([document])
        queue.cancel_item(submission.item.id)
        service = DeliveryService()
        [first] = service.claim_due(1, SENDERS[0])
        assert service.record_attempt(first, RESULTS["refused"])  # failed at once
        service.deliver_again(first.delivery_id)
        [again] = service.claim_due(1, SENDERS[0])
        assert (again.delivery_id, again.attempt) == (first.delivery_id, first.attempt)

        assert not service.record_attempt(first, RESULTS["error"])

        [row] = delivery_rows().values()
        assert (row.status, row.attempts, row.locked_by) == (PENDING, 1, again.sender)
        assert row.last_error == RESULTS["refused"].error
        assert service.claim_due(1, SENDERS[1]) == [], "claimable while its attempt is in flight"
        assert service.record_attempt(again, RESULTS["delivered"])
        assert delivery_rows()[row.id].status == DELIVERED


# -- races: lanes and an admin at the same moment, from sessions of their own -----------------


def deliveries_owed(app: Flask, documents: int) -> None:
    """``documents`` cancelled documents with a callback_url, on an app with a global URL:
    two deliveries each, all due."""
    queue = DocumentQueueService()
    for number in range(documents):
        url = f"https://client.example/callbacks/{number}"
        file = NewDocument(f"{number}.txt", f"race {number}".encode(), "text/plain", 5, url)
        [submission] = queue.submit([file])
        queue.cancel_item(submission.item.id)


def test_lanes_claiming_at_once_never_share_a_delivery(make_app):
    app = make_app(**MACHINE_CONFIG, WEBHOOK_URL=GLOBAL_URL)
    with app.app_context():
        for round_no in range(8):
            clear_tables()
            deliveries_owed(app, 3)
            results = run_together(
                app,
                {
                    sender: lambda s, sender=sender: DeliveryService(s.session).claim_due(3, sender)
                    for sender in SENDERS
                },
                seed=round_no,
            )
            assert all(outcome == "ok" for outcome, _ in results.values()), results
            claims = [claim for _, claimed in results.values() for claim in claimed]
            # Whatever one lane skipped, the next look finds; none is claimed twice.
            claims += DeliveryService().claim_due(6, "a later look")
            assert sorted(claim.id for claim in claims) == sorted(delivery_rows())
            rows = delivery_rows()
            for claim in claims:
                assert (rows[claim.id].locked_by, rows[claim.id].attempts) == (claim.sender, 1)
            assert all(DeliveryService().record_attempt(c, RESULTS["delivered"]) for c in claims)


def test_deliver_again_a_lane_and_a_late_result_at_once(make_app):
    """On a failed delivery: the lane claims it only after deliver_again, and the result of
    the attempt that failed it, arriving late, is never written whatever the order."""
    app = make_app(**MACHINE_CONFIG)
    with app.app_context():
        for round_no in range(8):
            clear_tables()
            deliveries_owed(app, 1)
            service = DeliveryService()
            [old] = service.claim_due(1, SENDERS[0])
            assert service.record_attempt(old, RESULTS["refused"])
            results = run_together(app, deliver_again_lane_and_late_result(old), seed=round_no)
            assert results["again"] == ("ok", "done") and results["late"] == ("ok", False), results
            [row] = delivery_rows().values()
            claimed = results["lane"][1]
            assert row.status == PENDING and row.attempts == len(claimed), (results, row)
            assert row.locked_by == (claimed[0].sender if claimed else None), (results, row)


def deliver_again_lane_and_late_result(old: ClaimedDelivery) -> dict[str, Callable]:
    """An admin's deliver_again, the same lane's claim, and ``old``'s result, late."""

    def again(queue: DocumentQueueService) -> str:
        DeliveryService(queue.session).deliver_again(old.delivery_id)
        return "done"

    return {
        "again": again,
        "lane": lambda queue: DeliveryService(queue.session).claim_due(1, SENDERS[0]),
        "late": lambda queue: DeliveryService(queue.session).record_attempt(
            old, RESULTS["delivered"]
        ),
    }
