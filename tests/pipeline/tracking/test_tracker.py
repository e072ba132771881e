from __future__ import annotations

import numpy as np
import pytest

from pipeline.tracking.tracker import Tracker
from pipeline.types import Detections, Embeddings, TrackState


def dets(*boxes: list[float]) -> Detections:
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(n, 4), np.ones(n), -np.ones(n))


def emb(*vectors: list[float]) -> Embeddings:
    v = np.array(vectors, np.float32).reshape(len(vectors), -1)
    return Embeddings(v / np.linalg.norm(v, axis=1, keepdims=True))


def ids(out) -> list[int]:  # type: ignore[no-untyped-def]
    return [o.track_id for o in out.observations if o.detection_index >= 0]


def test_two_boxes_two_frames_keep_ids() -> None:
    t = Tracker(min_hits=1)
    a = t.update(dets([0, 0, 10, 10], [50, 50, 60, 60]), emb([1, 0], [0, 1]), 0.0)
    b = t.update(dets([51, 51, 61, 61], [1, 1, 11, 11]), emb([0, 1], [1, 0]), 0.1)
    assert ids(a) == [1, 2]
    by_det = {o.detection_index: o.track_id for o in b.observations}
    assert by_det == {0: 2, 1: 1}


def test_crossing_parts_told_apart_by_appearance() -> None:
    # Two parts swap places between frames in a way overlap alone gets wrong: each new box overlaps
    # the other track's old box more. Appearance keeps the identities.
    t = Tracker(min_hits=1, appearance_weight=0.7, min_iou=0.0, max_cost=1.0)
    t.update(dets([0, 0, 20, 20], [12, 0, 32, 20]), emb([1, 0, 0], [0, 1, 0]), 0.0)
    out = t.update(dets([10, 0, 30, 20], [2, 0, 22, 20]), emb([1, 0, 0], [0, 1, 0]), 0.1)
    assert {o.detection_index: o.track_id for o in out.observations} == {0: 1, 1: 2}


def test_lifecycle_tentative_confirmed_lost_removed() -> None:
    t = Tracker(min_hits=3, max_lost_seconds=0.25)
    box, e = [0, 0, 10, 10], [1, 0]
    states = []
    for i in range(3):
        out = t.update(dets(box), emb(e), i * 0.1)
        states.append(out.observations[0].state)
    assert states == [TrackState.TENTATIVE, TrackState.TENTATIVE, TrackState.CONFIRMED]
    assert out.started == [1]
    out = t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.3)
    assert out.observations[0].state == TrackState.LOST and out.observations[0].detection_index == -1
    out = t.update(dets(box), emb(e), 0.4)  # comes back within max_lost_seconds: same id
    assert ids(out) == [1] and out.observations[0].state == TrackState.CONFIRMED
    t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.5)
    out = t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.8)  # lost 0.4 s > 0.25 s
    assert out.ended == [1] and out.observations == []


def test_tentative_track_removed_at_first_miss_and_ids_never_reused() -> None:
    t = Tracker(min_hits=3)
    t.update(dets([0, 0, 10, 10]), emb([1, 0]), 0.0)
    out = t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.1)
    assert out.observations == [] and out.ended == []
    out = t.update(dets([0, 0, 10, 10]), emb([1, 0]), 0.2)
    assert ids(out) == [2]


def test_constant_velocity_prediction_bridges_a_gap() -> None:
    # A part moving 10 px per 0.1 s is missed for one frame; the prediction still overlaps it.
    t = Tracker(min_hits=1, max_lost_seconds=1.0, min_iou=0.3)
    for i in range(3):
        t.update(dets([10 * i, 0, 10 * i + 20, 20]), emb([1, 0]), 0.1 * i)
    t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.3)
    out = t.update(dets([40, 0, 60, 20]), emb([1, 0]), 0.4)
    assert ids(out) == [1]


def test_reset_and_validation() -> None:
    t = Tracker(min_hits=1)
    t.update(dets([0, 0, 10, 10]), emb([1, 0]), 0.0)
    t.reset()
    assert ids(t.update(dets([0, 0, 10, 10]), emb([1, 0]), 0.0)) == [1]
    with pytest.raises(ValueError, match="2 detections but 1 embeddings"):
        t.update(dets([0, 0, 1, 1], [2, 2, 3, 3]), emb([1, 0]), 0.1)
    with pytest.raises(ValueError, match="appearance_weight"):
        Tracker(appearance_weight=2.0)


def test_memory_bounded_over_long_run() -> None:
    t = Tracker(min_hits=2, max_lost_seconds=0.2)
    rng = np.random.default_rng(0)
    for i in range(2000):  # a new part every frame somewhere random: tracks must be removed, not kept
        x = float(rng.uniform(0, 1000))
        t.update(dets([x, 0, x + 5, 5]), emb([1, float(rng.uniform())]), i * 0.05)
    assert len(t._tracks) < 20
