"""Pure functions for association: cost matrices, gating and optimal assignment."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

# Cost given to gated (forbidden) pairs; any finite value above every admissible cost works.
GATED = 1e5


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
