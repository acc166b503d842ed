"""DeliveryService: the only code that changes webhook deliveries once they are recorded.

Deliveries are inserted by the outcome transactions of ``DocumentQueueService``
(``events.record_events``); from then on every write goes through here, each
method one transaction, as the queue's service does for queue items:

- a sender claims due deliveries under a lease (``locked_until``), counting an
  attempt: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite;
- it records how the attempt went, but only while its claim still holds, so a
  sender whose lease ran out (and whose delivery another sender took over)
  cannot overwrite what happened since;
- an admin sends a failed delivery again, under the same delivery id.

A sender that dies mid-attempt leaves its lease to run out; the delivery is
then due again for any sender: at least once. Even its last attempt is sent
once more (the killed one may never have reached the receiver), but no more:
when that extra attempt's sender is lost too, the next claim gives the
delivery up (``failed``) instead of sending it, so a delivery whose every
sender dies (OOM-killed, SIGKILLed, hung past its lease) is never sent for ever.
"""

from __future__ import annotations

import functools
import logging
import operator
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Update,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from ..database import database_clock
from ..models import WebhookDelivery
from ..queue.retry import Cause, RetryPolicy, decide
from ..queue.service import InvalidTransition
from ..states import DeliveryStatus
from ..transactions import TransactionalService
from .events import wake_senders
from .sender import AttemptResult

log = logging.getLogger(__name__)

# A claim's lease outlasts the attempt's own time cap by this much (or by the
# cap itself, when shorter): the time to write its result. Past it, the
# delivery is another sender's to send; once one claimed it, the late result
# changes nothing.
LEASE_MARGIN_SECONDS = 5.0
# Rows deleted per transaction by the pruner.
PRUNE_BATCH = 500
# The last_error of a delivery given up because the sender of its extra attempt
# (one past the last, sent since the last one's sender was lost) was lost too.
LOST_SENDER = (
    "its sender was lost during attempt {attempt} of {max_attempts} (killed or hung);"
    " not sent again: deliver it again from /admin/deliveries"
)
# The log line of an attempt that failed (or was lost): id, url, attempt, of, error, what next.
ATTEMPT_LINE = "webhook %s to %s, attempt %d of %d: %s; %s"


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a sender holds for one attempt: what to send, and its fencing token."""

    id: int
    delivery_id: str
    event: str
    url: str
    payload: str
    attempt: int
    max_attempts: int
    # Who holds it, as written in ``locked_by``: the sender's id and a tag of this
    # claim's own. With the attempt, the fencing token: deliver_again resets
    # attempts, so one sender may claim a delivery as attempt 1 twice, and the
    # earlier claim's result must not land on the later one.
    sender: str


def lease_seconds(timeout_seconds: float) -> float:
    """How long a claim holds a delivery whose attempt may take ``timeout_seconds``."""
    return timeout_seconds + min(LEASE_MARGIN_SECONDS, timeout_seconds)


class DeliveryService(TransactionalService):
    """Every change to a recorded webhook delivery, each method one transaction."""

    def __init__(self, session: Session | None = None) -> None:
        super().__init__(session)
        config = current_app.config
        self.lease = timedelta(seconds=lease_seconds(config["WEBHOOK_TIMEOUT_SECONDS"]))
        self.policy = RetryPolicy(config["RETRY_BASE_SECONDS"], config["RETRY_MAX_SECONDS"])

    # -- sending ----------------------------------------------------------------

    def seconds_until_due(self) -> float | None:
        """How long until a delivery is due for a sender (0 when one is); None when none waits.

        A read, so an idle sender's poll never takes SQLite's write lock.
        """
        clock = database_clock(self._dialect())  # no round trip of its own
        with self._read() as session:
            earliest, now = session.execute(
                select(func.min(WebhookDelivery.next_attempt_at), clock).where(
                    _pending(), _unleased(clock)
                )
            ).one()
        if earliest is None:
            return None
        return max((earliest - now).total_seconds(), 0.0)

    def claim_due(self, limit: int, sender: str) -> list[ClaimedDelivery]:
        """Claim up to ``limit`` due deliveries for ``sender``, oldest due first.

        Each claim counts an attempt and holds a lease of the attempt's time cap
        plus a margin; the deliveries come back with their frozen bodies.
        """
        if limit <= 0:
            return []
        holder = f"{sender}#{uuid.uuid4().hex[:16]}"
        with self._write() as session:
            now = self._now()
            given_up = session.execute(_give_up_lost(now, limit)).all()
            rows = session.execute(_claim(now, limit, holder, now + self.lease)).all()
        # Said once committed, as the queue's rescuer says its lost items.
        for row in given_up:
            _log_given_up(row)
        return sorted((_claimed(row, holder) for row in rows), key=lambda claimed: claimed.id)

    def record_attempt(self, claimed: ClaimedDelivery, result: AttemptResult) -> bool:
        """Record how an attempt went; False when the claim no longer held (nothing written).

        A 2xx delivers; a refused destination fails at once; anything else is
        tried again after the queue's backoff, until out of attempts.
        """
        with self._write() as session:
            now = self._now()
            values = self._attempt_values(claimed, result, now)
            written = session.execute(_held(claimed).values(**values)).rowcount
        return written == 1

    def _attempt_values(
        self, claimed: ClaimedDelivery, result: AttemptResult, now: datetime
    ) -> dict[str, Any]:
        values: dict[str, Any] = {
            "locked_by": None,
            "locked_until": None,
            "last_status_code": result.status_code,
            "last_error": result.error,
        }
        if result.delivered:
            return {**values, "status": DeliveryStatus.DELIVERED, "delivered_at": now}
        cause = Cause.PERMANENT_ERROR if result.permanent else Cause.ERROR
        decision = decide(cause, claimed.attempt, claimed.max_attempts, now, self.policy)
        if decision.retries:
            return {**values, "next_attempt_at": self._retry_at(decision.run_at, result, now)}
        return {**values, "status": DeliveryStatus.FAILED}

    def _retry_at(
        self, backoff_at: datetime | None, result: AttemptResult, now: datetime
    ) -> datetime | None:
        """The backoff's time, or later when the receiver asked for longer (Retry-After).

        Never later than the queue's longest backoff: a receiver may slow its
        deliveries down, not park them for days.
        """
        if result.retry_after is None or backoff_at is None:
            return backoff_at
        asked = timedelta(seconds=min(result.retry_after, self.policy.max_seconds))
        return max(backoff_at, now + asked)

    # -- admin actions ----------------------------------------------------------

    def deliver_again(self, delivery_id: str) -> WebhookDelivery:
        """A failed delivery back to pending, due now, its attempts reset, same delivery id.

        Raises ``LookupError`` when no delivery has that id and
        ``InvalidTransition`` when it has not failed.
        """
        with self._write() as session:
            delivery = session.scalar(
                select(WebhookDelivery)
                .where(WebhookDelivery.delivery_id == delivery_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            if delivery is None:
                raise LookupError(f"webhook delivery {delivery_id} not found")
            if delivery.status != DeliveryStatus.FAILED:
                raise InvalidTransition(f"a {delivery.status} delivery cannot be sent again")
            delivery.status = DeliveryStatus.PENDING
            delivery.attempts = 0
            delivery.next_attempt_at = self._now()
            delivery.locked_by = None
            delivery.locked_until = None
        wake_senders()
        session.refresh(delivery)
        return delivery

    # -- maintenance ------------------------------------------------------------

    def prune_finished(self, older_than_days: float) -> int:
        """Delete delivered and failed deliveries older than N days, in batches over
        ranges of ids; one sent again while its batch waits for it stays."""

        def finished(cutoff: datetime) -> tuple[ColumnElement[bool], ...]:
            return (WebhookDelivery.status.in_(_FINISHED), WebhookDelivery.created_at < cutoff)

        return self._delete_older_than(
            older_than_days,
            lambda cutoff: select(func.min(WebhookDelivery.id), func.max(WebhookDelivery.id)).where(
                *finished(cutoff)
            ),
            lambda cutoff, after_id, up_to_id: (
                delete(WebhookDelivery)
                .where(
                    WebhookDelivery.id > after_id, WebhookDelivery.id <= up_to_id, *finished(cutoff)
                )
                .returning(WebhookDelivery.id)
            ),
            PRUNE_BATCH,
        )


_FINISHED = (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)


# -- statements -------------------------------------------------------------------


def _pending() -> ColumnElement[bool]:
    # Written in the SQL, not bound: the partial due index only serves a query
    # whose WHERE visibly implies the index's.
    return WebhookDelivery.status == literal(DeliveryStatus.PENDING.value, literal_execute=True)


def _unleased(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """No sender holds it: never claimed, its attempt recorded, or its sender's lease ran out."""
    return or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now)


def _due(now: datetime, limit: int) -> Select:
    return (
        select(WebhookDelivery.id)
        .where(_pending(), WebhookDelivery.next_attempt_at <= now, _unleased(now))
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def _past_its_extra_attempt() -> ColumnElement[bool]:
    """Claimed once past its last attempt already: its lease ran out, so that sender was lost."""
    return WebhookDelivery.attempts > WebhookDelivery.max_attempts


def _give_up_lost(now: datetime, limit: int) -> Update:
    """Of the first ``limit`` due deliveries (those a claim would take), those whose extra
    attempt's sender was lost too end failed, saying so.

    Only the claim's first rows, walked on the due index as the claim walks them:
    a condition inside the locking subquery would walk every due delivery of a
    backlog at each claim to find none. One behind others is given up once those
    ahead are claimed; the claim never takes it meanwhile.
    """
    return (
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(_due(now, limit).scalar_subquery()))
        .where(_past_its_extra_attempt())
        .values(
            status=DeliveryStatus.FAILED,
            locked_by=None,
            locked_until=None,
            last_status_code=None,
            last_error=_lost_sender_error(),
        )
        .returning(
            WebhookDelivery.delivery_id,
            WebhookDelivery.url,
            WebhookDelivery.attempts,
            WebhookDelivery.max_attempts,
        )
        .execution_options(synchronize_session=False)
    )


def lost_sender_message(attempt: int, max_attempts: int) -> str:
    """The last_error of a delivery given up after the sender of ``attempt`` was lost."""
    return LOST_SENDER.format(attempt=attempt, max_attempts=max_attempts)


def _lost_sender_error() -> ColumnElement[str]:
    """``lost_sender_message`` of each row, written by the database (one statement for all)."""
    columns = {
        "attempt": WebhookDelivery.attempts,
        "max_attempts": WebhookDelivery.max_attempts,
    }
    parts: list[ColumnElement[str]] = []
    for text, field, _, _ in string.Formatter().parse(LOST_SENDER):
        parts.append(literal(text, String))
        if field is not None:
            parts.append(cast(columns[field], String))
    return functools.reduce(operator.add, parts)


def _log_given_up(row: Any) -> None:
    log.warning(
        ATTEMPT_LINE,
        row.delivery_id,
        row.url,
        row.attempts,
        row.max_attempts,
        "its sender was lost (killed or hung)",
        "it failed for good",
    )


def _claim(now: datetime, limit: int, holder: str, lease_until: datetime) -> Update:
    """The one claim statement: due deliveries leased to ``holder``, an attempt counted.

    Never one past its extra attempt (``_give_up_lost`` fails those first, in the
    same transaction; this keeps the bound whatever another sender does meanwhile).
    """
    return (
        update(WebhookDelivery)
        # No condition of its own (as the queue's claim): the locking subquery decides.
        .where(
            WebhookDelivery.id.in_(
                _due(now, limit).where(~_past_its_extra_attempt()).scalar_subquery()
            )
        )
        .values(
            locked_by=holder,
            locked_until=lease_until,
            attempts=WebhookDelivery.attempts + 1,
        )
        .returning(
            WebhookDelivery.id,
            WebhookDelivery.delivery_id,
            WebhookDelivery.event,
            WebhookDelivery.url,
            WebhookDelivery.payload,
            WebhookDelivery.attempts,
            WebhookDelivery.max_attempts,
        )
        .execution_options(synchronize_session=False)
    )


def _claimed(row: Sequence[Any], holder: str) -> ClaimedDelivery:
    return ClaimedDelivery(*row, sender=holder)


def _held(claimed: ClaimedDelivery) -> Update:
    """An update of the delivery while ``claimed`` still holds it (same claim, same attempt)."""
    return (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claimed.id,
            WebhookDelivery.locked_by == claimed.sender,
            WebhookDelivery.attempts == claimed.attempt,
            _pending(),
        )
        .execution_options(synchronize_session=False)
    )
