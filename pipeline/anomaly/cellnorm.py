"""Per-cell normalisation of patch scores (pure functions).

On a production line parts are seen in about the same pose, so each cell of the encoder's feature grid looks
at about the same place on the part, and good parts do not score alike everywhere: edges, highlights and
the background beside the part are far from their nearest good patch on every good part, plain surfaces are
close. A single threshold on the raw maximum is then set by the cells that are always high, and a defect
on a quiet cell must outscore them to be seen. Normalising each cell by how good parts score there (its
mean and spread over good samples scored out of fold) puts every cell on one scale: a patch's score
becomes how unusual it is *for that place*.

The spread is floored at the median spread over all cells, so that a cell where good parts happen to agree
closely cannot turn small differences into large scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CellNorm", "fit_cell_norm", "leave_one_out"]

# A spread below this is treated as this (every cell alike and no spread at all: scores in raw units).
_MIN_SCALE = 1e-6


@dataclass(frozen=True)
class CellNorm:
    """``(scores - mean) / scale`` per grid cell; ``mean`` and ``scale`` are ``(P,)`` float32."""

    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        if self.mean.shape != self.scale.shape or self.mean.ndim != 1 or not len(self.mean):
            raise ValueError(f"mean and scale must be (P,) arrays of one shape, got {self.mean.shape} and "
                             f"{self.scale.shape}")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.scale)) and np.all(self.scale > 0)):
            raise ValueError("cell normalisation needs finite means and finite positive scales")

    @property
    def cells(self) -> int:
        return len(self.mean)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """``(N, P)`` raw patch scores -> ``(N, P)`` float32 normalised scores."""
        s = np.asarray(scores, np.float32)
        if s.ndim != 2 or s.shape[1] != self.cells:
            raise ValueError(f"patch scores are {s.shape}; this normalisation has {self.cells} cells per crop")
        return ((s - self.mean) / self.scale).astype(np.float32)


def _floor(spread: np.ndarray) -> float:
    return max(float(np.median(spread)), _MIN_SCALE)


def fit_cell_norm(scores: np.ndarray) -> CellNorm:
    """Per-cell mean and floored standard deviation of ``(N, P)`` good patch scores (scored out of fold)."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or len(s) < 2:
        raise ValueError(f"need (N, P) scores of at least 2 good samples, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("good patch scores must be finite")
    spread = s.std(axis=0)
    return CellNorm(s.mean(axis=0).astype(np.float32),
                    np.maximum(spread, _floor(spread)).astype(np.float32))


def leave_one_out(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """``(N, P)`` good patch scores, each row normalised by the statistics of the rows of *other* groups.

    This is how a new good part would score, so a threshold set on these rows is not biased low: a row
    included in its own statistics, or crops of the same part (a video gives many per part, and they are
    alike), pull the mean and the spread towards it. ``groups``: ``(N,)`` the part or image of each row;
    None: every row its own group. The floor is the one :func:`fit_cell_norm` uses on all rows. Every group
    must leave at least 2 rows outside it."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 2:
        raise ValueError(f"need (N, P) scores, got shape {s.shape}")
    g = np.arange(len(s)) if groups is None else np.asarray(groups)
    if g.shape != (len(s),):
        raise ValueError(f"groups must be (N,) = ({len(s)},), got {g.shape}")
    labels, inverse, sizes = np.unique(g, return_inverse=True, return_counts=True)
    if len(labels) < 2 or len(s) - sizes.max() < 2:
        raise ValueError(f"need at least 2 good samples outside every group ({len(s)} samples in {len(labels)} "
                         f"groups, the largest of {int(sizes.max()) if len(sizes) else 0})")
    group_sum = np.zeros((len(labels), s.shape[1]))
    group_sq = np.zeros((len(labels), s.shape[1]))
    np.add.at(group_sum, inverse, s)
    np.add.at(group_sq, inverse, s * s)
    rest = (len(s) - sizes)[inverse][:, None].astype(np.float64)
    mean = (s.sum(axis=0) - group_sum[inverse]) / rest
    var = np.maximum(((s * s).sum(axis=0) - group_sq[inverse]) / rest - mean * mean, 0.0)
    floor = _floor(s.std(axis=0))
    return ((s - mean) / np.maximum(np.sqrt(var), floor)).astype(np.float32)
