"""Model-based stateful test of DocumentQueueService, on SQLite and on PostgreSQL.

Hypothesis drives the service through random sequences of uploads, reprocessing,
claims by several workers, outcomes (late ones of fenced-out workers too), lost
leases, rescues, shutdowns, admin actions, pauses and time passing. A pure model
(``queue_model.py``) predicts every step; after each step the whole database
(every item and every document) is compared with it and the invariants are
checked. Short scenarios replay, on every run, sequences the random search reaches
only rarely. A race test lets the rescuer, a late outcome and an admin action hit
one expired item at the same moment from three sessions.

Where the semantics leave a choice open, the model says "model choice" (in
``queue_model.py`` and below); anything else the service does differently is a
defect of the service (or of the semantics), never a reason to bend the model.

Time is moved by hand: a backoff comes due by backdating ``run_at``, a worker dies
by backdating its ``lease_expires_at`` (live leases last 300 s, far longer than an
example).

``make test`` runs a bounded number of examples per back end. For a long run:

    DOCQUEUE_STRESS_MINUTES=20 .venv/bin/python -m pytest tests/queue/test_state_machine.py -s -q

which runs examples in a loop for 20 minutes in all (half per back end) and prints
how many examples and steps were checked.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pytest
from flask import Flask
from hypothesis import HealthCheck, Phase, currently_in_test_context, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from docqueue_app.models import QUEUE_STATE_ID, Document, QueueItem, QueueState, db, utcnow
from docqueue_app.queue import (
    DocumentNotFound,
    DocumentQueueService,
    InvalidTransition,
    process_document_queue,
)
from docqueue_app.queue.service import Claim, Outcome
from tests.conftest import TABLES
from tests.helpers import backend_name, execute_sql
from tests.queue.queue_model import (
    DOCUMENT_STATUS,
    FINISHED,
    IN_PROGRESS,
    MAX_ATTEMPTS,
    PENDING,
    Held,
    Item,
    QueueModel,
    Refused,
    error_matches,
)

MACHINE_CONFIG: dict[str, Any] = {
    "MAX_ATTEMPTS": MAX_ATTEMPTS,
    "LEASE_SECONDS": 300,
    "RETRY_BASE_SECONDS": 10,
    "PROCESS_ISOLATION": "none",
    "PROCESSOR": "tests.processing.sample_processors:echo_text",
}

WORKERS = ("w1", "w2", "w3")
# Few distinct contents, so that the same bytes are uploaded again now and then.
CONTENTS = tuple(f"document number {n}".encode() for n in range(4))
PRIORITIES = st.integers(0, 10)
# The kinds of item a rule may act on, by what the model knows of them: "queued"
# items are pending behind a running item of their document; "completed", "failed"
# and "cancelled" ones are their document's latest (what a user sees), "superseded"
# ones are finished but not the latest; "gone" ones were deleted or purged. A rule
# draws a kind among those present, then an item of that kind, so that rare kinds
# (an item queued behind a running one) are acted on as often as common ones.
ITEM_KINDS = (
    "pending",
    "queued",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
    "superseded",
    "gone",
)

# What no database stores as such: the stored text may have them replaced, not lost.
NASTY = "lone surrogate \ud800, NUL \x00."
DRAIN_ROUNDS = 50

STRESS_MINUTES = os.environ.get("DOCQUEUE_STRESS_MINUTES")
BACK_ENDS = 2  # the stress budget is split between SQLite and PostgreSQL
DEFAULT_SETTINGS = settings(
    max_examples=75,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No "explain" phase: re-running a failing case under coverage costs minutes here.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
STRESS_BATCH = settings(DEFAULT_SETTINGS, max_examples=25)

# The documented refusals, by the model's reason.
REFUSALS: dict[str, type[Exception]] = {
    "unknown": LookupError,
    "invalid": InvalidTransition,
    "document": DocumentNotFound,
}


class Divergence(AssertionError):
    """The database breaks the model or an invariant after a service action."""


_DIVERGENCES: dict[str, type[Divergence]] = {}


def divergence_after(action: str) -> type[Divergence]:
    """One exception class per action: Hypothesis tells failures apart by type and line,
    so each action that goes wrong is shrunk and reported as a failure of its own."""
    name = re.sub(r"\W+", "_", action.split("(")[0]).strip("_")
    if name not in _DIVERGENCES:
        _DIVERGENCES[name] = type(f"DivergenceAfter_{name}", (Divergence,), {})
    return _DIVERGENCES[name]


# The outcome rules act on the nth running item (counting round), and only when one runs.
NTH = st.integers(0, 3)
some_work_running = precondition(lambda self: bool(self.running()))

# Examples and steps checked (by this process), for the stress report.
STATS = {"examples": 0, "steps": 0}


def clear_tables() -> None:
    """Every example starts from an empty queue (children first, for the foreign keys)."""
    with db.engine.begin() as connection:
        for table in TABLES:
            connection.execute(text(f"DELETE FROM {table}"))


def ago(**delta: float) -> datetime:
    return utcnow() - timedelta(**delta)


# -- reading the database -------------------------------------------------------------


@dataclass
class Snapshot:
    items: dict[int, Any]  # id -> queue_items row
    documents: dict[int, Any]  # id -> documents row
    paused: bool
    now: datetime  # taken after the reads, so "due now" rows are due


def read_database() -> Snapshot:
    items, documents = QueueItem.__table__, Document.__table__
    with db.engine.connect() as connection:
        item_rows = {row.id: row for row in connection.execute(select(items))}
        document_rows = {
            row.id: row
            for row in connection.execute(
                select(
                    documents.c.id,
                    documents.c.status,
                    documents.c.error,
                    documents.c.text,
                    documents.c.title,
                    documents.c.metadata,
                )
            )
        }
        paused = connection.scalar(select(QueueState.paused).where(QueueState.id == QUEUE_STATE_ID))
    return Snapshot(item_rows, document_rows, bool(paused), utcnow())


class ItemView(NamedTuple):
    """What the model predicts of an item; fields that do not apply to its status are None."""

    document: int
    status: str
    attempts: int
    priority: int
    due: bool | None  # pending only
    holder: tuple[str, int] | None  # in_progress only: (worker, attempt)
    lease: str | None  # in_progress only: "live" or "expired"


def model_view(item: Item) -> ItemView:
    running = item.status == IN_PROGRESS
    return ItemView(
        item.document_id,
        item.status,
        item.attempts,
        item.priority,
        item.due if item.status == PENDING else None,
        (item.holder.worker, item.holder.attempt) if running and item.holder else None,
        ("live" if item.lease_live else "expired") if running else None,
    )


def database_view(row: Any, now: datetime) -> ItemView:
    running = row.status == IN_PROGRESS
    lease = None
    if running:
        live = row.lease_expires_at is not None and row.lease_expires_at > now
        lease = "live" if live else "expired"
    return ItemView(
        row.document_id,
        row.status,
        row.attempts,
        row.priority,
        row.run_at <= now if row.status == PENDING else None,
        (row.locked_by, row.attempts) if running else None,
        lease,
    )


_NASTY_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


def text_matches(actual: str | None, expected: str | None) -> bool:
    """Equal, except that a NUL or lone surrogate may be dropped or replaced by a short marker."""
    if actual is None or expected is None or actual == expected:
        return actual == expected
    if _NASTY_CHARACTERS.search(actual):
        return False
    parts = _NASTY_CHARACTERS.split(expected)
    return re.fullmatch(".{0,6}".join(map(re.escape, parts)), actual, re.DOTALL) is not None


def value_matches(actual: Any, expected: Any) -> bool:
    """``text_matches`` through JSON-like values (keys included)."""
    if isinstance(expected, str):
        return isinstance(actual, str) and text_matches(actual, expected)
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(map(value_matches, actual, expected))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and len(actual) == len(expected)
            and all(
                any(text_matches(k, key) and value_matches(v, value) for k, v in actual.items())
                for key, value in expected.items()
            )
        )
    return actual == expected


def differences(model: QueueModel, snapshot: Snapshot) -> list[str]:
    """Every way the database differs from the model (empty when they agree)."""
    problems = []
    for item_id in sorted(model.items.keys() | snapshot.items.keys()):
        item, row = model.items.get(item_id), snapshot.items.get(item_id)
        if item is None or row is None:
            where = "the database" if item is None else "the model"
            problems.append(f"item {item_id} exists only in {where}: {item or row}")
            continue
        expected, actual = model_view(item), database_view(row, snapshot.now)
        if expected != actual:
            problems.append(f"item {item_id}:\n  model    {expected}\n  database {actual}")
        if not error_matches(row.last_error, item.error):
            problems.append(
                f"item {item_id} ({row.status}): last_error {row.last_error!r},"
                f" model {item.error!r}"
            )
    for document_id in sorted(model.documents.keys() | snapshot.documents.keys()):
        document, row = model.documents.get(document_id), snapshot.documents.get(document_id)
        if document is None or row is None:
            where = "the database" if document is None else "the model"
            problems.append(f"document {document_id} exists only in {where}")
            continue
        status = model.document_status(document_id)
        if row.status != status:
            problems.append(f"document {document_id}: status {row.status!r}, model {status!r}")
        error = model.document_error(document_id)
        if not error_matches(row.error, error):
            problems.append(f"document {document_id}: error {row.error!r}, model {error!r}")
        if not any(text_matches(row.text, t) for t in document.texts):
            problems.append(
                f"document {document_id}: text {row.text!r}, model one of {document.texts!r}"
            )
    if snapshot.paused != model.paused:
        problems.append(f"paused: database {snapshot.paused}, model {model.paused}")
    return problems


# -- invariants of the database alone (they hold whatever the model says) ----------------


def at_most_one_pending_and_one_running(snapshot: Snapshot) -> list[str]:
    problems = []
    for status in (PENDING, IN_PROGRESS):
        per_document: dict[int, list[int]] = {}
        for row in snapshot.items.values():
            if row.status == status:
                per_document.setdefault(row.document_id, []).append(row.id)
        problems += [
            f"document {d} has {len(ids)} {status} items: {sorted(ids)}"
            for d, ids in per_document.items()
            if len(ids) > 1
        ]
    return problems


def documents_follow_their_latest_item(snapshot: Snapshot) -> list[str]:
    latest: dict[int, Any] = {}
    for row in sorted(snapshot.items.values(), key=lambda r: r.id):
        latest[row.document_id] = row
    problems = []
    for document in snapshot.documents.values():
        item = latest.get(document.id)
        if item is None:
            continue  # all purged: it keeps its status (the model checks which)
        status = DOCUMENT_STATUS[item.status]
        error = item.last_error if item.status == "failed" else None
        if (document.status, document.error) != (status, error):
            problems.append(
                f"document {document.id} shows {(document.status, document.error)!r},"
                f" its latest item {item.id} says {(status, error)!r}"
            )
    return problems


def leases_only_while_in_progress(snapshot: Snapshot) -> list[str]:
    problems = []
    for row in snapshot.items.values():
        leased = (row.locked_by is not None, row.lease_expires_at is not None)
        expected = (True, True) if row.status == IN_PROGRESS else (False, False)
        if leased != expected:
            problems.append(
                f"item {row.id} is {row.status} with locked_by={row.locked_by!r},"
                f" lease_expires_at={row.lease_expires_at}"
            )
    return problems


def attempts_within_bounds(snapshot: Snapshot) -> list[str]:
    return [
        f"item {row.id} ({row.status}) has attempts {row.attempts} of {row.max_attempts}"
        for row in snapshot.items.values()
        if not 0 <= row.attempts <= row.max_attempts or row.max_attempts != MAX_ATTEMPTS
    ]


INVARIANTS = (
    at_most_one_pending_and_one_running,
    documents_follow_their_latest_item,
    leases_only_while_in_progress,
    attempts_within_bounds,
)


def invariant_violations(snapshot: Snapshot) -> list[str]:
    return [problem for check in INVARIANTS for problem in check(snapshot)]


# -- talking to the service ------------------------------------------------------------


def stand_in(held: Held) -> QueueItem:
    """An item object as the worker that got this claim holds it (the row may have moved on)."""
    item = QueueItem(id=held.item_id, locked_by=held.worker, attempts=held.attempt)
    item.claim = claim_of(held)
    return item


# When each claim handed out was made (Held.serial -> the service's claim time):
# with the worker and the attempt, the service's fencing token.
CLAIMED_AT: dict[int, datetime] = {}


def claim_of(held: Held) -> Claim:
    return Claim(held.worker, held.attempt, CLAIMED_AT.get(held.serial))


def took(held: Held, claim: Claim) -> None:
    """The service's claim ``claim`` is the model's ``held``: remember its time."""
    CLAIMED_AT[held.serial] = claim.started_at


def result_for(held: Held, nasty: bool = False) -> dict[str, Any]:
    """A processor result unique to this claim, so the document shows whose result it holds."""
    text = f"text of item {held.item_id}, attempt {held.attempt} by {held.worker}"
    if not nasty:
        return {"text": text, "title": "a title", "page_count": 1, "metadata": {"n": 1}}
    return {
        "text": f"{text}: {NASTY}",
        "title": f"title {NASTY}",
        "page_count": 1,
        "metadata": {f"key {NASTY}": NASTY, "list": [NASTY, "\x00"], "plain": "ok"},
    }


def first_item_id(document_id: int) -> int:
    item_id = db.session.scalar(
        select(func.min(QueueItem.id)).where(QueueItem.document_id == document_id)
    )
    db.session.commit()
    return item_id


class QueueMachine(RuleBasedStateMachine):
    """The service and the model side by side: after every rule the database equals the model."""

    documents = Bundle("documents")  # ids of documents ever uploaded (deleted ones too)
    claims = Bundle("claims")  # every claim ever handed out, still held or long stale

    def __init__(self, app: Flask) -> None:
        super().__init__()
        self.app = app
        self.context = app.app_context()
        self.context.push()
        clear_tables()
        self.service = DocumentQueueService()
        self.model = QueueModel()
        # Every item ever created, purged and deleted ones too: acting on those
        # must be refused.
        self.item_ids: set[int] = set()
        self.snapshot: Snapshot | None = None
        self.last_action = "the start"  # names the failure when an invariant breaks
        self.checked_once = False
        self.situations: set[str] = set()
        self.handed_out: list[Held] = []  # every claim, in order (for the scenarios below)
        STATS["examples"] += 1

    def teardown(self) -> None:
        # Steer the search (Hypothesis' target phase) toward examples that reach
        # many different situations: bugs hide in the rare ones.
        if currently_in_test_context():
            target(len(self.situations), label="situations reached")
        db.session.remove()
        self.context.pop()

    # -- helpers ------------------------------------------------------------------

    def call(
        self, action: str, refusal: str | None, function: Callable, *args: Any, **kwargs: Any
    ) -> Any:
        """One service call: it must succeed when the model says the action is legal,
        and raise exactly the documented refusal when the model says it is not."""
        self.snapshot = None
        self.last_action = action
        try:
            result = function(*args, **kwargs)
        except Exception as exc:
            db.session.rollback()
            if refusal is not None and isinstance(exc, REFUSALS[refusal]):
                return None
            expectation = "legal" if refusal is None else f"refused ({REFUSALS[refusal].__name__})"
            raise AssertionError(
                f"{action}: the model says it is {expectation}, the service raised {exc!r}"
            ) from exc
        if refusal is not None:
            raise AssertionError(
                f"{action}: the model refuses it ({REFUSALS[refusal].__name__}),"
                f" the service returned {result!r}"
            )
        return result

    def sql(self, statement: str, **params: Any) -> None:
        """Change rows behind the service's back (time passing, a worker dying)."""
        self.snapshot = None
        self.last_action = "time passing"
        execute_sql(self.app, statement, **params)

    def database(self) -> Snapshot:
        if self.snapshot is None:
            self.snapshot = read_database()
        return self.snapshot

    def settle(self, *alternatives: QueueModel) -> QueueModel:
        """Where the semantics allow several results, go on with the one the database shows."""
        for model in alternatives:
            if not differences(model, self.database()):
                return model
        return alternatives[0]  # the invariant reports how the database differs

    def kind_of(self, item: Item) -> str:
        if self.model.queued(item):
            return "queued"
        if item.status in FINISHED and not self.model.is_latest(item):
            return "superseded"
        return item.status

    def items_by_kind(self) -> dict[str, list[int]]:
        by_kind: dict[str, list[int]] = {}
        for item in sorted(self.model.items.values(), key=lambda i: i.id):
            by_kind.setdefault(self.kind_of(item), []).append(item.id)
        if gone := self.item_ids - self.model.items.keys():
            by_kind["gone"] = sorted(gone)
        return by_kind

    def draw_item(self, data: st.DataObject) -> int:
        """A kind of item among those present, then an item of that kind."""
        by_kind = self.items_by_kind()
        kind = data.draw(st.sampled_from(sorted(by_kind, key=ITEM_KINDS.index)), label="kind")
        return data.draw(st.sampled_from(by_kind[kind]), label=f"{kind} item")

    def item_object(self, item_id: int) -> QueueItem:
        item = db.session.scalars(select(QueueItem).where(QueueItem.id == item_id)).first()
        db.session.commit()
        return item if item is not None else QueueItem(id=item_id)

    def report(self, held: Held, via: str, **details: Any) -> bool:
        """Report one outcome of a claim, through record_outcomes or mark_completed/failed."""
        if via == "record_outcomes":
            outcome = Outcome(held.item_id, claim_of(held), **details)
            recorded = self.call(via, None, self.service.record_outcomes, [outcome])
            assert recorded in (0, 1), f"record_outcomes of one outcome returned {recorded}"
            return recorded == 1
        item = stand_in(held)
        if "result" in details:
            return self.call(via, None, self.service.mark_completed, item, details["result"])
        error, permanent = details["error"], details["permanent"]
        return self.call(via, None, self.service.mark_failed, item, error, permanent)

    # -- documents ------------------------------------------------------------------

    @initialize(
        target=documents,
        uploads=st.lists(st.tuples(st.sampled_from(CONTENTS), PRIORITIES), min_size=1, max_size=2),
        claim=st.integers(0, 3),
    )
    def start(self, uploads: list[tuple[bytes, int]], claim: int) -> Any:
        """Some documents, and a first batch claimed by w1 (up to ``claim`` items).

        Hypothesis leaves a random subset of the rules out of each example (swarm
        testing): an example without "upload" or without claims would test little.
        """
        documents = [self.upload(content, priority) for content, priority in uploads]
        if claim:
            self.claim_batch("w1", claim)
        return multiple(*documents)

    @rule(target=documents, content=st.sampled_from(CONTENTS), priority=PRIORITIES)
    def upload(self, content: bytes, priority: int) -> int:
        existing = self.model.document_with_content(content)
        document, created = self.call(
            "submit_document",
            None,
            self.service.submit_document,
            "note.txt",
            content,
            "text/plain",
            priority,
        )
        document_id = document.id
        assert created == (existing is None), f"submit_document: created={created}"
        if existing is not None:
            assert document_id == existing.id, "the same bytes must give the existing document"
            return document_id
        item_id = first_item_id(document_id)
        self.model.submit(content, priority, document_id, item_id)
        self.item_ids.add(item_id)
        return document_id

    @rule(document=documents, priority=PRIORITIES)
    def reprocess(self, document: int, priority: int) -> None:
        known = document in self.model.documents
        item = self.call(
            "enqueue",
            None if known else "document",
            self.service.enqueue,
            document,
            "reprocess",
            priority,
        )
        if item is None:
            return
        returned = item.id
        expected = self.model.reprocess(document, priority, returned)
        assert returned == expected, f"enqueue returned item {returned}, the model {expected}"
        self.item_ids.add(returned)

    @some_work_running
    @rule(nth=NTH, priority=PRIORITIES)
    def reprocess_while_running(self, nth: int, priority: int) -> None:
        """A reprocess queued behind a running item: where most folding happens."""
        self.reprocess(self.model.items[self.nth_running(nth).item_id].document_id, priority)

    @rule(document=documents)
    def delete_document(self, document: int) -> None:
        if document not in self.model.documents:
            return  # what deleting twice answers is not specified
        self.call("delete_document", None, self.service.delete_document, document)
        self.model.delete_document(document)

    # -- workers --------------------------------------------------------------------

    @rule(
        target=claims,
        worker=st.sampled_from(WORKERS),
        limit=st.integers(1, 4),
        look_first=st.booleans(),
    )
    def claim_batch(self, worker: str, limit: int, look_first: bool = True) -> Any:
        before = self.model.copy()
        # A claim that polls first rescues expired leases first; a woken one does not.
        candidates = self.model.batch_candidates(rescue=look_first)
        claim = self.service.claim_due_items
        items = self.call("claim_due_items", None, claim, limit, worker, look_first)
        if candidates is None:
            assert items == [], "claim_due_items claimed while the queue is paused"
            # Model choice: whether a paused claim still rescues lost leases is open.
            rescued = before.copy()
            rescued.rescue()
            self.model = self.settle(before, rescued)
            return multiple()
        ids = [item.id for item in items]
        eligible = {item.id: item for item in candidates}
        assert set(ids) <= eligible.keys(), f"claimed {ids}, claimable were {sorted(eligible)}"
        assert len(ids) == min(limit, len(eligible)), f"claimed {ids} of {sorted(eligible)}"
        documents = [eligible[i].document_id for i in ids]
        assert len(set(documents)) == len(documents), f"two items of one document: {ids}"
        passed_over = [eligible[i].priority for i in eligible.keys() - set(ids)]
        if ids and passed_over:
            lowest_claimed = min(eligible[i].priority for i in ids)
            assert max(passed_over) <= lowest_claimed, "a higher-priority item was passed over"
        helds = []
        for item in items:
            held = self.model.claim(item.id, worker)
            took(held, item.claim)
            assert item.claim == claim_of(held), f"item {item.id}: claim {item.claim}"
            helds.append(held)
            self.handed_out.append(held)
        return multiple(*helds)

    @rule(
        target=claims,
        worker=st.sampled_from(WORKERS),
        kinds=st.lists(
            st.sampled_from(("success", "transient", "permanent")), min_size=1, max_size=4
        ),
    )
    def worker_processes_a_batch(self, worker: str, kinds: list[str]) -> Any:
        """A worker's pass: claim a batch, process it, report every outcome in one call."""
        claimed = self.claim_batch(worker, len(kinds))
        if claimed.values:
            self.record_several(list(claimed.values), kinds)
        return claimed

    @rule(target=claims, data=st.data(), worker=st.sampled_from(WORKERS))
    def mark_in_progress(self, data: st.DataObject, worker: str) -> Any:
        return self.claim_one(self.draw_item(data), worker)

    def claim_one(self, item_id: int, worker: str) -> Any:
        target = self.item_object(item_id)
        held = self.model.mark_in_progress(item_id, worker)
        won = self.call("mark_in_progress", None, self.service.mark_in_progress, target, worker)
        assert won == (held is not None), (
            f"mark_in_progress(item {item_id}) returned {won}, the model says {held is not None}"
        )
        if held is None:
            return multiple()
        took(held, target.claim)
        assert target.claim == claim_of(held), f"item {item_id}: claim {target.claim}"
        self.handed_out.append(held)
        return held

    # Workers report on what they hold: the claim of a running item (the nth, counting
    # round). Late reports of any claim ever handed out (mostly stale ones) have
    # rules of their own.

    def running(self) -> list[Held]:
        return [i.holder for i in self.model.items.values() if i.status == IN_PROGRESS and i.holder]

    def nth_running(self, nth: int) -> Held:
        running = sorted(self.running(), key=lambda held: held.item_id)
        return running[nth % len(running)]

    def holder(self, document: int) -> Held | None:
        for item in self.model.items_of(document):
            if item.status == IN_PROGRESS:
                return item.holder
        return None

    def holders(self, documents: list[int]) -> list[Held]:
        return [held for held in map(self.holder, documents) if held is not None]

    def succeed(self, held: Held, via: str, nasty: bool = False) -> None:
        result = result_for(held, nasty)
        item = self.model.items.get(held.item_id)
        latest = item is not None and self.model.is_latest(item)
        expected = self.model.succeed(held, result["text"])
        recorded = self.report(held, via, result=result)
        assert recorded == expected, f"{via}({held}) returned {recorded}, the model {expected}"
        if nasty and expected and latest:
            document = self.database().documents[item.document_id]
            assert value_matches(document.title, result["title"]), document.title
            assert value_matches(document.metadata, result["metadata"]), document.metadata

    def fail(self, held: Held, via: str, permanent: bool) -> None:
        kind = "permanent" if permanent else "transient"
        error = f"{kind} error in attempt {held.attempt}"
        expected = self.model.fail(held, error, permanent)
        started = utcnow()
        recorded = self.report(held, via, error=error, permanent=permanent)
        assert recorded == expected, f"{via}({held}) returned {recorded}, the model {expected}"
        row = self.database().items.get(held.item_id)
        if expected and not permanent and row is not None and row.status == PENDING:
            backoff = (row.run_at - started).total_seconds()
            assert backoff >= 10 - 1, f"a retry comes due after {backoff:.1f} s"

    @some_work_running
    @rule(nth=NTH, via=st.sampled_from(("record_outcomes", "mark_completed")))
    def complete(self, nth: int, via: str) -> None:
        self.succeed(self.nth_running(nth), via)

    @some_work_running
    @rule(nth=NTH)
    def complete_with_nasty_result(self, nth: int) -> None:
        """Text and metadata no database stores as such: still completed, nothing lost."""
        self.succeed(self.nth_running(nth), "record_outcomes", nasty=True)

    @some_work_running
    @rule(nth=NTH, via=st.sampled_from(("record_outcomes", "mark_failed")))
    def fail_transiently(self, nth: int, via: str) -> None:
        self.fail(self.nth_running(nth), via, permanent=False)

    @some_work_running
    @rule(nth=NTH, via=st.sampled_from(("record_outcomes", "mark_failed")))
    def fail_permanently(self, nth: int, via: str) -> None:
        self.fail(self.nth_running(nth), via, permanent=True)

    @rule(
        held=claims,
        outcome=st.sampled_from(("success", "nasty success", "transient", "permanent")),
        via=st.sampled_from(("record_outcomes", "mark")),
    )
    def late_outcome(self, held: Held, outcome: str, via: str) -> None:
        """A worker reports on a claim it got some time ago: recorded only if it still holds."""
        if outcome.endswith("success"):
            self.succeed(held, via if via != "mark" else "mark_completed", outcome != "success")
        else:
            self.fail(held, via if via != "mark" else "mark_failed", outcome == "permanent")

    @rule(
        documents=st.lists(documents, min_size=1, max_size=3, unique=True),
        late=st.lists(claims, max_size=1),
        kinds=st.lists(st.sampled_from(("success", "transient", "permanent")), min_size=4),
    )
    def report_several_outcomes(
        self, documents: list[int], late: list[Held], kinds: list[str]
    ) -> None:
        """One record_outcomes call for several items (the worker's group commit)."""
        helds = list({held.item_id: held for held in self.holders(documents) + late}.values())
        self.record_several(helds, kinds)

    def record_several(self, helds: list[Held], kinds: list[str]) -> None:
        """Report an outcome of each kind (success, transient, permanent) in one call."""
        outcomes, expected = [], 0
        for held, kind in zip(helds, kinds, strict=False):
            if kind == "success":
                result = result_for(held)
                expected += self.model.succeed(held, result["text"])
                outcomes.append(Outcome(held.item_id, claim_of(held), result=result))
            else:
                error, permanent = f"{kind} error in attempt {held.attempt}", kind == "permanent"
                expected += self.model.fail(held, error, permanent)
                outcomes.append(
                    Outcome(held.item_id, claim_of(held), error=error, permanent=permanent)
                )
        recorded = self.call("record_outcomes", None, self.service.record_outcomes, outcomes)
        assert recorded == expected, f"recorded {recorded} outcomes, the model {expected}"

    @rule(documents=st.lists(documents, min_size=1, max_size=3), late=st.lists(claims, max_size=2))
    def extend_leases(self, documents: list[int], late: list[Held]) -> None:
        """A worker's heartbeat over the claims it holds, and perhaps some it lost."""
        held = {held.item_id: held for held in late + self.holders(documents)}  # one per item
        expected = self.model.extend(held)
        claims = {item_id: claim_of(claim) for item_id, claim in held.items()}
        extended = self.call("extend_leases", None, self.service.extend_leases, claims)
        assert extended == expected, f"extended {extended} leases, the model {expected}"

    @rule(documents=st.lists(documents, min_size=1, max_size=3), late=st.lists(claims, max_size=2))
    def release_on_shutdown(self, documents: list[int], late: list[Held]) -> None:
        """A stopping worker hands back claimed items it has not started."""
        helds = self.holders(documents) + late
        expected = self.model.release(helds)
        items = [stand_in(held) for held in helds]
        released = self.call("release_items", None, self.service.release_items, items)
        assert released == expected, f"released {released} items, the model {expected}"

    # -- time -----------------------------------------------------------------------

    @some_work_running
    @rule(nth=NTH)
    def worker_dies(self, nth: int) -> None:
        """The worker of a running item dies or hangs: it stops extending its lease."""
        item_id = self.nth_running(nth).item_id
        self.sql(
            "UPDATE queue_items SET lease_expires_at = :past WHERE id = :id",
            past=ago(seconds=1),
            id=item_id,
        )
        self.model.expire_lease(item_id)

    @rule()
    def backoffs_come_due(self) -> None:
        self.sql(
            "UPDATE queue_items SET run_at = :past WHERE status = 'pending'", past=ago(seconds=1)
        )
        self.model.make_pending_due()

    @rule()
    def rescue_lost_leases(self) -> None:
        expected = self.model.rescue()
        rescued = self.call("rescue_expired_leases", None, self.service.rescue_expired_leases)
        assert rescued == expected, f"rescued {rescued}, the model {expected}"

    # -- admin ----------------------------------------------------------------------

    def admin_action(self, name: str, item_id: int) -> None:
        model_action = getattr(self.model, name)
        try:
            model_action(item_id)
            refusal = None
        except Refused as refused:
            refusal = refused.reason
        service_action = getattr(self.service, f"{name}_item")
        self.call(f"{name}_item({item_id})", refusal, service_action, item_id)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.admin_action("cancel", self.draw_item(data))

    @precondition(lambda self: any(map(self.model.queued, self.model.items.values())))
    @rule(nth=NTH)
    def cancel_queued_reprocess(self, nth: int) -> None:
        """A user withdraws the reprocess queued behind a running item (which runs on)."""
        queued = sorted(i.id for i in self.model.items.values() if self.model.queued(i))
        self.admin_action("cancel", queued[nth % len(queued)])

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        self.admin_action("retry", self.draw_item(data))

    @rule()
    def retry_failed(self) -> None:
        expected = self.model.retry_failed()
        retried = self.call("retry_failed_items", None, self.service.retry_failed_items)
        assert retried == expected, f"retried {retried}, the model {expected}"

    @rule()
    def purge(self) -> None:
        # Every finished item finished an hour ago, so "finished before now" is unambiguous.
        self.sql(
            "UPDATE queue_items SET finished_at = :past WHERE finished_at IS NOT NULL",
            past=ago(hours=1),
        )
        expected = self.model.purge()
        purged = self.call("purge_items", None, self.service.purge_items, 0)
        assert purged == expected, f"purged {purged}, the model {expected}"

    @precondition(lambda self: not self.model.paused)
    @rule()
    def pause(self) -> None:
        self.call("set_paused(True)", None, self.service.set_paused, True)
        self.model.paused = True

    @precondition(lambda self: self.model.paused)
    @rule()
    def resume(self) -> None:
        self.call("set_paused(False)", None, self.service.set_paused, False)
        self.model.paused = False

    @rule()
    def workers_drain(self) -> None:
        """Liveness: resumed, with dead workers' leases run out, workers finish every item."""
        self.call("set_paused(False)", None, self.service.set_paused, False)
        expected = self.model.copy()
        expected.drain({d.id: d.content.decode() for d in expected.documents.values()})
        for _ in range(DRAIN_ROUNDS):
            self.sql(
                "UPDATE queue_items SET run_at = :past WHERE status = 'pending'",
                past=ago(seconds=1),
            )
            self.sql(
                "UPDATE queue_items SET lease_expires_at = :past WHERE status = 'in_progress'",
                past=ago(seconds=1),
            )
            with self.app.app_context():
                self.call(
                    "process_document_queue",
                    None,
                    lambda: process_document_queue(limit=50, worker_id="drainer"),
                )
            unfinished = [
                row.id
                for row in self.database().items.values()
                if row.status in (PENDING, IN_PROGRESS)
            ]
            if not unfinished:
                break
        else:
            raise AssertionError(f"items {unfinished} still unfinished after {DRAIN_ROUNDS} passes")
        reached = {d: row.status for d, row in self.database().documents.items()}
        predicted = {d: expected.document_status(d) for d in expected.documents}
        assert reached == predicted, f"documents ended {reached}, the model predicted {predicted}"
        self.model = expected

    # -- invariants -----------------------------------------------------------------

    def require(self, problems: list[str], what: str) -> None:
        if problems:
            raise divergence_after(self.last_action)(
                f"after {self.last_action}, {what}:\n" + "\n".join(problems)
            )

    @invariant()
    def database_matches_model(self) -> None:
        if self.checked_once:
            STATS["steps"] += 1
        self.checked_once = True
        self.require(
            differences(self.model, self.database()), "the database differs from the model"
        )
        self.situations |= self.model.situations()
        # A text the semantics left open is now known: keep only that one.
        for document_id, row in self.database().documents.items():
            document = self.model.documents[document_id]
            document.texts = [next(t for t in document.texts if text_matches(row.text, t))]

    @invariant()
    def database_invariants_hold(self) -> None:
        """Whatever the model says: one pending and one running item per document at most,
        documents show their latest item, leases exactly on running items, attempts bounded."""
        for check in INVARIANTS:
            self.require(check(self.database()), check.__name__.replace("_", " "))


def test_queue_state_machine(make_app: Callable[..., Flask]) -> None:
    app = make_app(**MACHINE_CONFIG)
    backend = backend_name(app)
    STATS.update(examples=0, steps=0)
    started = time.monotonic()
    if STRESS_MINUTES is None:
        run_state_machine_as_test(lambda: QueueMachine(app), settings=DEFAULT_SETTINGS)
    else:
        # Batches of fresh random examples until this back end's share of the time is up.
        budget = float(STRESS_MINUTES) * 60 / BACK_ENDS
        while time.monotonic() - started < budget:
            run_state_machine_as_test(lambda: QueueMachine(app), settings=STRESS_BATCH)
    minutes = (time.monotonic() - started) / 60
    mode = f" (stress: {STRESS_MINUTES} min over {BACK_ENDS} back ends)" if STRESS_MINUTES else ""
    print(
        f"\nqueue state machine on {backend}: {STATS['examples']} examples,"
        f" {STATS['steps']} steps checked in {minutes:.1f} min{mode}"
    )


# -- scenarios: short sequences the random search reaches rarely, replayed every run ---------

Step = Callable[[QueueMachine], Any]


def do(rule_name: str, *args: Any) -> Step:
    return lambda machine: getattr(machine, rule_name)(*args)


def on_first(action: str, kind: str, worker: str = "w2") -> Step:
    """cancel, retry or mark_in_progress on the first item of a kind (see ITEM_KINDS)."""

    def step(machine: QueueMachine) -> None:
        item_id = machine.items_by_kind()[kind][0]
        if action == "mark_in_progress":
            machine.claim_one(item_id, worker)
        else:
            machine.admin_action(action, item_id)

    return step


def on_document(rule_name: str, *args: Any) -> Step:
    """A rule on the first document (before the rule's other arguments)."""
    return lambda machine: getattr(machine, rule_name)(min(machine.model.documents), *args)


RUNNING = [do("start", [(CONTENTS[0], 5)], 1)]  # one document, its item running
QUEUED = [*RUNNING, do("reprocess_while_running", 0, 7)]  # and a reprocess queued behind it
LAST_ATTEMPT = [  # one item running its last attempt
    *RUNNING,
    *[
        do("fail_transiently", 0, "record_outcomes"),
        do("backoffs_come_due"),
        do("claim_batch", "w2", 2),
    ]
    * (MAX_ATTEMPTS - 1),
]

SCENARIOS: dict[str, list[Step]] = {
    "a transient failure folds into the queued reprocess": [
        *QUEUED,
        do("fail_transiently", 0, "record_outcomes"),
    ],
    "a lost worker's item folds into the queued reprocess": [
        *QUEUED,
        do("worker_dies", 0),
        do("rescue_lost_leases"),
    ],
    "a released item folds into the queued reprocess": [
        *QUEUED,
        lambda machine: machine.release_on_shutdown([min(machine.model.documents)], []),
    ],
    "a cancelled item's late result changes nothing": [
        *RUNNING,
        on_first("cancel", "in_progress"),
        lambda machine: machine.late_outcome(machine.handed_out[0], "success", "record_outcomes"),
    ],
    "purge takes a document's latest item only with all the others": [
        *RUNNING,
        do("complete", 0, "record_outcomes"),
        do("purge"),
        on_document("reprocess", 5),
        do("claim_batch", "w2", 2),
        do("fail_permanently", 0, "record_outcomes"),
        do("purge"),
        on_document("reprocess", 5),
    ],
    "purge keeps a cancelled latest item while an older one runs": [
        *QUEUED,
        on_first("cancel", "queued"),
        do("purge"),
        do("complete", 0, "record_outcomes"),
        do("purge"),
    ],
    "only the latest item is retried": [
        *RUNNING,
        do("fail_permanently", 0, "record_outcomes"),
        on_document("reprocess", 5),
        on_first("cancel", "pending"),
        on_first("retry", "superseded"),
        do("retry_failed"),
        on_first("retry", "cancelled"),
    ],
    "retry a cancelled reprocess while the older item waits for its backoff": [
        *QUEUED,
        do("cancel_queued_reprocess", 0),
        do("fail_transiently", 0, "record_outcomes"),
        on_first("retry", "cancelled"),
    ],
    "mark_in_progress claims its item and rescues no other document's": [
        do("start", [(CONTENTS[0], 5), (CONTENTS[1], 5)], 1),
        do("worker_dies", 0),
        on_first("mark_in_progress", "pending"),
    ],
    "take over an expired item while a reprocess waits behind it": [
        *QUEUED,
        do("worker_dies", 0),
        on_first("mark_in_progress", "in_progress"),
    ],
    "no takeover of an expired item on its last attempt": [
        *LAST_ATTEMPT,
        do("worker_dies", 0),
        on_first("mark_in_progress", "in_progress"),
    ],
    "a nasty result is stored": [*RUNNING, do("complete_with_nasty_result", 0)],
    "a paused queue claims nothing": [
        do("start", [(CONTENTS[0], 5)], 0),
        do("pause"),
        do("claim_batch", "w1", 4),
        on_first("mark_in_progress", "pending"),
        do("resume"),
        do("claim_batch", "w1", 4),
    ],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(make_app: Callable[..., Flask], scenario: str) -> None:
    machine = QueueMachine(make_app(**MACHINE_CONFIG))
    try:
        for step in SCENARIOS[scenario]:
            step(machine)
            machine.database_invariants_hold()
            machine.database_matches_model()
    finally:
        machine.teardown()


# -- the race: rescuer, late outcome and admin on one expired item ----------------------------


@dataclass(frozen=True)
class RaceScenario:
    admin: str  # "cancel" or "retry"
    outcome: str  # the late outcome of the original claim: "success", "transient", "permanent"
    last_attempt: bool  # the lost attempt was the last one: the rescuer fails the item
    queued_behind: bool  # a reprocess waits behind the item: the rescuer folds it in


RACE_SCENARIOS = [
    RaceScenario(*values)
    for values in itertools.product(
        ("cancel", "retry"), ("success", "transient", "permanent"), (False, True), (False, True)
    )
]


def run_together(
    app: Flask, calls: dict[str, Callable[[DocumentQueueService], Any]], seed: int
) -> dict:
    """Each call in its own thread and session, all released at the same moment.

    After the barrier each thread waits a random fraction of a millisecond or two
    (seeded), so that every call gets its turn to go first.
    Returns name -> ("ok", result) | ("refused", reason) | ("raised", repr).
    """
    barrier = threading.Barrier(len(calls))
    results: dict[str, tuple[str, Any]] = {}
    delays = random.Random(seed)

    def run(name: str, call: Callable[[DocumentQueueService], Any], delay: float) -> None:
        with app.app_context(), Session(db.engine) as session:
            service = DocumentQueueService(session)
            barrier.wait()
            time.sleep(delay)
            try:
                results[name] = ("ok", call(service))
            except InvalidTransition:
                results[name] = ("refused", "invalid")
            except LookupError:
                results[name] = ("refused", "unknown")
            except Exception as exc:
                results[name] = ("raised", repr(exc))

    threads = [
        threading.Thread(target=run, args=(name, call, delays.uniform(0, 0.002)))
        for name, call in calls.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def linearize(
    model: QueueModel,
    steps: dict[str, Callable[[QueueModel], Any]],
    results: dict[str, tuple[str, Any]],
    snapshot: Snapshot,
) -> QueueModel | None:
    """The model after the calls in some order that explains both their results and the database.

    The rescuer may also have skipped the item (a row locked by another
    transaction is left for its next run), as if it had found nothing.
    """
    for order in itertools.permutations(steps):
        for rescue_skipped in (False, True):
            model_after = model.copy()
            predicted: dict[str, tuple[str, Any]] = {}
            for name in order:
                if name == "rescue" and rescue_skipped:
                    predicted[name] = ("ok", 0)
                    continue
                try:
                    predicted[name] = ("ok", steps[name](model_after))
                except Refused as refused:
                    predicted[name] = ("refused", refused.reason)
            if predicted == results and not differences(model_after, snapshot):
                return model_after
    return None


def assert_consistent(model: QueueModel, when: str) -> None:
    snapshot = read_database()
    problems = differences(model, snapshot) + invariant_violations(snapshot)
    assert not problems, f"{when}:\n" + "\n".join(problems)


def race_once(app: Flask, round_no: int, scenario: RaceScenario) -> None:
    clear_tables()
    service = DocumentQueueService()
    model = QueueModel()
    content = f"race round {round_no}".encode()
    document, _ = service.submit_document("race.txt", content, "text/plain", 5)
    document_id = document.id
    item_id = first_item_id(document_id)
    model.submit(content, 5, document_id, item_id)
    if scenario.last_attempt:
        execute_sql(app, "UPDATE queue_items SET attempts = :n", n=MAX_ATTEMPTS - 1)
        model.items[item_id].attempts = MAX_ATTEMPTS - 1
    original = db.session.get(QueueItem, item_id)
    assert service.mark_in_progress(original, "original")
    held = model.mark_in_progress(item_id, "original")
    assert held is not None
    took(held, original.claim)
    if scenario.queued_behind:
        queued = service.enqueue(document_id, "reprocess", 7)
        model.reprocess(document_id, 7, queued.id)
    execute_sql(
        app,
        "UPDATE queue_items SET lease_expires_at = :past WHERE id = :id",
        past=ago(seconds=1),
        id=item_id,
    )
    model.expire_lease(item_id)
    assert_consistent(model, f"round {round_no} {scenario}: before the race")

    late_result = result_for(held)
    late_error = f"{scenario.outcome} error in attempt {held.attempt}"
    if scenario.outcome == "success":
        outcome = Outcome(item_id, claim_of(held), result=late_result)
    else:
        outcome = Outcome(
            item_id, claim_of(held), error=late_error, permanent=scenario.outcome == "permanent"
        )

    def model_outcome(m: QueueModel) -> int:
        if scenario.outcome == "success":
            return int(m.succeed(held, late_result["text"]))
        return int(m.fail(held, late_error, permanent=scenario.outcome == "permanent"))

    def model_admin(m: QueueModel) -> str:
        getattr(m, scenario.admin)(item_id)
        return "done"

    def service_admin(s: DocumentQueueService) -> str:
        getattr(s, f"{scenario.admin}_item")(item_id)
        return "done"

    results = run_together(
        app,
        {
            "rescue": lambda s: s.rescue_expired_leases(),
            "late outcome": lambda s: s.record_outcomes([outcome]),
            scenario.admin: service_admin,
        },
        seed=round_no,
    )
    where = f"round {round_no} {scenario}: results {results}"
    raised = {name: result for name, result in results.items() if result[0] == "raised"}
    assert not raised, f"{where}: only the documented refusals may be raised"
    snapshot = read_database()
    violations = invariant_violations(snapshot)
    assert not violations, f"{where}:\n" + "\n".join(violations)
    model_after = linearize(
        model,
        {"rescue": QueueModel.rescue, "late outcome": model_outcome, scenario.admin: model_admin},
        results,
        snapshot,
    )
    assert model_after is not None, (
        f"{where}: no order of the three calls explains the results and the database:\n"
        + "\n".join(f"  {database_view(row, snapshot.now)}" for row in snapshot.items.values())
    )
    # Whatever the rescuer left, its next run finds.
    expected = model_after.rescue()
    assert service.rescue_expired_leases() == expected
    assert_consistent(model_after, f"{where}: after a second rescue")


def test_rescuer_late_outcome_and_admin_race(make_app: Callable[..., Flask]) -> None:
    app = make_app(**MACHINE_CONFIG)
    with app.app_context():
        for round_no, scenario in enumerate(RACE_SCENARIOS):
            race_once(app, round_no, scenario)
        db.session.remove()
