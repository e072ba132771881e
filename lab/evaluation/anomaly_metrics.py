"""Anomaly-detection figures (pure functions): image and pixel AUROC, pixel AP, AUPRO, rates with intervals.

AUROC and average precision come from scikit-learn (reference implementations). AUPRO follows Bergmann et
al. (MVTec AD, IJCV 2021): for each threshold, the per-region overlap (the share of each connected ground-truth
defect region above the threshold, averaged over regions) against the false-positive rate on good pixels,
integrated up to a false-positive rate of 0.3 and divided by 0.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [round(self.low, 4), round(self.high, 4)]


def wilson(successes: int, n: int, z: float = 1.96) -> Interval:
    """A proportion with its Wilson score interval (95% by default); ``n = 0`` gives ``nan`` in [0, 1]."""
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def auroc_with_interval(labels: np.ndarray, scores: np.ndarray, resamples: int = 2000, seed: int = 0) -> Interval:
    """Image AUROC and its 95% stratified-bootstrap percentile interval (good and defective images resampled
    separately, so every resample has both)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    if y.all() or not y.any():
        raise ValueError("AUROC needs both good and defective samples")
    value = float(roc_auc_score(y, s))
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    # AUROC = P(score_pos > score_neg) + 0.5 P(equal): the Mann-Whitney form, vectorised per resample.
    stats = np.empty(resamples)
    for i in range(resamples):
        p = pos[rng.integers(len(pos), size=len(pos))]
        n = neg[rng.integers(len(neg), size=len(neg))]
        stats[i] = ((p[:, None] > n[None, :]).mean() + 0.5 * (p[:, None] == n[None, :]).mean())
    low, high = np.percentile(stats, [2.5, 97.5])
    return Interval(value, float(low), float(high))


def pixel_auroc_ap(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """Pixel AUROC and pixel average precision over every pixel of every image ``(N, H, W)``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(masks).astype(bool).ravel()
    s = np.asarray(maps, np.float32).ravel()
    if not y.any():
        raise ValueError("pixel metrics need at least one defect pixel in the masks")
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3, steps: int = 1000) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    Args:
        masks: ``(N, H, W)`` bool ground truth; every connected component (8-connectivity) is one region.
        maps: ``(N, H, W)`` anomaly maps.
    """
    m = np.asarray(masks).astype(bool)
    a = np.asarray(maps, np.float32)
    if m.shape != a.shape:
        raise ValueError(f"masks {m.shape} and maps {a.shape} differ in shape")
    regions: list[np.ndarray] = []
    for mask, amap in zip(m, a, strict=True):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions.extend(np.sort(amap[labels == r]) for r in range(1, count))
    if not regions:
        raise ValueError("AUPRO needs at least one defect region in the masks")
    negatives = np.sort(a[~m])
    # Thresholds that put the false-positive rate on an even grid from 0 to max_fpr.
    fprs = np.linspace(0.0, max_fpr, steps + 1)
    idx = np.clip(np.ceil((1.0 - fprs) * len(negatives)).astype(np.int64) - 1, 0, len(negatives) - 1)
    thresholds = negatives[idx]
    true_fpr = 1.0 - np.searchsorted(negatives, thresholds, side="right") / len(negatives)
    pro = np.zeros(len(thresholds))
    for r in regions:
        pro += 1.0 - np.searchsorted(r, thresholds, side="right") / len(r)
    pro /= len(regions)
    order = np.argsort(true_fpr)
    x, y = np.append(true_fpr[order], max_fpr), np.append(pro[order], pro[order][-1])
    keep = x <= max_fpr
    trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009 - numpy < 2 has only trapz
    return float(trapezoid(y[keep], x[keep]) / max_fpr)
