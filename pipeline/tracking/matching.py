"""Pure functions for association: cost matrices, gating and optimal assignment."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

# Cost given to gated (forbidden) pairs; any finite value above every admissible cost works.
GATED = 1e5
# Chi-square 0.95 quantile with 4 degrees of freedom: the Mahalanobis gate on (cx, cy, w, h).
CHI2_95_4DOF = 9.4877
APPEARANCE_MODES = ("ema", "gallery")


def iou_matrix(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(M, 4)`` and ``(N, 4)`` xyxy boxes -> ``(M, N)`` float32 in [0, 1]."""
    a = np.asarray(a_xyxy, np.float32).reshape(-1, 4)
    b = np.asarray(b_xyxy, np.float32).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return (inter / np.maximum(union, 1e-9)).astype(np.float32)


def cosine_distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - cos`` between rows of ``(M, D)`` and ``(N, D)`` -> ``(M, N)`` in [0, 2]. Rows need not be unit."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - an @ bn.T, 0.0, 2.0).astype(np.float32)


def fused_cost(cos_dist: np.ndarray, iou: np.ndarray, appearance_weight: float,
               max_cosine_distance: float, min_iou: float) -> np.ndarray:
    """``w * cos_dist + (1 - w) * (1 - iou)``, with pairs outside either gate set to :data:`GATED`.

    Both gates must pass: the boxes overlap by at least ``min_iou`` (motion) and the crops look alike
    (``cos_dist <= max_cosine_distance``), so two parts that look the same are still told apart by position.
    """
    if cos_dist.shape != iou.shape:
        raise ValueError(f"cost shapes differ: cosine {cos_dist.shape} vs iou {iou.shape}")
    cost = appearance_weight * cos_dist + (1.0 - appearance_weight) * (1.0 - iou)
    gated = (iou < min_iou) | (cos_dist > max_cosine_distance)
    return np.where(gated, GATED, cost).astype(np.float32)


def linear_assignment(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment (Hungarian, scipy), keeping pairs with cost <= ``max_cost``.

    Returns:
        matches ``(K, 2)`` int64 rows (row, col); unmatched rows; unmatched cols.
    """
    m, n = cost.shape
    if m == 0 or n == 0:
        return np.zeros((0, 2), np.int64), np.arange(m), np.arange(n)
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] <= max_cost
    matches = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
    unmatched_rows = np.setdiff1d(np.arange(m), matches[:, 0])
    unmatched_cols = np.setdiff1d(np.arange(n), matches[:, 1])
    return matches, unmatched_rows, unmatched_cols


def iou_cost(tracks_xyxy: np.ndarray, dets_xyxy: np.ndarray) -> np.ndarray:
    """``1 - IoU`` of ``(M, 4)`` track and ``(N, 4)`` detection xyxy boxes -> ``(M, N)`` float32 in [0, 1]."""
    return (1.0 - iou_matrix(tracks_xyxy, dets_xyxy)).astype(np.float32)


def has_feature(features: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: rows of ``(N, D)`` that carry an embedding (an all-zero row means "not embedded")."""
    f = np.asarray(features, np.float32)
    return np.linalg.norm(f, axis=1) > 1e-6 if len(f) else np.zeros(0, bool)


def gallery_cosine_distance(galleries: Sequence[np.ndarray], features: np.ndarray) -> np.ndarray:
    """Per track, the smallest cosine distance between any of its stored features and each detection's.

    Args:
        galleries: ``M`` arrays ``(K_i, D)``, each track's recent features (``K_i >= 1``; one row for an
            exponential-moving-average feature).
        features: ``(N, D)`` detection embeddings.

    Returns:
        ``(M, N)`` float32 in [0, 2] (deep_sort's nearest-neighbour metric).
    """
    feats = np.asarray(features, np.float32)
    if len(galleries) == 0 or len(feats) == 0:
        return np.zeros((len(galleries), len(feats)), np.float32)
    sizes = [len(g) for g in galleries]
    if min(sizes) < 1:
        raise ValueError("gallery_cosine_distance: every track needs at least one feature")
    dist = cosine_distance_matrix(np.concatenate(galleries, axis=0), feats)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.minimum.reduceat(dist, starts, axis=0).astype(np.float32)


def appearance_cost(galleries: Sequence[np.ndarray], ema: np.ndarray, features: np.ndarray,
                    mode: str = "ema") -> np.ndarray:
    """Appearance distance of ``M`` tracks to ``N`` detections, ``(M, N)`` float32 in [0, 2].

    Args:
        galleries: ``M`` arrays ``(K_i, D)`` of each track's last ``K`` features (used by ``mode="gallery"`` only;
            may be empty for ``"ema"``).
        ema: ``(M, D)`` each track's exponential-moving-average feature (used by ``mode="ema"``).
        features: ``(N, D)`` detection embeddings.
        mode: ``"ema"`` (BoT-SORT / StrongSORT: distance to the smoothed feature) or ``"gallery"``
            (deep_sort: the smallest distance to any of the last ``K`` features).
    """
    if mode == "ema":
        return cosine_distance_matrix(np.asarray(ema, np.float32).reshape(len(ema), -1), features)
    if mode == "gallery":
        return gallery_cosine_distance(galleries, features)
    raise ValueError(f"appearance mode must be one of {', '.join(APPEARANCE_MODES)}, got {mode!r}")


def gate_mahalanobis(cost: np.ndarray, maha_sq: np.ndarray, threshold: float = CHI2_95_4DOF) -> np.ndarray:
    """``cost`` with pairs whose squared Mahalanobis distance exceeds ``threshold`` set to :data:`GATED`."""
    if cost.shape != maha_sq.shape:
        raise ValueError(f"cost shapes differ: cost {cost.shape} vs mahalanobis {maha_sq.shape}")
    return np.where(maha_sq > threshold, GATED, cost).astype(np.float32)


def gate_classes(cost: np.ndarray, track_classes: np.ndarray, det_classes: np.ndarray) -> np.ndarray:
    """``cost`` with pairs of different class ids set to :data:`GATED` (tracks never change class)."""
    same = np.asarray(track_classes).reshape(-1, 1) == np.asarray(det_classes).reshape(1, -1)
    if same.shape != cost.shape:
        raise ValueError(f"cost shape {cost.shape} does not match {same.shape[0]} tracks x {same.shape[1]} detections")
    return np.where(same, cost, GATED).astype(np.float32)


def _known(has_appearance: np.ndarray) -> np.ndarray:
    known = np.asarray(has_appearance, bool)
    return known.reshape(1, -1) if known.ndim == 1 else known


def fuse_weighted(app_cost: np.ndarray, iou_dist: np.ndarray, appearance_weight: float,
                  max_cosine_distance: float, max_iou_distance: float | np.ndarray,
                  has_appearance: np.ndarray | None = None) -> np.ndarray:
    """``w * appearance + (1 - w) * (1 - IoU)``, pairs outside either gate set to :data:`GATED`.

    Args:
        app_cost: ``(M, N)`` appearance distances.
        iou_dist: ``(M, N)`` ``1 - IoU``; pairs with ``iou_dist > max_iou_distance`` are gated (set it to 1
            to allow pairs that do not overlap, e.g. when a Mahalanobis gate bounds the motion instead).
        appearance_weight: ``w`` in [0, 1].
        max_cosine_distance: appearance gate.
        max_iou_distance: a float, or ``(M, 1)`` per track.
        has_appearance: ``(N,)`` or ``(M, N)`` bool, False where a detection (or track) has no embedding:
            those pairs cost ``1 - IoU`` alone and the appearance gate does not apply.
    """
    if app_cost.shape != iou_dist.shape:
        raise ValueError(f"cost shapes differ: appearance {app_cost.shape} vs iou {iou_dist.shape}")
    cost = appearance_weight * app_cost + (1.0 - appearance_weight) * iou_dist
    gated = (iou_dist > max_iou_distance) | (app_cost > max_cosine_distance)
    if has_appearance is not None:
        known = _known(has_appearance)
        cost = np.where(known, cost, iou_dist)
        gated = (iou_dist > max_iou_distance) | (known & (app_cost > max_cosine_distance))
    return np.where(gated, GATED, cost).astype(np.float32)


def fuse_min(app_cost: np.ndarray, iou_dist: np.ndarray, max_cosine_distance: float, max_iou_distance: float,
             has_appearance: np.ndarray | None = None) -> np.ndarray:
    """BoT-SORT's fusion: ``min(1 - IoU, appearance / 2)``, where appearance only counts for pairs that look
    alike (``app_cost <= max_cosine_distance``) and are near (``iou_dist <= max_iou_distance``); pairs
    neither near nor alike keep ``1 - IoU``."""
    if app_cost.shape != iou_dist.shape:
        raise ValueError(f"cost shapes differ: appearance {app_cost.shape} vs iou {iou_dist.shape}")
    usable = (app_cost <= max_cosine_distance) & (iou_dist <= max_iou_distance)
    if has_appearance is not None:
        usable &= _known(has_appearance)
    return np.where(usable, np.minimum(iou_dist, app_cost / 2.0), iou_dist).astype(np.float32)


def distinctive(cost: np.ndarray, margin: float) -> np.ndarray:
    """``(M, N)`` bool: pairs whose cost beats every rival by at least ``margin`` (a ratio test, as in Lowe's
    SIFT matching, with a difference instead of a ratio).

    ``cost[i, j]`` is distinctive when ``cost[i, j] + margin`` is at most both the cheapest other row for
    column ``j`` and the cheapest other column for row ``i``. With one row (column), there is no rival in that
    direction. Used to re-identify by appearance alone only when the match is unambiguous.
    """
    c = np.asarray(cost, np.float64)
    m, n = c.shape
    if m == 0 or n == 0:
        return np.zeros((m, n), bool)

    def rival(a: np.ndarray) -> np.ndarray:  # per element: the smallest value in its column, itself excluded
        if len(a) < 2:
            return np.full(a.shape, np.inf)
        order = np.argsort(a, axis=0)
        best = np.take_along_axis(a, order[:1], axis=0)
        second = np.take_along_axis(a, order[1:2], axis=0)
        is_best = np.arange(len(a))[:, None] == order[:1]
        return np.where(is_best, second, best)

    return (c + margin <= rival(c)) & (c + margin <= rival(c.T).T)


def gate_height_ratio(cost: np.ndarray, track_heights: np.ndarray, det_heights: np.ndarray, max_ratio: float,
                      rows: np.ndarray | None = None) -> np.ndarray:
    """``cost`` with pairs whose box heights differ by more than a factor ``max_ratio`` set to :data:`GATED`.

    Args:
        cost: ``(M, N)`` track x detection cost.
        track_heights: ``(M,)`` each track's reference height (e.g. its last matched box's).
        det_heights: ``(N,)`` the detections' heights.
        max_ratio: the largest allowed ``max(a, b) / min(a, b)``, ``>= 1``; 0 turns the gate off.
        rows: ``(M,)`` bool, the tracks the gate applies to (default: all).
    """
    if max_ratio == 0:
        return cost
    if max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1 (or 0 = off), got {max_ratio}")
    th = np.maximum(np.asarray(track_heights, np.float64).reshape(-1, 1), 1e-9)
    dh = np.maximum(np.asarray(det_heights, np.float64).reshape(1, -1), 1e-9)
    if (len(th), len(dh[0])) != cost.shape:
        raise ValueError(f"cost shape {cost.shape} does not match {len(th)} tracks x {dh.shape[1]} detections")
    far = np.abs(np.log(dh / th)) > np.log(max_ratio)
    if rows is not None:
        far &= np.asarray(rows, bool).reshape(-1, 1)
    return np.where(far, GATED, cost).astype(np.float32)


def duplicate_tracks(seen_xyxy: np.ndarray, lost_xyxy: np.ndarray, seen_age: np.ndarray, lost_age: np.ndarray,
                     min_iou: float, same_class: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ByteTrack's duplicate removal: a track seen now and a lost one whose predicted box overlaps it by more than
    ``min_iou`` follow one object; the younger of the two goes (the seen one on a tie).

    Args:
        seen_xyxy, lost_xyxy: ``(M, 4)`` and ``(N, 4)`` boxes of the tracks seen in this frame and of the lost ones.
        seen_age, lost_age: ``(M,)`` and ``(N,)`` time since each track started.
        min_iou: overlap above which two tracks are one; 0 < ``min_iou`` <= 1.
        same_class: ``(M, N)`` bool, pairs that may be duplicates (default: all).

    Returns:
        ``(M,)`` and ``(N,)`` bool: the seen and the lost tracks to remove.
    """
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    iou = iou_matrix(seen_xyxy, lost_xyxy)
    dup = iou > min_iou
    if same_class is not None:
        dup &= np.asarray(same_class, bool)
    rows, cols = np.nonzero(dup)
    older_seen = np.asarray(seen_age, np.float64)[rows] > np.asarray(lost_age, np.float64)[cols]
    drop_seen = np.zeros(len(iou), bool)
    drop_lost = np.zeros(iou.shape[1], bool)
    drop_lost[cols[older_seen]] = True
    drop_seen[rows[~older_seen]] = True
    return drop_seen, drop_lost
