"""Thresholds from good samples only (pure functions)."""

from __future__ import annotations

import math

import numpy as np


def group_folds(groups: np.ndarray, n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Split sample indices into ``n_folds`` folds so that no group (tracked part or image) is in two folds.

    Crops of one tracked part are near-duplicates; scoring a crop against a bank that holds its siblings
    gives scores that are too low and a threshold that raises false alarms. Every good sample is scored
    once, out of fold, against a bank of the other groups.
    """
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError(f"need good samples from at least 2 groups (parts or images) to calibrate, got {len(uniq)}")
    shuffled = np.random.default_rng(seed).permutation(uniq)
    chunks = np.array_split(shuffled, min(n_folds, len(uniq)))
    return [np.flatnonzero(np.isin(groups, chunk)) for chunk in chunks]


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
