"""Offline clean-up of finished tracks: confirmed tracks only, gaps filled on a straight line."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tracking.postprocess import interpolate_gaps, keep_confirmed


def rows(*r: tuple[float, ...]) -> np.ndarray:
    return np.array(r, np.float64)


def test_keep_confirmed_drops_only_the_tracks_never_confirmed() -> None:
    r = rows((1, 1, 0, 0, 10, 10, 0.9), (1, 2, 50, 0, 10, 10, 0.4), (2, 1, 1, 0, 10, 10, 0.9))
    np.testing.assert_array_equal(keep_confirmed(r, {1}), r[[0, 2]])
    assert keep_confirmed(r, set()).shape == (0, 7)


def test_a_gap_is_filled_on_the_line_between_its_two_boxes() -> None:
    # Track 1 seen at frames 1 and 4 (2 frames missing), track 2 seen at frames 1 and 2 (no gap).
    r = rows((1, 1, 0, 0, 10, 20, 0.9), (4, 1, 30, 3, 16, 20, 0.8), (1, 2, 100, 100, 5, 5, 0.7),
             (2, 2, 101, 100, 5, 5, 0.7))
    out = interpolate_gaps(r, max_gap=2)
    assert out[:, :2].tolist() == [[1, 1], [1, 2], [2, 1], [2, 2], [3, 1], [4, 1]]  # sorted by frame, then id
    np.testing.assert_allclose(out[2, 2:6], [10, 1, 12, 20])
    np.testing.assert_allclose(out[4, 2:6], [20, 2, 14, 20])
    assert out[2, 6] == out[4, 6] == -1  # not detections
    np.testing.assert_array_equal(out[[0, 1, 3, 5]], r[[0, 2, 3, 1]])  # the given rows are unchanged


def test_gaps_longer_than_max_gap_stay_open() -> None:
    r = rows((1, 1, 0, 0, 10, 10, 0.9), (5, 1, 40, 0, 10, 10, 0.9))  # 3 frames missing
    assert len(interpolate_gaps(r, max_gap=2)) == 2
    assert len(interpolate_gaps(r, max_gap=3)) == 5
    assert len(interpolate_gaps(r, max_gap=0)) == 2


def test_bad_rows_and_gap() -> None:
    with pytest.raises(ValueError, match="MOT rows"):
        interpolate_gaps(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="max_gap must be >= 0"):
        interpolate_gaps(np.zeros((0, 7)), -1)
    assert interpolate_gaps(np.zeros((0, 7)), 5).shape == (0, 7)
