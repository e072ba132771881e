from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.detect.motchallenge import (
    MotDetectionFile,
    MotFileError,
    read_mot_detections,
    read_mot_ground_truth,
)
from pipeline.types import Frame

DET = """\
1,-1,10,20,30,40,0.9,-1,-1,-1
1,-1,100,50,20,10,1.7,-1,-1,-1
3,-1,5,5,10,10,0.4,-1,-1,-1
"""


def write(tmp_path: Path, text: str, name: str = "det.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def frame(index: int) -> Frame:
    return Frame(index, index / 25, np.zeros((8, 8, 3), np.uint8))


def test_detect_returns_rows_of_mot_frame_index_plus_one(tmp_path: Path) -> None:
    det = MotDetectionFile(write(tmp_path, DET))
    d = det.detect(frame(0))  # pipeline frame 0 = MOT frame 1
    np.testing.assert_allclose(d.xyxy, [[10, 20, 40, 60], [100, 50, 120, 60]])
    assert d.xyxy.dtype == np.float32
    np.testing.assert_allclose(d.confidence, [0.9, 1.0])  # 1.7 clipped
    np.testing.assert_array_equal(d.class_id, [-1, -1])
    assert len(det.detect(frame(1))) == 0  # MOT frame 2 has no rows
    assert len(det.detect(frame(2))) == 1
    assert len(det.detect(frame(99))) == 0
    assert det.scores_clipped
    np.testing.assert_allclose(det.frame_rows(1).score, [0.9, 1.7])  # raw scores kept
    np.testing.assert_allclose(det.frame_rows(1).tlwh[1], [100, 50, 20, 10])
    assert len(det) == 3 and det.last_frame == 3
    det.reset()  # stateless: same answer after reset
    assert len(det.detect(frame(0))) == 2


def test_min_score_and_unsorted_frames(tmp_path: Path) -> None:
    text = "2,-1,0,0,5,5,0.8\n1,-1,0,0,5,5,0.3\n1,-1,1,1,5,5,0.6\n"
    det = MotDetectionFile(write(tmp_path, text), min_score=0.5)
    assert len(det) == 2
    np.testing.assert_allclose(det.frame_rows(1).tlwh, [[1, 1, 5, 5]])
    np.testing.assert_allclose(det.frame_rows(2).score, [0.8])
    assert not det.scores_clipped


def test_empty_file_comments_and_zero_size_boxes(tmp_path: Path) -> None:
    assert len(MotDetectionFile(write(tmp_path, ""))) == 0
    assert len(MotDetectionFile(write(tmp_path, "")).detect(frame(0))) == 0
    det = MotDetectionFile(write(tmp_path, "# header\n\n1,-1,0,0,0,5,0.9\n1,-1,0,0,5,5,0.9\n"))
    assert len(det) == 1 and det.dropped_empty == 1


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("1,-1,0,0,5,5,0.9\n1,-1,0,x,5,5,0.9\n", 2, "'x' is not a number"),
    ("1,-1,0,0,5,5,0.9\n1,-1,0,0,5,5\n", 2, "6 comma-separated values"),
    ("1,-1,0,0,5,5\n", 1, "6 columns, expected at least 7"),
    ("1,-1,0,0,5,5,0.9\n1,-1,0,0,-5,5,0.9\n", 2, "negative width -5"),
    ("1,-1,0,0,5,-2,0.9\n", 1, "negative height -2"),
    ("0,-1,0,0,5,5,0.9\n", 1, "frame 0 is not an integer >= 1"),
    ("\n1.5,-1,0,0,5,5,0.9\n", 2, "frame 1.5 is not an integer >= 1"),
    ("1,-1,nan,0,5,5,0.9\n", 1, "NaN or inf"),
])
def test_malformed_rows_name_file_line_and_problem(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MotFileError) as info:
        MotDetectionFile(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.line == line and err.path == path
    assert str(err).startswith(f"{path}:{line}: ")
    assert fragment in str(err)
    assert err.fix  # every message says what to do


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MotFileError, match=r"detection file not found; .*det/det.txt") as info:
        read_mot_detections(tmp_path / "nope.txt")
    assert info.value.line is None


def test_read_ground_truth_keeps_all_columns(tmp_path: Path) -> None:
    gt = read_mot_ground_truth(write(tmp_path, "1,9,311.875,98.75,19.394,46.981,1,-4.1554,-7.3591,0\n"
                                               "2,9,312,99,19,47,0,-4.2,-7.4,0\n", "gt.txt"))
    assert gt.shape == (2, 10) and gt.dtype == np.float64
    np.testing.assert_allclose(gt[0, :7], [1, 9, 311.875, 98.75, 19.394, 46.981, 1])
    assert gt[1, 6] == 0


@pytest.mark.parametrize("bad_id", ["-1", "2.5"])
def test_ground_truth_ids_must_be_non_negative_integers(tmp_path: Path, bad_id: str) -> None:
    path = write(tmp_path, f"1,1,0,0,5,5,1,-1,-1,-1\n1,{bad_id},0,0,5,5,1,-1,-1,-1\n", "gt.txt")
    with pytest.raises(MotFileError, match=r":2: track id .* is not an integer >= 0"):
        read_mot_ground_truth(path)


def test_real_det_file(shared_data: Callable[..., Path]) -> None:
    det = MotDetectionFile(shared_data("mot15", "TUD-Campus", "det", "det.txt"))
    assert len(det) == 321 and det.last_frame == 71
    d = det.detect(frame(0))
    assert len(d) == len(det.frame_rows(1).score) > 0
    assert np.all(d.confidence >= 0.5)  # SORT's published detections are >= 0.5
