"""Greedy k-center coreset selection (Sener & Savarese 2018; the subsampling PatchCore uses).

Picks points one at a time, each the farthest from those already picked, so every original point lies
within the returned ``coverage`` radius of some kept point: memory shrinks while the bank still covers
every kind of good patch it has seen.
"""

from __future__ import annotations

import numpy as np

CHUNK_ROWS = 20_000


def greedy_coreset(x: np.ndarray, m: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Indices of ``m`` rows of ``x`` ``(N, C)`` chosen by greedy k-center, and the coverage radius.

    Returns:
        (indices ``(m,)`` int64 in pick order, max over all rows of the L2 distance to the nearest pick).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if m >= n:
        return np.arange(n, dtype=np.int64), 0.0
    if m < 1:
        raise ValueError(f"coreset size must be >= 1, got {m}")
    sq_norms = np.einsum("ij,ij->i", x, x)
    picks = np.empty(m, np.int64)
    picks[0] = np.random.default_rng(seed).integers(n)
    # Squared distances via |a|^2 + |b|^2 - 2ab: one matrix-vector product per pick.
    min_d = np.maximum(sq_norms + sq_norms[picks[0]] - 2.0 * (x @ x[picks[0]]), 0.0)
    for i in range(1, m):
        picks[i] = int(np.argmax(min_d))
        d = np.maximum(sq_norms + sq_norms[picks[i]] - 2.0 * (x @ x[picks[i]]), 0.0)
        np.minimum(min_d, d, out=min_d)
    return picks, float(np.sqrt(min_d.max()))


def chunked_greedy_coreset(x: np.ndarray, fraction: float, seed: int = 0, chunk_rows: int = CHUNK_ROWS
                           ) -> tuple[np.ndarray, float]:
    """Greedy k-center over random chunks of ``chunk_rows`` rows, ``fraction`` of each chunk kept.

    Exact greedy k-center costs ``O(N * m)`` distance evaluations, hours for the million patches of a few
    hundred images on a CPU. Per chunk it costs ``chunk_rows`` times less, and the guarantee keeps its form:
    every row still lies within the returned coverage radius of a kept row (of its own chunk).

    Returns:
        (sorted indices into ``x``, coverage radius over all rows).
    """
    n = len(x)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"coreset fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return np.arange(n, dtype=np.int64), 0.0
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if n > chunk_rows else np.arange(n)
    picks: list[np.ndarray] = []
    coverage = 0.0
    for start in range(0, n, chunk_rows):
        idx = order[start:start + chunk_rows]
        size = max(1, int(fraction * len(idx) + 1e-9))
        chosen, radius = greedy_coreset(x[idx], size, seed=int(rng.integers(1 << 31)))
        picks.append(idx[chosen])
        coverage = max(coverage, radius)
    return np.sort(np.concatenate(picks)), coverage
