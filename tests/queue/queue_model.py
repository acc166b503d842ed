"""A pure-Python reference model of the queue's semantics: the oracle of the stateful test.

No database and no clock: time is two facts per item (is a pending item due? is an
in_progress item's lease still live?), which the test changes on both sides at
once (it backdates ``run_at`` / ``lease_expires_at`` in the database).

Ids are the database's: the model learns each new item's and document's id from
the service's answer and checks it is new. Where the semantics leave a choice
open, the model says so in a comment, and the choice is named "model choice".
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

MAX_ATTEMPTS = 3

PENDING, IN_PROGRESS = "pending", "in_progress"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
FINISHED = (COMPLETED, FAILED, CANCELLED)

DOCUMENT_STATUS = {
    PENDING: "pending",
    IN_PROGRESS: "processing",
    COMPLETED: "completed",
    FAILED: "failed",
    CANCELLED: "cancelled",
}


class Unspecified:
    """An item's ``last_error`` where the semantics do not say what it holds."""

    def __repr__(self) -> str:
        return "<any>"

    def __deepcopy__(self, memo: dict) -> Unspecified:
        return self  # one sentinel, also in copies of the model


ANY = Unspecified()
WORKER_LOST = "worker lost"  # the start of the message of an item whose worker was lost


def superseded_by(item_id: int) -> str:
    return f"superseded by queue item {item_id}"


def error_matches(actual: str | None, expected: object) -> bool:
    if expected is ANY:
        return True
    if expected == WORKER_LOST:
        return actual is not None and actual.startswith(WORKER_LOST)
    return actual == expected


class Refused(Exception):
    """The action is illegal: the service must refuse it (``reason`` names how)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "unknown" (LookupError) or "invalid" (InvalidTransition)


@dataclass(frozen=True)
class Held:
    """A claim handed out by the service: the fencing token a worker reports with.

    ``serial`` tells claims apart that share item, worker and attempt: a retry
    resets attempts, so one worker may claim an item as attempt 1 twice, and the
    first claim must stay lost (the service tells them apart by the claim's time).
    """

    item_id: int
    worker: str
    attempt: int
    serial: int = field(default_factory=lambda: next(_CLAIM_SERIALS))


_CLAIM_SERIALS = itertools.count(1)  # across models, so a serial names one claim anywhere


@dataclass
class Item:
    id: int
    document_id: int
    priority: int
    status: str = PENDING
    attempts: int = 0
    due: bool = True  # pending: run_at <= now
    holder: Held | None = None  # in_progress: who holds it
    lease_live: bool = False  # in_progress: lease_expires_at > now
    error: object = ANY  # the expected last_error (exact, WORKER_LOST prefix, or ANY)


@dataclass
class Document:
    id: int
    content: bytes
    # Texts the document may show. A completion by an item that is not the
    # document's latest may or may not set the text (the semantics only say the
    # latest one does), so the list can hold several; the test narrows it to
    # the one it observes.
    texts: list[str | None] = field(default_factory=lambda: [None])
    # What the document shows once purge took all its items: (status, error).
    kept: tuple[str, object] | None = None


class QueueModel:
    def __init__(self) -> None:
        self.documents: dict[int, Document] = {}
        self.items: dict[int, Item] = {}
        self.paused = False

    def copy(self) -> QueueModel:
        return copy.deepcopy(self)

    # -- reading ------------------------------------------------------------------

    def items_of(self, document_id: int) -> list[Item]:
        return sorted(
            (i for i in self.items.values() if i.document_id == document_id), key=lambda i: i.id
        )

    def latest(self, document_id: int) -> Item | None:
        items = self.items_of(document_id)
        return items[-1] if items else None

    def is_latest(self, item: Item) -> bool:
        return self.latest(item.document_id) is item

    def pending_of(self, document_id: int, besides: Item | None = None) -> Item | None:
        for item in self.items_of(document_id):
            if item.status == PENDING and item is not besides:
                return item
        return None

    def queued(self, item: Item) -> bool:
        """A pending item waiting behind a running item of its document."""
        return item.status == PENDING and any(
            other.status == IN_PROGRESS for other in self.items_of(item.document_id)
        )

    def situations(self) -> set[str]:
        """Labels of the less common situations the queue is in (for steering the search)."""
        found = set()
        for document_id in self.documents:
            items = self.items_of(document_id)
            if not items:
                found.add("no item left")
                continue
            latest = items[-1]
            for item in items:
                if self.queued(item):
                    found.add("pending behind a running item")
                if item.status == IN_PROGRESS:
                    found.add("running" if item.lease_live else "lease expired")
                    if item.attempts == MAX_ATTEMPTS:
                        found.add("running its last attempt")
                if item.status == PENDING and not item.due:
                    found.add("waiting for a backoff")
                if item.status in FINISHED and item is not latest:
                    found.add(f"superseded and {item.status}")
                if item.status in (PENDING, IN_PROGRESS) and latest.status in FINISHED:
                    found.add(f"{item.status} under a {latest.status} latest item")
            found.add(f"latest {latest.status}")
        if self.paused and any(i.status == PENDING for i in self.items.values()):
            found.add("paused with work waiting")
        return found

    def document_status(self, document_id: int) -> str | None:
        return self._shown(document_id)[0]

    def document_error(self, document_id: int) -> object:
        return self._shown(document_id)[1]

    def _shown(self, document_id: int) -> tuple[str | None, object]:
        """(status, error) of the document: its latest item's, or what it kept."""
        latest = self.latest(document_id)
        if latest is None:
            kept = self.documents[document_id].kept if document_id in self.documents else None
            return kept or (None, None)
        return DOCUMENT_STATUS[latest.status], latest.error if latest.status == FAILED else None

    def document_with_content(self, content: bytes) -> Document | None:
        return next((d for d in self.documents.values() if d.content == content), None)

    def held(self, claim: Held) -> Item | None:
        """The item this claim still holds (in_progress, same worker and attempt)."""
        item = self.items.get(claim.item_id)
        if item is not None and item.status == IN_PROGRESS and item.holder == claim:
            return item
        return None

    def expired(self) -> list[Item]:
        return [i for i in self._by_id() if i.status == IN_PROGRESS and not i.lease_live]

    def _by_id(self) -> list[Item]:
        return [self.items[k] for k in sorted(self.items)]

    # -- shared transitions -------------------------------------------------------

    def _new_item(self, document_id: int, item_id: int, priority: int) -> Item:
        if self.items and item_id <= max(self.items):
            raise AssertionError(f"new queue item {item_id} is not newer than every other item")
        item = Item(item_id, document_id, priority)
        self.items[item_id] = item
        return item

    def _claim(self, item: Item, worker: str) -> Held:
        item.attempts += 1
        item.status, item.lease_live = IN_PROGRESS, True
        item.holder = Held(item.id, worker, item.attempts)
        return item.holder

    def _leave_in_progress(self, item: Item, status: str, error: object) -> None:
        item.status, item.holder, item.lease_live, item.error = status, None, False, error

    def _fold(self, item: Item, into: Item) -> None:
        """The item gives way to its document's latest item (kept priority if that is pending)."""
        self._leave_in_progress(item, CANCELLED, superseded_by(into.id))
        if into.status == PENDING:
            into.priority = max(into.priority, item.priority)

    def _back_to_pending(self, item: Item, due: bool, error: object) -> None:
        """Pending again if it is its document's latest item; else folded into the latest.

        Only a document's latest item is ever pending, so its status always tells
        what will happen next.
        """
        latest = self.latest(item.document_id)
        if latest is not None and latest is not item:
            self._fold(item, latest)
        else:
            self._leave_in_progress(item, PENDING, error)
            item.due = due

    def _rescue(self, item: Item) -> None:
        if item.attempts >= MAX_ATTEMPTS:
            self._leave_in_progress(item, FAILED, WORKER_LOST)
        else:
            self._back_to_pending(item, due=True, error=ANY)

    def _complete(self, item: Item, text: str) -> None:
        document = self.documents[item.document_id]
        if self.is_latest(item):
            document.texts = [text]
        elif text not in document.texts:
            document.texts.append(text)  # model choice: either text is acceptable
        self._leave_in_progress(item, COMPLETED, ANY)

    # -- documents ------------------------------------------------------------------

    def submit(self, content: bytes, priority: int, document_id: int, item_id: int | None) -> bool:
        """An upload; returns whether a new document is expected (else the existing one)."""
        if self.document_with_content(content) is not None:
            return False
        if document_id in self.documents:
            raise AssertionError(f"new document {document_id} reuses an id")
        self.documents[document_id] = Document(document_id, content)
        assert item_id is not None, "a new document has a queue item"
        self._new_item(document_id, item_id, priority)
        return True

    def reprocess(self, document_id: int, priority: int, returned_id: int) -> int:
        """The id ``enqueue`` must return; ``returned_id`` is the new item's, if one is made."""
        if document_id not in self.documents:
            raise Refused("unknown")
        pending = self.pending_of(document_id)
        if pending is not None:
            pending.priority = max(pending.priority, priority)
            pending.due = True
            return pending.id
        self._new_item(document_id, returned_id, priority)
        return returned_id

    def delete_document(self, document_id: int) -> None:
        self.documents.pop(document_id)
        for item in self.items_of(document_id):
            del self.items[item.id]

    # -- claims ---------------------------------------------------------------------

    def batch_candidates(self, rescue: bool = True) -> list[Item] | None:
        """What a batch claim may take (None while paused), after rescuing expired leases
        (a claim that polls first does; one made on a wake does not)."""
        if self.paused:
            return None
        if rescue:
            self.rescue()
        return [
            i
            for i in self._by_id()
            if i.status == PENDING
            and i.due
            and not any(o.status == IN_PROGRESS for o in self.items_of(i.document_id))
        ]

    def claim(self, item_id: int, worker: str) -> Held:
        return self._claim(self.items[item_id], worker)

    def mark_in_progress(self, item_id: int, worker: str) -> Held | None:
        """Claim one item. Unless paused, every expired lease is rescued first, so a
        takeover counts the lost attempt and two items of one document never run."""
        if self.paused:
            return None
        self.rescue()
        item = self.items.get(item_id)
        if item is None or item.status != PENDING or not item.due:
            return None
        if any(o.status == IN_PROGRESS for o in self.items_of(item.document_id)):
            return None
        return self._claim(item, worker)

    def extend(self, claims: dict[int, Held]) -> int:
        extended = 0
        for claim in claims.values():
            item = self.held(claim)
            if item is not None:
                item.lease_live = True
                extended += 1
        return extended

    def expire_lease(self, item_id: int) -> None:
        self.items[item_id].lease_live = False

    def make_pending_due(self) -> None:
        for item in self.items.values():
            if item.status == PENDING:
                item.due = True

    def rescue(self) -> int:
        expired = self.expired()
        for item in expired:
            self._rescue(item)
        return len(expired)

    def release(self, claims: list[Held]) -> int:
        released = 0
        for claim in claims:
            item = self.held(claim)
            if item is None:
                continue
            item.attempts -= 1  # the attempt did not start: it is not counted
            self._back_to_pending(item, due=True, error=ANY)
            released += 1
        return released

    # -- outcomes -------------------------------------------------------------------

    def succeed(self, claim: Held, text: str) -> bool:
        item = self.held(claim)
        if item is None:
            return False
        self._complete(item, text)
        return True

    def fail(self, claim: Held, error: str, permanent: bool) -> bool:
        item = self.held(claim)
        if item is None:
            return False
        if permanent or claim.attempt >= MAX_ATTEMPTS:
            self._leave_in_progress(item, FAILED, error)
        else:
            # A retry's error shows on the item while it waits for its backoff.
            self._back_to_pending(item, due=False, error=error)
        return True

    # -- admin actions --------------------------------------------------------------

    def cancel(self, item_id: int) -> None:
        item = self.items.get(item_id)
        if item is None:
            raise Refused("unknown")
        if item.status not in (PENDING, IN_PROGRESS):
            raise Refused("invalid")
        self._leave_in_progress(item, CANCELLED, ANY)

    def retry(self, item_id: int) -> None:
        item = self.items.get(item_id)
        if item is None:
            raise Refused("unknown")
        if item.status not in (FAILED, CANCELLED) or not self.is_latest(item):
            raise Refused("invalid")
        if self.pending_of(item.document_id) is not None:
            # Model choice: an older item of the document is pending (it went back
            # to pending after this one was cancelled); retrying would make two.
            raise Refused("invalid")
        item.status, item.attempts, item.due, item.error = PENDING, 0, True, ANY

    def retry_failed(self) -> int:
        retried = 0
        for item in self._by_id():
            if item.status == FAILED:
                try:
                    self.retry(item.id)
                except Refused:
                    continue
                retried += 1
        return retried

    def purge(self) -> int:
        """Every finished item goes (all finished long ago), but a document's latest only
        with all its items; a document left with none keeps what it showed."""
        doomed = [i for i in self._by_id() if i.status in FINISHED and not self.is_latest(i)]
        for document_id in self.documents:
            items = self.items_of(document_id)
            if items and all(item.status in FINISHED for item in items):
                self.documents[document_id].kept = self._shown(document_id)
                doomed.append(items[-1])
        for item in doomed:
            del self.items[item.id]
        return len(doomed)

    # -- the workers drain the queue --------------------------------------------------

    def drain(self, text_of: dict[int, str]) -> None:
        """Workers run until nothing is pending: every running item's worker died (its
        lease ran out) and is rescued, then each pending item is processed and completes.

        ``text_of`` maps a document id to the text its processor returns.
        """
        self.paused = False
        for item in self.items.values():
            item.lease_live = False
        self.make_pending_due()
        self.rescue()
        for item in self._by_id():
            if item.status == PENDING:
                self._claim(item, "drainer")
                self._complete(item, text_of[item.document_id])
