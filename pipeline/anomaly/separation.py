"""How well scores separate defects from good: ROC AUC and average precision, as scikit-learn defines them.

``anomaly fit`` ranks recipes with these at run time, where the evaluation extra (scikit-learn) is not installed:
the AUC comes from SciPy's Mann-Whitney U statistic (ties count one half), the average precision is scikit-learn's
step-wise sum over distinct thresholds. ``tests/pipeline/anomaly/test_separation.py`` checks both against
scikit-learn.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu

__all__ = ["auroc", "average_precision"]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (True = defect); ``nan`` without both classes."""
    y = np.asarray(labels, bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    u = mannwhitneyu(pos, neg, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (len(pos) * len(neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ``scores`` for ``labels``: the sum over distinct thresholds (highest first) of the
    precision there times the recall gained; ``nan`` without a positive."""
    y = np.asarray(labels, bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
