from __future__ import annotations

import numpy as np
import pytest

from pipeline.tracking.matching import GATED, cosine_distance_matrix, fused_cost, iou_matrix, linear_assignment


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
