"""Retry delays: exponential backoff with jitter, as a pure function."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    The ceiling doubles with every attempt, ``min(max_s, initial_s * 2 ** (attempt - 1))``, and the delay is
    drawn uniformly from the upper half of it ("equal jitter"): never shorter than half the ceiling, so a
    receiver that is down is not hammered, and spread out, so many senders that lost the same receiver do
    not all retry at the same instant when it comes back.

    Args:
        attempt: failed attempts so far, >= 1.
        initial_s: ceiling of the first delay, > 0.
        max_s: largest ceiling, >= initial_s.
        rng: source of the jitter; a fresh unseeded ``random.Random`` when None.

    Returns:
        A delay in seconds, in ``[ceiling / 2, ceiling]``.

    Raises:
        ValueError: ``attempt < 1``, ``initial_s <= 0`` or ``max_s < initial_s``.
    """
    if attempt < 1:
        raise ValueError(f"backoff_delay: attempt must be >= 1, got {attempt}")
    if not initial_s > 0:
        raise ValueError(f"backoff_delay: initial_s must be > 0, got {initial_s}")
    if max_s < initial_s:
        raise ValueError(f"backoff_delay: max_s must be >= initial_s ({initial_s}), got {max_s}")
    # 2 ** 60 s is far beyond any max_s: cap the exponent so huge attempt counts do not overflow.
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt - 1, 60))
    return ceiling / 2 + (rng or random.Random()).uniform(0.0, ceiling / 2)
