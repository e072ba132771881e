"""Appearance gates measured on the video itself: which box pairs count as one person or as two, the quantiles
they give, the configured gates until enough pairs are seen, and the tracker using them."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import TrackerConfig
from pipeline.tracking.gates import MIN_PAIRS, VideoGates, distinct_pairs, same_pairs
from pipeline.tracking.tracker import Tracker
from pipeline.types import Detections, Embeddings


def test_one_isolated_object_a_frame_apart_is_a_same_pair() -> None:
    prev = np.array([[0, 0, 10, 20], [100, 0, 110, 20], [200, 0, 210, 20]], np.float64)
    cur = np.array([[1, 0, 11, 20],  # the first, moved a pixel: IoU 0.82
                    [103, 0, 113, 20],  # the second, moved 3 pixels: IoU 0.54, too far to be sure
                    [202, 0, 212, 20], [206, 0, 216, 20]], np.float64)  # the third, with a neighbour over it
    def pairs(p: np.ndarray, c: np.ndarray) -> list[tuple[int, int]]:
        i, j = same_pairs(p, c)
        return list(zip(i.tolist(), j.tolist(), strict=True))

    assert pairs(prev, cur) == [(0, 0)]
    assert pairs(prev[:1], cur[:1]) == [(0, 0)] and pairs(prev[:0], cur) == []


def test_boxes_of_one_frame_apart_are_different_pairs() -> None:
    boxes = np.array([[0, 0, 10, 20], [5, 0, 15, 20], [100, 0, 110, 20]], np.float64)
    a, b = distinct_pairs(boxes)
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 2), (1, 2)]  # 0 and 1 overlap: maybe one object
    assert len(distinct_pairs(boxes[:1])[0]) == 0


def _scene(rng: np.random.Generator, people: int, frames: int, noise: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """People standing apart, each with an identity vector plus per-frame noise."""
    ident = rng.normal(size=(people, 32))
    boxes = np.array([[60.0 * i, 0, 60.0 * i + 20, 50] for i in range(people)])
    return [(boxes + rng.normal(0, 0.3, boxes.shape), ident + noise * rng.normal(size=ident.shape))
            for _ in range(frames)]


def test_gates_are_the_quantiles_of_the_pairs_after_enough_of_them() -> None:
    rng = np.random.default_rng(0)
    gates = VideoGates(0.6, 0.4)
    frames = _scene(rng, 6, 40, 0.3)
    history = [gates.observe(b, v, np.ones(len(b), bool)) for b, v in frames]
    assert history[0] == (0.6, 0.4)  # nothing measured yet: the configured gates
    assert gates.measured and len(gates.same) == 6 * 39 and len(gates.different) == 15 * 40
    same, diff = gates.same.values(), gates.different.values()
    assert len(same) >= MIN_PAIRS
    # recomputed every few frames: the last gates are the quantiles of (nearly) all pairs seen
    first, reid = history[-1]
    assert first == pytest.approx(np.percentile(same, 99), abs=0.05)
    assert reid == pytest.approx(np.percentile(diff, 1), abs=0.05)
    assert first < reid  # these people are far apart in appearance: the gates sit between the two kinds
    gates.reset()
    assert gates.gates == (0.6, 0.4) and not gates.measured


def test_rows_without_an_embedding_are_left_out() -> None:
    gates = VideoGates(0.6, 0.4)
    boxes = np.array([[0, 0, 10, 20], [100, 0, 110, 20]], np.float64)
    v = np.array([[1.0, 0.0], [0.0, 0.0]])
    for _ in range(3):
        gates.observe(boxes, v, np.array([True, False]))
    assert len(gates.different) == 0 and len(gates.same) == 2 and np.allclose(gates.same.values(), 0.0)


def test_the_tracker_uses_the_video_gates_and_forgets_them_on_reset() -> None:
    rng = np.random.default_rng(1)
    tracker = Tracker(TrackerConfig(gates="video", max_cosine_distance=0.6, reid_max_cosine_distance=0.4))
    for t, (boxes, vecs) in enumerate(_scene(rng, 6, 40, 0.3)):
        vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
        tracker.update(Detections(boxes.astype(np.float32), np.ones(len(boxes), np.float32),
                                  np.full(len(boxes), -1, np.int64)), Embeddings(vecs),
                       t / 25.0)
    assert tracker.video_gates is not None and tracker.video_gates.measured
    assert (tracker.max_cosine_distance, tracker.reid_max_cosine_distance) == tracker.video_gates.gates != (0.6, 0.4)
    tracker.reset()
    assert (tracker.max_cosine_distance, tracker.reid_max_cosine_distance) == (0.6, 0.4)
    assert Tracker(TrackerConfig()).video_gates is None


def test_the_window_keeps_the_most_recent_values() -> None:
    from pipeline.tracking.gates import _Window

    w = _Window(5)
    w.extend(np.arange(3.0))
    assert sorted(w.values().tolist()) == [0.0, 1.0, 2.0]
    w.extend(np.arange(3.0, 7.0))  # wraps around
    assert len(w) == 5 and sorted(w.values().tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    w.extend(np.arange(10.0, 22.0))  # more than the window at once
    assert sorted(w.values().tolist()) == [17.0, 18.0, 19.0, 20.0, 21.0]
