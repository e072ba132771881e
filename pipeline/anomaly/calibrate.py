"""Thresholds from good samples only (pure functions)."""

from __future__ import annotations

import math

import numpy as np


def split_by_group(groups: np.ndarray, holdout_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (bank, holdout) so that no group (track or image) is on both sides.

    Crops of one tracked part are near-duplicates; calibrating on crops whose siblings sit in the bank
    would give scores that are too low and a threshold that raises false alarms.
    """
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError(f"need good samples from at least 2 groups (parts or images) to calibrate, got {len(uniq)}")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(uniq)
    n_hold = min(len(uniq) - 1, max(1, round(holdout_fraction * len(uniq))))
    held = np.isin(groups, shuffled[:n_hold])
    return np.flatnonzero(~held), np.flatnonzero(held)


def threshold_for_false_alarm_rate(good_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The ``1 - false_alarm_rate`` quantile of held-out good scores (higher quantile method: conservative)."""
    s = np.asarray(good_scores, np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("no held-out good scores to calibrate on")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    return float(np.quantile(s, 1.0 - false_alarm_rate, method="higher"))


def false_alarm_upper_bound(n_good: int, exceed: int = 0, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on the false-alarm rate after seeing ``exceed`` of ``n_good``.

    With 0 exceedances this is ``1 - (1 - confidence)^(1/n)`` (the "rule of three" for 95%: ~3/n).
    """
    if n_good <= 0:
        return 1.0
    if exceed == 0:
        return 1.0 - (1.0 - confidence) ** (1.0 / n_good)
    from scipy.stats import beta

    return float(beta.ppf(confidence, exceed + 1, n_good - exceed)) if exceed < n_good else 1.0


def aggregate(scores: list[float], how: str) -> float:
    if not scores:
        return math.nan
    if how == "median":
        return float(np.median(scores))
    if how == "mean":
        return float(np.mean(scores))
    if how == "max":
        return float(np.max(scores))
    raise ValueError(f"unknown aggregate {how!r}; valid: 'median', 'mean', 'max'")
