"""backoff_delay: the ceiling doubles per attempt up to the cap; the delay lies in its upper half."""

from __future__ import annotations

import random

import pytest

from pipeline.alerts.backoff import backoff_delay


@pytest.mark.parametrize(
    ("attempt", "initial", "maximum", "ceiling"),
    [
        (1, 0.5, 30.0, 0.5),
        (2, 0.5, 30.0, 1.0),
        (3, 0.5, 30.0, 2.0),
        (7, 0.5, 30.0, 30.0),  # 0.5 * 2**6 = 32 is capped
        (10_000, 0.5, 30.0, 30.0),  # no overflow for huge attempt counts
        (4, 1.0, 1.0, 1.0),
    ],
)
def test_delay_lies_in_the_upper_half_of_the_ceiling(attempt: int, initial: float, maximum: float,
                                                     ceiling: float) -> None:
    rng = random.Random(0)
    delays = [backoff_delay(attempt, initial, maximum, rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant


def test_same_seed_same_delays() -> None:
    a = [backoff_delay(n, 0.1, 5.0, random.Random(7)) for n in range(1, 8)]
    b = [backoff_delay(n, 0.1, 5.0, random.Random(7)) for n in range(1, 8)]
    assert a == b


@pytest.mark.parametrize(
    ("attempt", "initial", "maximum", "message"),
    [
        (0, 0.5, 30.0, "attempt must be >= 1"),
        (1, 0.0, 30.0, "initial_s must be > 0"),
        (1, 2.0, 1.0, "max_s must be >= initial_s"),
    ],
)
def test_bad_arguments_are_named(attempt: int, initial: float, maximum: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backoff_delay(attempt, initial, maximum)
