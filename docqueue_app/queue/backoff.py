"""Retry timing as a pure function of the attempt count: easy to reason about and test."""

from __future__ import annotations

import random

JITTER_FRACTION = 0.25


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
