from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lab.evaluation.mot_metrics import (
    MotEvaluationError,
    evaluate,
    gt_kept_mask,
    preprocess,
    protocol_for,
    write_mot_txt,
)
from lab.evaluation.mot_peers import run_iou_baseline
from lab.evaluation.motchallenge import MotSequence, load_sequence
from pipeline.detect.motchallenge import MotDetectionFile, MotFileError

LENGTH = 20


def sequence(tmp_path: Path, gt: np.ndarray | None = None, name: str = "Tiny") -> MotSequence:
    gt_path = None
    if gt is not None:
        gt_path = tmp_path / "gt.txt"
        np.savetxt(gt_path, gt, fmt="%.6g", delimiter=",")
    return MotSequence(name=name, root=tmp_path, frame_rate=10.0, length=LENGTH, width=200, height=100,
                       frames_uri=str(tmp_path / "Tiny.mp4"), det_path=tmp_path / "det.txt", gt_path=gt_path)


def ground_truth() -> np.ndarray:
    """Three people walking right for 20 frames, 10 columns as in MOT15 (conf = 1)."""
    rows = []
    for t in range(1, LENGTH + 1):
        for pid, y in ((1, 5), (2, 40), (3, 70)):
            rows.append([t, pid, 5 + 4 * t, y, 12, 25, 1, -1, -1, -1])
    return np.asarray(rows, np.float64)


def both_agree(scores) -> None:  # type: ignore[no-untyped-def]
    diff = scores.disagreement()
    assert abs(diff["MOTA"]) < 1e-6 and abs(diff["IDF1"]) < 1e-6 and diff["IDSW"] == 0, \
        scores.describe_disagreement()


def test_perfect_tracker_scores_100_in_both_libraries(tmp_path: Path) -> None:
    gt = ground_truth()
    s = evaluate(gt, gt[:, :6], sequence(tmp_path))
    assert s.hota == pytest.approx(100.0) and s.deta == pytest.approx(100.0) and s.assa == pytest.approx(100.0)
    assert s.mota == pytest.approx(100.0) and s.idf1 == pytest.approx(100.0) and s.motp == pytest.approx(100.0)
    assert (s.idsw, s.fp, s.fn, s.tp, s.mt, s.ml) == (0, 0, 0, 60, 3, 0)
    assert (s.motmetrics.mota, s.motmetrics.idf1, s.motmetrics.idsw) == (pytest.approx(100.0),
                                                                        pytest.approx(100.0), 0)
    both_agree(s)


def test_swapped_ids_count_switches_in_both_libraries(tmp_path: Path) -> None:
    gt = ground_truth()
    tracks = gt[:, :6].copy()
    later = tracks[:, 0] > 10
    one, two = later & (tracks[:, 1] == 1), later & (tracks[:, 1] == 2)
    tracks[one, 1], tracks[two, 1] = 2, 1  # ids 1 and 2 swap from frame 11 on
    s = evaluate(gt, tracks, sequence(tmp_path))
    assert s.idsw == 2 and s.motmetrics.idsw == 2
    assert s.idf1 < 100.0 and s.motmetrics.idf1 < 100.0
    assert s.mota == pytest.approx(100.0 * (60 - 2) / 60)
    assert s.hota < 100.0 and s.deta == pytest.approx(100.0)
    both_agree(s)


def test_ignored_ground_truth_is_removed_as_in_mot15(tmp_path: Path) -> None:
    gt = ground_truth()
    gt[gt[:, 1] == 3, 6] = 0  # person 3 is marked "ignore" (conf = 0)
    assert gt_kept_mask(gt).sum() == 40
    seq = sequence(tmp_path, gt)
    kept_only = evaluate(None, gt[gt[:, 6] != 0, :6], seq)  # gt read from seq.gt_path
    assert kept_only.mota == pytest.approx(100.0) and kept_only.fp == 0 and kept_only.gt_ids == 2
    # MOT15 has no distractor matching: boxes on an ignored person are false positives, in both libraries.
    everything = evaluate(seq.gt_path, gt[:, :6], seq)
    assert everything.fp == 20 and everything.motmetrics.fp == 20
    assert everything.mota == pytest.approx(100.0 * (1 - 20 / 40))
    both_agree(everything)


def classed_ground_truth() -> np.ndarray:
    """MOT16+ rows (``frame,id,x,y,w,h,conf,class,visibility``): the three walkers (class 1), a static person
    (class 7), a car (class 3) and a non-motorised vehicle (class 6), the last three marked conf 0 as in MOT17."""
    rows = [[*r[:6], 1, 1, 0.8] for r in ground_truth()]
    for t in range(1, LENGTH + 1):
        rows += [[t, 4, 150, 10, 12, 25, 0, 7, 1.0], [t, 5, 150, 40, 30, 20, 0, 3, 1.0],
                 [t, 6, 150, 70, 20, 20, 0, 6, 0.5]]
    return np.asarray(rows, np.float64)


def test_the_protocol_comes_from_the_ground_truth() -> None:
    assert protocol_for(ground_truth(), "TUD-Campus") == "MOT15"  # MOT15: world coordinates -1, no classes
    assert protocol_for(classed_ground_truth(), "MOT17-09-FRCNN") == "MOT17"
    assert protocol_for(classed_ground_truth(), "MOT16-02") == "MOT17"  # MOT16 is scored as MOT17
    assert protocol_for(classed_ground_truth(), "MOT20-05") == "MOT20"
    bad_visibility = classed_ground_truth()
    bad_visibility[0, 8] = 3.5  # not a visibility: not MOT16+ columns
    assert protocol_for(bad_visibility, "MOT17-09") == "MOT15"


def test_distractors_are_not_false_positives_in_mot17_and_mot20(tmp_path: Path) -> None:
    gt = classed_ground_truth()
    everything = gt[:, :6]  # a box on every object: walkers, static person, car, non-motorised vehicle
    seq17 = sequence(tmp_path, name="MOT17-09-FRCNN")
    s = evaluate(gt, everything, seq17)
    # MOT17: the boxes on the static person are removed; the car and the vehicle are false positives.
    assert s.protocol == "MOT17" and (s.tp, s.fp, s.fn, s.gt_ids) == (60, 40, 0, 3)
    assert s.mota == pytest.approx(100.0 * (1 - 40 / 60)) and s.motmetrics.fp == 40
    both_agree(s)
    s20 = evaluate(gt, everything, sequence(tmp_path, name="MOT20-05"))
    # MOT20 counts the non-motorised vehicle as a distractor too.
    assert s20.protocol == "MOT20" and (s20.tp, s20.fp, s20.motmetrics.fp) == (60, 20, 20)
    both_agree(s20)
    # The same rows scored as MOT15 (conf 0 rows removed, no distractor matching): every extra box is an FP.
    s15 = evaluate(gt, everything, seq17, protocol="MOT15")
    assert s15.protocol == "MOT15" and (s15.fp, s15.motmetrics.fp) == (60, 60)
    both_agree(s15)


def test_preprocess_keeps_pedestrians_and_drops_boxes_on_distractors() -> None:
    gt = classed_ground_truth()
    shifted = gt[:, :6].copy()
    shifted[:, 2] += 1.0  # a pixel off: still matched at IoU >= 0.5
    kept_gt, kept_tracks = preprocess(gt, shifted, "MOT17")
    assert set(kept_gt[:, 1].astype(int)) == {1, 2, 3} and len(kept_gt) == 60
    assert set(kept_tracks[:, 1].astype(int)) == {1, 2, 3, 5, 6}
    assert gt_kept_mask(gt, "MOT17").sum() == 60 and gt_kept_mask(gt).sum() == 60
    far = gt[:, :6].copy()
    far[gt[:, 1] == 4, 2] += 60.0  # nowhere near the static person: not matched, stays (a false positive)
    assert 4 in set(preprocess(gt, far, "MOT17")[1][:, 1].astype(int))


def test_only_pedestrians_are_ground_truth_in_mot17(tmp_path: Path) -> None:
    gt = classed_ground_truth()
    gt[gt[:, 1] == 5, 6] = 1  # the car marked "consider": MOT15 keeps it, MOT17 keeps pedestrians only
    everything = gt[:, :6]
    s17, s15 = evaluate(gt, everything, sequence(tmp_path, name="MOT17-02"), protocol="MOT17"), \
        evaluate(gt, everything, sequence(tmp_path, name="MOT17-02"), protocol="MOT15")
    assert (s17.gt_ids, s17.tp, s17.fp) == (3, 60, 40)  # the car's boxes: false positives, not ground truth
    assert (s15.gt_ids, s15.tp, s15.fp) == (4, 80, 40)  # the car is ground truth; static person and vehicle FPs
    both_agree(s17)
    both_agree(s15)


def test_the_libraries_agree_at_the_iou_boundary(tmp_path: Path) -> None:
    """Boxes on a distractor at IoU exactly 0.5 (removed) and a hair under it (a false positive), in both."""
    gt = classed_ground_truth()
    static = gt[:, 1] == 4
    tracks = gt[:, :6].copy()
    tracks[static, 5] = gt[static, 5] / 2  # half the static person's height: IoU 0.5 exactly
    s = evaluate(gt, tracks, sequence(tmp_path, name="MOT17-02"))
    assert (s.fp, s.motmetrics.fp) == (40, 40)
    tracks[static, 4] = gt[static, 4] - 1e-11  # a hair narrower: IoU just under 0.5, kept as a false positive
    s = evaluate(gt, tracks, sequence(tmp_path, name="MOT17-02"))
    assert (s.fp, s.motmetrics.fp) == (60, 60)
    both_agree(s)


def test_crowd_class_and_ground_truth_without_visibility(tmp_path: Path) -> None:
    gt = classed_ground_truth()
    gt[gt[:, 1] == 6, 7] = 13  # MOT20's crowd class: still MOT16+ ground truth
    assert protocol_for(gt, "MOT17-02") == "MOT17"
    no_visibility = gt[:, :8]  # class, no visibility: not recognised on its own, scored as MOT17 when asked
    assert protocol_for(no_visibility, "MOT17-02") == "MOT15"
    s = evaluate(no_visibility, gt[gt[:, 1] <= 3, :6], sequence(tmp_path, name="MOT17-02"), protocol="MOT17")
    assert s.protocol == "MOT17" and s.mota == pytest.approx(100.0)


def test_a_protocol_with_classes_needs_them(tmp_path: Path) -> None:
    gt = ground_truth()
    with pytest.raises(MotEvaluationError, match="needs ground truth with a class column"):
        evaluate(gt, gt[:, :6], sequence(tmp_path), protocol="MOT17")
    with pytest.raises(MotEvaluationError, match="is not one of MOT15, MOT17, MOT20"):
        evaluate(gt, gt[:, :6], sequence(tmp_path), protocol="KITTI")


def test_tracks_round_trip_through_a_mot_file(tmp_path: Path) -> None:
    gt = ground_truth()
    path = write_mot_txt(tmp_path / "out" / "tracks.txt", gt[:, :6])
    first = path.read_text().splitlines()[0]
    assert first == "1,1,9.000,5.000,12.000,25.000,1,-1,-1,-1"
    s = evaluate(gt, path, sequence(tmp_path))
    assert s.mota == pytest.approx(100.0) and s.idsw == 0


def test_no_tracks_at_all(tmp_path: Path) -> None:
    s = evaluate(ground_truth(), np.zeros((0, 6)), sequence(tmp_path))
    assert s.hota == 0.0 and s.fn == 60 and s.fp == 0 and s.motmetrics.fn == 60
    assert s.mota == pytest.approx(0.0) and s.motmetrics.mota == pytest.approx(0.0)


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda r: r.__setitem__((0, 0), LENGTH + 1), f"frame {LENGTH + 1} is outside 1..{LENGTH}"),
    (lambda r: r.__setitem__((0, 0), 0), "frame 0 is outside"),
    (lambda r: r.__setitem__((0, 1), -3), "track id -3 is not an integer >= 0"),
    (lambda r: r.__setitem__((1, 1), 1), "id 1 appears more than once in frame 1"),
    (lambda r: r.__setitem__((0, 3), np.nan), "NaN or inf"),
])
def test_bad_tracks_are_rejected(tmp_path: Path, edit: Callable[[np.ndarray], None], fragment: str) -> None:
    gt = ground_truth()
    tracks = gt[:, :6].copy()
    edit(tracks)
    with pytest.raises(MotEvaluationError, match=fragment.replace(".", r"\.")):
        evaluate(gt, tracks, sequence(tmp_path))


def test_bad_inputs(tmp_path: Path) -> None:
    seq = sequence(tmp_path)
    with pytest.raises(MotEvaluationError, match=r"has no gt/gt\.txt"):
        evaluate(None, np.zeros((0, 6)), seq)
    with pytest.raises(MotFileError, match="ground-truth file not found"):
        evaluate(tmp_path / "missing.txt", np.zeros((0, 6)), seq)
    with pytest.raises(MotEvaluationError, match=r"expected an \(N, >= 6\) array"):
        evaluate(ground_truth(), np.zeros((3, 4)), seq)


def test_iou_baseline_on_tud_campus(shared_data: Callable[..., Path]) -> None:
    seq = load_sequence(shared_data("mot15", "TUD-Campus"))
    run = run_iou_baseline(MotDetectionFile(seq.det_path), seq)
    s = evaluate(None, run.rows, seq)
    assert abs(s.mota - s.motmetrics.mota) <= 0.5, s.describe_disagreement()
    # The published figures for this baseline on these detections (HOTA/MOTA/IDF1/IDSW 44.9/53.8/55.0/14).
    assert (round(s.hota, 1), round(s.mota, 1), round(s.idf1, 1), s.idsw) == (44.9, 53.8, 55.0, 14)
    assert s.gt_ids == 8 and s.gt_dets == 359


def test_the_cli_offers_every_protocol() -> None:
    from lab.evaluation.mot_metrics import PROTOCOLS
    from pipeline.cli import MOT_PROTOCOLS

    assert ("auto", *PROTOCOLS) == MOT_PROTOCOLS
