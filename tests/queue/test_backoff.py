import random

import pytest

from docqueue_app.queue.backoff import retry_delay


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
