"""The retry decision and its backoff: pure functions, no database."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from docqueue_app.queue.retry import Cause, RetryPolicy, decide, retry_delay
from docqueue_app.states import AttemptOutcome, ItemStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(base_seconds=10, max_seconds=3600)


@pytest.mark.parametrize(("attempts", "base"), [(1, 10), (2, 20), (3, 40), (4, 80)])
def test_delay_doubles_with_up_to_a_quarter_of_jitter(attempts, base):
    delays = [retry_delay(attempts, 10, 3600, random.Random(seed)) for seed in range(200)]
    assert min(delays) >= base
    assert max(delays) <= base * 1.25
    assert max(delays) - min(delays) > base * 0.1  # jitter actually spreads retries


def test_delay_is_capped_before_jitter():
    delays = [retry_delay(30, 10, 3600, random.Random(seed)) for seed in range(100)]
    assert min(delays) >= 3600 and max(delays) <= 4500


def test_huge_attempt_counts_do_not_overflow():
    assert retry_delay(10_000, 10, 60, random.Random(1)) <= 75


def test_an_error_with_attempts_left_retries_after_the_backoff():
    decision = decide(Cause.ERROR, 2, 5, NOW, POLICY, random.Random(1))
    assert decision.status == ItemStatus.PENDING
    assert NOW + timedelta(seconds=20) <= decision.run_at <= NOW + timedelta(seconds=25)
    assert decision.attempt_outcome == AttemptOutcome.RETRY


@pytest.mark.parametrize(("cause", "attempt"), [(Cause.ERROR, 5), (Cause.PERMANENT_ERROR, 1)])
def test_the_last_attempt_or_a_permanent_error_fails_for_good(cause, attempt):
    decision = decide(cause, attempt, 5, NOW, POLICY)
    assert (decision.status, decision.run_at) == (ItemStatus.FAILED, None)
    assert decision.attempt_outcome == AttemptOutcome.FAILED


def test_a_lost_worker_counts_the_attempt_and_retries_at_once():
    decision = decide(Cause.LEASE_EXPIRED, 2, 5, NOW, POLICY)
    assert (decision.status, decision.run_at) == (ItemStatus.PENDING, NOW)
    assert decision.attempt_outcome == AttemptOutcome.LOST and decision.counts_attempt


def test_a_lost_worker_on_the_last_attempt_fails_the_item():
    decision = decide(Cause.LEASE_EXPIRED, 5, 5, NOW, POLICY)
    assert (decision.status, decision.attempt_outcome) == (ItemStatus.FAILED, AttemptOutcome.LOST)


def test_a_release_does_not_count_the_attempt_even_the_last():
    decision = decide(Cause.RELEASED, 5, 5, NOW, POLICY)
    assert (decision.status, decision.run_at) == (ItemStatus.PENDING, None)  # its own
    assert not decision.counts_attempt and decision.attempt_outcome is None
