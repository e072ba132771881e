from __future__ import annotations

import numpy as np
import pytest

from pipeline.tracking.matching import (
    GATED,
    appearance_cost,
    cosine_distance_matrix,
    distinctive,
    duplicate_tracks,
    fuse_min,
    fuse_weighted,
    fused_cost,
    gallery_cosine_distance,
    gate_classes,
    gate_height_ratio,
    iou_cost,
    iou_matrix,
    linear_assignment,
)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [10, 10, 20, 20], 0.0),
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
    ],
)
def test_iou_by_hand(a: list[float], b: list[float], expected: float) -> None:
    assert iou_matrix(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected, abs=1e-6)


def test_iou_and_cosine_empty_shapes() -> None:
    assert iou_matrix(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    assert cosine_distance_matrix(np.zeros((2, 5)), np.zeros((0, 5))).shape == (2, 0)


def test_cosine_distance_by_hand() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    d = cosine_distance_matrix(a, b)
    np.testing.assert_allclose(d, [[0, 2, 1 - np.sqrt(0.5)], [1, 1, 1 - np.sqrt(0.5)]], atol=1e-6)


def test_fused_cost_gates_each_cue() -> None:
    cos = np.array([[0.1, 0.9], [0.1, 0.1]], np.float32)
    iou = np.array([[0.8, 0.8], [0.0, 0.5]], np.float32)
    cost = fused_cost(cos, iou, appearance_weight=0.5, max_cosine_distance=0.3, min_iou=0.1)
    assert cost[0, 0] == pytest.approx(0.5 * 0.1 + 0.5 * 0.2)
    assert cost[0, 1] == GATED  # looks different
    assert cost[1, 0] == GATED  # does not overlap
    assert cost[1, 1] == pytest.approx(0.5 * 0.1 + 0.5 * 0.5)


def test_linear_assignment_is_optimal_not_greedy() -> None:
    # Greedy on the smallest cost takes (0, 0)=0.1 and is then forced to (1, 1)=0.9: total 1.0.
    # The optimum is (0, 1) + (1, 0) = 0.2 + 0.3 = 0.5.
    cost = np.array([[0.1, 0.2], [0.3, 0.9]])
    matches, ur, uc = linear_assignment(cost, max_cost=1.0)
    assert sorted(map(tuple, matches.tolist())) == [(0, 1), (1, 0)]
    assert len(ur) == 0 and len(uc) == 0


def test_linear_assignment_drops_pairs_over_max_cost() -> None:
    cost = np.array([[0.1, GATED], [GATED, GATED]])
    matches, ur, uc = linear_assignment(cost, max_cost=0.7)
    assert matches.tolist() == [[0, 0]]
    assert ur.tolist() == [1] and uc.tolist() == [1]


def test_iou_cost_is_one_minus_iou() -> None:
    cost = iou_cost(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(cost, [[1 - 50 / 150, 1.0]], atol=1e-6)


def test_gallery_distance_is_the_nearest_stored_feature() -> None:
    galleries = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[-1.0, 0.0]])]
    feats = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    d = gallery_cosine_distance(galleries, feats)
    np.testing.assert_allclose(d, [[0, 0, 1], [1, 2, 0]], atol=1e-6)
    assert gallery_cosine_distance([], feats).shape == (0, 3)
    with pytest.raises(ValueError, match="at least one feature"):
        gallery_cosine_distance([np.zeros((0, 2))], feats)


def test_appearance_cost_modes() -> None:
    galleries = [np.array([[1.0, 0.0], [0.0, 1.0]])]
    ema = np.array([[1.0, 1.0]]) / np.sqrt(2)
    feats = np.array([[0.0, 1.0]])
    assert appearance_cost(galleries, ema, feats, "gallery")[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert appearance_cost(galleries, ema, feats, "ema")[0, 0] == pytest.approx(1 - np.sqrt(0.5), abs=1e-6)
    with pytest.raises(ValueError, match="one of ema, gallery"):
        appearance_cost(galleries, ema, feats, "mean")


def test_gate_classes_never_pairs_different_classes() -> None:
    cost = np.full((2, 3), 0.1, np.float32)
    gated = gate_classes(cost, np.array([0, 1]), np.array([0, 1, -1]))
    assert (gated == GATED).tolist() == [[False, True, True], [True, False, True]]


@pytest.mark.parametrize(
    ("app", "iou_dist", "known", "expected"),
    [
        (0.1, 0.4, True, 0.5 * 0.1 + 0.5 * 0.4),
        (0.5, 0.4, True, GATED),  # looks different
        (0.1, 0.99, True, GATED),  # too far apart
        (0.5, 0.4, False, 0.4),  # no embedding: motion alone, appearance gate off
    ],
)
def test_fuse_weighted(app: float, iou_dist: float, known: bool, expected: float) -> None:
    cost = fuse_weighted(np.array([[app]]), np.array([[iou_dist]]), 0.5, max_cosine_distance=0.3,
                         max_iou_distance=0.9, has_appearance=np.array([known]))
    assert cost[0, 0] == pytest.approx(expected)


def test_fuse_weighted_per_track_overlap_gate() -> None:
    cost = fuse_weighted(np.array([[0.1], [0.1]]), np.array([[1.0], [1.0]]), 0.5, 0.3,
                         max_iou_distance=np.array([[0.9], [1.0]]))
    assert cost[0, 0] == GATED and cost[1, 0] == pytest.approx(0.55)


def test_fuse_min_like_bot_sort() -> None:
    app = np.array([[0.1, 0.1, 0.6]], np.float32)
    iou_dist = np.array([[0.3, 0.7, 0.3]], np.float32)
    cost = fuse_min(app, iou_dist, max_cosine_distance=0.25, max_iou_distance=0.5)
    # near and alike: min(0.3, 0.1 / 2); alike but not near: IoU alone; near but unlike: IoU alone
    np.testing.assert_allclose(cost, [[0.05, 0.7, 0.3]], atol=1e-6)


@pytest.mark.parametrize(
    ("cost", "margin", "expected"),
    [
        ([[0.1, 0.5], [0.6, 0.15]], 0.1, [[True, False], [False, True]]),
        ([[0.1, 0.15], [0.6, 0.6]], 0.1, [[False, False], [False, False]]),  # row 0 cannot choose
        ([[0.1], [0.15]], 0.1, [[False], [False]]),  # column 0 cannot choose
        ([[0.1, 0.3]], 0.1, [[True, False]]),  # one track: only the detections compete
        ([[0.05, 0.06], [0.07, 0.05]], 0.0, [[True, False], [False, True]]),
    ],
)
def test_distinctive_is_a_two_way_ratio_test(cost: list[list[float]], margin: float,
                                             expected: list[list[bool]]) -> None:
    assert distinctive(np.array(cost), margin).tolist() == expected


def test_height_ratio_gate_forbids_boxes_too_much_taller_or_shorter() -> None:
    cost = np.zeros((2, 4), np.float32)
    gated = gate_height_ratio(cost, np.array([100.0, 50.0]), np.array([100.0, 160.0, 60.0, 55.0]), 1.7)
    assert (gated == np.where([[0, 0, 0, 1], [1, 1, 0, 0]], GATED, 0.0)).all()
    only_first = gate_height_ratio(cost, np.array([100.0, 50.0]), np.array([100.0, 160.0, 60.0, 55.0]), 1.7,
                                   rows=np.array([True, False]))
    assert (only_first == np.where([[0, 0, 0, 1], [0, 0, 0, 0]], GATED, 0.0)).all()
    assert gate_height_ratio(cost, np.ones(2), np.full(4, 100.0), 0.0) is cost  # off
    with pytest.raises(ValueError, match=">= 1"):
        gate_height_ratio(cost, np.ones(2), np.ones(4), 0.5)
    with pytest.raises(ValueError, match="does not match"):
        gate_height_ratio(cost, np.ones(3), np.ones(4), 1.7)


def test_duplicate_tracks_drop_the_younger_of_each_overlapping_pair() -> None:
    seen = np.array([[0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10]], np.float32)
    lost = np.array([[0, 0, 10, 10.5], [100, 0, 110, 10], [300, 0, 310, 10]], np.float32)
    # pair 0: the seen track is older, so the lost one goes; pair 1: the lost one is older; the rest do not overlap
    drop_seen, drop_lost = duplicate_tracks(seen, lost, np.array([5.0, 1.0, 9.0]), np.array([2.0, 3.0, 0.5]), 0.85)
    assert drop_seen.tolist() == [False, True, False]
    assert drop_lost.tolist() == [True, False, False]


def test_duplicate_tracks_tie_threshold_and_classes() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 12]], np.float32)  # IoU 100 / 120 = 0.833
    age = np.array([1.0])
    assert duplicate_tracks(a, a, age, age, 0.85)[0].tolist() == [True]  # a tie: the seen one goes
    assert duplicate_tracks(a, b, age, age, 0.85)[0].tolist() == [False]  # 0.833 is not above 0.85
    assert duplicate_tracks(a, b, age, age, 0.8)[0].tolist() == [True]
    other = np.array([[False]])
    assert not any(np.concatenate(duplicate_tracks(a, a, age, age, 0.85, other)))
    with pytest.raises(ValueError, match="min_iou"):
        duplicate_tracks(a, a, age, age, 0.0)
