"""Appearance gates from the video itself, without labels (``[tracker] gates = "video"``).

A re-identification model's distances live on its own scale, and the scale of one camera's consecutive frames is not
the scale of cross-camera validation pairs: the same person a frame later is far nearer than across cameras, and two
people of one scene may be nearer than two random people. So the two gates are measured on the stream as it runs,
from pairs whose answer the geometry gives:

- **the same person**: a box of the previous frame and a box of this one that overlap by at least
  :data:`SAME_IOU`, each the other's best, the previous box overlapping no other box of this frame by
  :data:`APART_IOU` or more (an isolated object that moved a little);
- **different people**: two boxes of one frame that overlap by less than :data:`APART_IOU` (two objects at once).

The first-pass gate (``max_cosine_distance``, where motion already constrains the match) is the distance that keeps
99% of same-person pairs: it refuses almost no true match. The re-identification gate
(``reid_max_cosine_distance``, appearance alone) is the distance that accepts 1% of different-person pairs. Until
both kinds number :data:`MIN_PAIRS`, the configured gates hold. The most recent :data:`WINDOW` distances of each kind
are kept, so the gates follow a scene that changes (light, crowd).
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.tracking.matching import iou_matrix

__all__ = ["APART_IOU", "MIN_PAIRS", "SAME_IOU", "WINDOW", "VideoGates", "distinct_pairs", "same_pairs"]

SAME_IOU = 0.6
APART_IOU = 0.1
MIN_PAIRS = 50
WINDOW = 20_000
SAME_QUANTILE = 99.0  # percent of same-person pairs the first-pass gate keeps
DIFFERENT_QUANTILE = 1.0  # percent of different-person pairs the re-identification gate accepts
EVERY = 25  # frames between two computations of the gates (about a second of video)


def same_pairs(prev_xyxy: np.ndarray, xyxy: np.ndarray, o: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(previous, current) box index arrays of the pairs that are one isolated object a frame apart; ``o``: their
    IoU matrix, when already computed."""
    if not len(prev_xyxy) or not len(xyxy):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    o = iou_matrix(prev_xyxy, xyxy) if o is None else o
    i = np.arange(len(prev_xyxy))
    j = np.argmax(o, axis=1)
    ok = (o[i, j] >= SAME_IOU) & (np.argmax(o, axis=0)[j] == i)
    if len(xyxy) > 1:  # another box of this frame overlapping it too: not sure which is which
        ok &= np.partition(o, -2, axis=1)[:, -2] < APART_IOU
    return i[ok], j[ok]


@functools.lru_cache(maxsize=64)
def _upper(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def distinct_pairs(xyxy: np.ndarray, o: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(a, b)``, ``a < b``, of boxes of one frame that are two objects (overlap below APART_IOU);
    ``o``: their IoU matrix, when already computed."""
    if len(xyxy) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    o = iou_matrix(xyxy, xyxy) if o is None else o
    a, b = _upper(len(xyxy))
    keep = o[a, b] < APART_IOU
    return a[keep], b[keep]


class _Window:
    """The last ``size`` values, in a preallocated ring."""

    def __init__(self, size: int) -> None:
        self._buf = np.empty(size, np.float64)
        self._n = self._at = 0

    def __len__(self) -> int:
        return self._n

    def extend(self, values: np.ndarray) -> None:
        values = values[-len(self._buf):]
        end = self._at + len(values)
        first = min(end, len(self._buf)) - self._at
        self._buf[self._at:self._at + first] = values[:first]
        self._buf[:len(values) - first] = values[first:]
        self._at = end % len(self._buf)
        self._n = min(self._n + len(values), len(self._buf))

    def values(self) -> np.ndarray:
        return self._buf[:self._n]


class VideoGates:
    """The two gates of one stream, from its own frames (see the module docstring)."""

    def __init__(self, first_pass: float, reid: float) -> None:
        self.configured = (first_pass, reid)
        self.reset()

    def reset(self) -> None:
        self.same = _Window(WINDOW)
        self.different = _Window(WINDOW)
        self._prev: tuple[np.ndarray, np.ndarray] | None = None
        self._frames = 0
        self.gates = self.configured
        self.measured = False  # whether the gates come from the video yet

    def observe(self, xyxy: np.ndarray, vectors: np.ndarray, known: np.ndarray) -> tuple[float, float]:
        """One frame's boxes and their embeddings (``known``: the rows that were embedded); returns the gates
        (first pass, re-identification) to use for it."""
        xy = np.asarray(xyxy, np.float64).reshape(-1, 4)[known]
        v = np.asarray(vectors, np.float64)[known]
        if len(v):
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        pxy, pv = self._prev if self._prev is not None else (xy[:0], v[:0])
        o = iou_matrix(np.concatenate([pxy, xy]), xy)  # one call: previous boxes and this frame's against these
        a, b = distinct_pairs(xy, o[len(pxy):])
        self.different.extend(1.0 - np.einsum("ij,ij->i", v[a], v[b]))
        i, j = same_pairs(pxy, xy, o[:len(pxy)])
        self.same.extend(1.0 - np.einsum("ij,ij->i", pv[i], v[j]))
        self._prev = (xy, v)
        self._frames += 1
        if self._frames % EVERY == 1 or not self.measured:
            self._update()
        return self.gates

    def _update(self) -> None:
        if len(self.same) < MIN_PAIRS or len(self.different) < MIN_PAIRS:
            return
        self.gates = (float(np.percentile(self.same.values(), SAME_QUANTILE)),
                      float(np.percentile(self.different.values(), DIFFERENT_QUANTILE)))
        self.measured = True
