"""What becomes of an item whose attempt ended without success: one pure decision.

Failure, the rescue of an expired lease and the release of unstarted items all
ask ``decide`` and write what it says, so "out of attempts" is decided here only
(as procrastinate's ``retry.py`` and River's retry policy do).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..states import AttemptOutcome, ItemStatus

JITTER_FRACTION = 0.25


class Cause(enum.Enum):
    """Why an attempt ended without a result."""

    ERROR = "error"  # the processor failed; retrying may help
    PERMANENT_ERROR = "permanent"  # retrying can never help
    LEASE_EXPIRED = "lease expired"  # the worker died or hung: the attempt counts
    RELEASED = "released"  # the worker stopped before starting it: the attempt does not count


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    max_seconds: float


@dataclass(frozen=True)
class Decision:
    """The item's next status, when it runs again, and how its attempt is recorded."""

    status: ItemStatus  # PENDING (tried again) or FAILED (for good)
    run_at: datetime | None  # when PENDING: None keeps the item's own, and its place
    attempt_outcome: AttemptOutcome | None  # None: the attempt is forgotten, not counted
    counts_attempt: bool = True

    @property
    def retries(self) -> bool:
        return self.status == ItemStatus.PENDING


def decide(
    cause: Cause,
    attempt: int,
    max_attempts: int,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Decision:
    """The fate of attempt number ``attempt`` (1-based) of an item allowed ``max_attempts``."""
    if cause is Cause.RELEASED:
        # Never started: it goes back where it was, ahead of what was queued since.
        return Decision(ItemStatus.PENDING, None, None, counts_attempt=False)
    if cause is Cause.LEASE_EXPIRED:
        if attempt >= max_attempts:
            return Decision(ItemStatus.FAILED, None, AttemptOutcome.LOST)
        # The lease already made it wait; a lost worker is no reason to wait more.
        return Decision(ItemStatus.PENDING, now, AttemptOutcome.LOST)
    if cause is Cause.PERMANENT_ERROR or attempt >= max_attempts:
        return Decision(ItemStatus.FAILED, None, AttemptOutcome.FAILED)
    delay = retry_delay(attempt, policy.base_seconds, policy.max_seconds, rng)
    return Decision(ItemStatus.PENDING, now + timedelta(seconds=delay), AttemptOutcome.RETRY)


def lost_worker_message(attempt: int, max_attempts: int) -> str:
    return f"worker lost: its lease expired during attempt {attempt} of {max_attempts}"


def retry_delay(
    attempts: int,
    base_seconds: float,
    max_seconds: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the next try after ``attempts`` failed ones.

    ``min(base * 2**(attempts-1), max)`` plus a random jitter of up to 25% of that
    capped delay, so items that failed together do not all come back together.
    """
    exponent = min(max(attempts - 1, 0), 62)  # past 2**62 every delay is capped anyway
    capped = min(base_seconds * 2.0**exponent, max_seconds)
    return capped + (rng or random).uniform(0, JITTER_FRACTION * capped)
