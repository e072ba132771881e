from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from lab.evaluation.mot_peers import (
    BENCH_INSTALL,
    IouGreedyTracker,
    MobileNetV2Embedder,
    PeerRun,
    PeerUnavailableError,
    greedy_match,
    run_bytetrack,
    run_deepsort,
    run_iou_baseline,
    run_peer,
    tlwh_iou,
)
from lab.evaluation.motchallenge import MotSequence
from pipeline.detect.motchallenge import MotDetectionFile
from pipeline.types import Frame

LENGTH = 8


def det_file(tmp_path: Path) -> MotDetectionFile:
    """Two people walking right 3 px per frame; person B is missed in frame 5."""
    lines = []
    for t in range(1, LENGTH + 1):
        lines.append(f"{t},-1,{10 + 3 * t},10,20,40,0.95,-1,-1,-1")
        if t != 5:
            lines.append(f"{t},-1,{100 + 3 * t},20,20,40,0.9,-1,-1,-1")
    path = tmp_path / "det.txt"
    path.write_text("\n".join(lines) + "\n")
    return MotDetectionFile(path)


def sequence(tmp_path: Path) -> MotSequence:
    return MotSequence(name="Tiny", root=tmp_path, frame_rate=10.0, length=LENGTH, width=200, height=80,
                       frames_uri=str(tmp_path / "Tiny.mp4"), det_path=tmp_path / "det.txt", gt_path=None)


def two_people_frames(det: MotDetectionFile) -> list[Frame]:
    """The frames of :func:`det_file`: each box filled with its person's colour (red, cyan) on dark noise."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(LENGTH):
        image = rng.integers(0, 60, (80, 200, 3), dtype=np.uint8)
        for tlwh, colour in zip(det.frame_rows(i + 1).tlwh.astype(int), ((0, 0, 220), (220, 200, 0)), strict=False):
            x, y, w, h = tlwh
            image[y:y + h, x:x + w] = colour
        frames.append(Frame(i, i / 10, image))
    return frames


def ids_by_frame(run: PeerRun) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for frame, tid in run.rows[:, :2].astype(int):
        out.setdefault(int(frame), []).append(int(tid))
    return out


@pytest.mark.parametrize(("iou", "threshold", "rows", "cols"), [
    ([[0.9, 0.2], [0.1, 0.8]], 0.3, [0, 1], [0, 1]),
    ([[0.9, 0.85], [0.88, 0.1]], 0.3, [0], [0]),  # greedy: 0.9 first; row 1 then has only 0.1 left
    ([[0.5, 0.6], [0.7, 0.2]], 0.3, [1, 0], [0, 1]),
    ([[0.29]], 0.3, [], []),
    ([[0.3]], 0.3, [0], [0]),
    (np.zeros((0, 3)), 0.3, [], []),
])
def test_greedy_match(iou: object, threshold: float, rows: list[int], cols: list[int]) -> None:
    r, c = greedy_match(np.asarray(iou, np.float64), threshold)
    assert r.tolist() == rows and c.tolist() == cols


def test_tlwh_iou() -> None:
    iou = tlwh_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 0, 5, 5],
                                                          [0, 0, 0, 0]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])


def test_iou_tracker_keeps_ids_and_starts_new_ones() -> None:
    tracker = IouGreedyTracker(0.3)
    assert tracker.update(np.array([[0, 0, 10, 10], [50, 0, 10, 10]])).tolist() == [1, 2]
    # Order of detections does not matter; a far box is new.
    assert tracker.update(np.array([[51, 0, 10, 10], [1, 0, 10, 10], [90, 0, 10, 10]])).tolist() == [2, 1, 3]
    assert tracker.update(np.zeros((0, 4))).tolist() == []  # nobody: every track ends
    assert tracker.update(np.array([[1, 0, 10, 10]])).tolist() == [4]
    tracker.reset()
    assert tracker.update(np.array([[1, 0, 10, 10]])).tolist() == [1]
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\]"):
        IouGreedyTracker(0.0)


def test_iou_baseline_writes_every_detection(tmp_path: Path) -> None:
    run = run_peer("iou", det_file(tmp_path), sequence(tmp_path))
    assert run.name == "iou" and run.frames == LENGTH and run.rows.shape == (2 * LENGTH - 1, 7)
    ids = ids_by_frame(run)
    assert ids[1] == [1, 2] and ids[4] == [1, 2] and ids[5] == [1] and ids[6] == [1, 3]  # B lost for a frame
    np.testing.assert_allclose(run.rows[0], [1, 1, 13, 10, 20, 40, 0.95], rtol=1e-6)
    assert run.tracker_seconds >= 0 and run.embed_seconds == 0
    assert run.fps_with_embedder == run.tracker_fps


def test_unknown_peer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown peer 'sort'; valid peers: iou, bytetrack, deepsort"):
        run_peer("sort", det_file(tmp_path), sequence(tmp_path))


def test_missing_bench_extra_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "supervision", None)  # makes `import supervision` fail
    with pytest.raises(PeerUnavailableError, match=r"supervision package, which is not installed") as info:
        run_bytetrack(det_file(tmp_path), sequence(tmp_path))
    assert BENCH_INSTALL in str(info.value)


def test_bytetrack_peer(tmp_path: Path) -> None:
    pytest.importorskip("supervision", reason=f"the bench extra is not installed ({BENCH_INSTALL})")
    run = run_iou_baseline(det_file(tmp_path), sequence(tmp_path))  # same detections as below
    bt = run_bytetrack(det_file(tmp_path), sequence(tmp_path))
    assert bt.name == "bytetrack" and bt.frames == LENGTH
    ids = ids_by_frame(bt)
    # Kalman prediction carries B over its missed frame: two ids for the whole sequence.
    assert len(set(bt.rows[:, 1].astype(int))) == 2 < len(set(run.rows[:, 1].astype(int)))
    assert ids[1] == [1, 2] and ids[8] == [1, 2]


def test_deepsort_peer(tmp_path: Path) -> None:
    pytest.importorskip("deep_sort_realtime", reason=f"the bench extra is not installed ({BENCH_INSTALL})")
    pytest.importorskip("torch")
    det = det_file(tmp_path)
    frames = two_people_frames(det)
    # One torch thread: far faster than torch's default on a small or busy machine.
    run = run_deepsort(det, sequence(tmp_path), frames=frames, embedder=MobileNetV2Embedder(threads=1))
    assert run.name == "deepsort" and run.frames == LENGTH and run.embed_seconds > 0
    ids = ids_by_frame(run)
    assert 1 not in ids and 2 not in ids  # n_init = 3: confirmed from the third frame
    # deep_sort_app.py's output rule bridges B's missed frame 5 with the Kalman prediction.
    assert ids[3] == [1, 2] and ids[5] == [1, 2] and ids[8] == [1, 2]
    assert set(run.rows[:, 1].astype(int)) == {1, 2}
    assert run.fps_with_embedder < run.tracker_fps


def test_deepsort_with_siamstream_embeddings(tmp_path: Path, reid_onnx: Path) -> None:
    pytest.importorskip("deep_sort_realtime", reason=f"the bench extra is not installed ({BENCH_INSTALL})")
    from lab.evaluation.mot_peers import EncoderEmbedder
    from pipeline.crops import box_crop_batch
    from pipeline.encoder import OnnxEncoder
    from pipeline.types import Detections

    det = det_file(tmp_path)
    frames = two_people_frames(det)
    encoder = OnnxEncoder(reid_onnx, device="cpu", threads=1)
    embedder = EncoderEmbedder(encoder)
    tlwh = det.frame_rows(1).tlwh
    feats, kept = embedder.embed(frames[0].image, tlwh)
    # exactly the vectors siamstream's tracker gets for these boxes
    xyxy = np.concatenate([tlwh[:, :2], tlwh[:, :2] + tlwh[:, 2:]], axis=1)
    ours = encoder.embed(box_crop_batch(frames[0], Detections(xyxy, np.ones(2), -np.ones(2)), encoder.input_size),
                         with_patches=False).vectors
    np.testing.assert_allclose(feats, ours, atol=1e-6)
    assert kept.tolist() == [0, 1]
    run = run_deepsort(det, sequence(tmp_path), frames=frames, embedder=embedder, name="deepsort-reid")
    assert run.name == "deepsort-reid" and run.crops == 2 * LENGTH - 1
    assert set(run.rows[:, 1].astype(int)) == {1, 2}
