"""boxmot peers: the detections handed over, the environment's errors, and a real run in boxmot's environment."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lab.evaluation import boxmot_runner
from lab.evaluation.boxmot_peers import (
    APPEARANCE_TRACKERS,
    ENV_VAR,
    READY,
    TRACKERS,
    VERSION,
    boxmot_python,
    detection_array,
    peers_dir,
    run_boxmot,
)
from lab.evaluation.mot_peers import PeerUnavailableError
from lab.evaluation.motchallenge import MotSequence
from pipeline.config import load_config

from .test_mot_peers import LENGTH, det_file


def test_detection_array_is_the_det_file(tmp_path: Path) -> None:
    det = det_file(tmp_path)
    arr = detection_array(det, LENGTH)
    assert arr.shape == (2 * LENGTH - 1, 6)  # person B is missed in frame 5
    np.testing.assert_allclose(arr[0], [1, 13, 10, 20, 40, 0.95], rtol=1e-6)
    assert (arr[arr[:, 0] == 5][:, 1] == 25).all()
    assert detection_array(det, 2).shape == (4, 6)  # frames past the length are left out


def test_runner_reads_frame_lists_and_names_a_missing_video(tmp_path: Path) -> None:
    folder = tmp_path / "img1"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i + 1:06d}.png"), np.full((16, 24, 3), 40 * i, np.uint8))
    listing = tmp_path / "frames.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(folder.iterdir())))
    got = list(boxmot_runner.frames(f"@{listing}", 2))
    assert len(got) == 2 and got[1].shape == (16, 24, 3) and got[1][0, 0, 0] == 40
    with pytest.raises(SystemExit, match="cannot open the video"):
        list(boxmot_runner.frames(str(tmp_path / "missing.mp4"), 2))


def test_an_interpreter_without_boxmot_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    if importlib.util.find_spec("boxmot") is not None:
        pytest.skip("boxmot is importable in siamstream's own environment here")
    monkeypatch.setenv(ENV_VAR, sys.executable)  # siamstream's own Python: boxmot is not importable in it
    with pytest.raises(PeerUnavailableError, match=f"{ENV_VAR}=.*cannot import boxmot"):
        boxmot_python(tmp_path)


def test_without_set_up_the_manual_steps_are_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(PeerUnavailableError, match=f"boxmot-{VERSION}.*pip install torch==2.13.0") as info:
        boxmot_python(tmp_path / "peers", setup=False)
    assert ENV_VAR in str(info.value)


def _boxmot_env() -> Path:
    import os

    given = os.environ.get(ENV_VAR)
    if given:
        return Path(given)
    env = peers_dir(load_config(None).encoder.cache_dir) / f"boxmot-{VERSION}"
    if not (env / READY).is_file():
        pytest.skip(f"boxmot's environment is not set up ({env}); `siamstream bench mot` or .ci/run sets it up")
    return env / "bin" / "python"


def test_boxmot_trackers_run_in_their_environment(tmp_path: Path) -> None:
    python = _boxmot_env()
    det = det_file(tmp_path)
    video = tmp_path / "Tiny.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (200, 80))
    for t in range(1, LENGTH + 1):
        img = np.full((80, 200, 3), 30, np.uint8)
        for (x, y, w, h), colour in zip(det.frame_rows(t).tlwh.astype(int), ((0, 0, 220), (220, 200, 0)),
                                        strict=False):
            img[y:y + h, x:x + w] = colour
        writer.write(img)
    writer.release()
    seq = MotSequence(name="Tiny", root=tmp_path, frame_rate=10.0, length=LENGTH, width=200, height=80,
                      frames_uri=str(video), det_path=tmp_path / "det.txt", gt_path=None)
    folder = tmp_path / "img1"  # the same frames as an image folder, natural order (2 before 10)
    folder.mkdir()
    cap = cv2.VideoCapture(str(video))
    for t in range(1, LENGTH + 1):
        ok, img = cap.read()
        assert ok
        cv2.imwrite(str(folder / f"{t}.png"), img)
    cap.release()
    from_folder = run_boxmot(det, MotSequence(**{**seq.__dict__, "frames_uri": str(folder)}), python,
                             trackers=("botsort",))
    assert from_folder[0].frames == LENGTH and len(set(from_folder[0].rows[:, 1].astype(int))) == 2
    runs = run_boxmot(det, seq, python)
    assert [r.name for r in runs] == [f"boxmot-{t}" for t in TRACKERS]
    for run in runs:
        assert run.frames == LENGTH and run.tracker_seconds > 0 and run.rows.shape[1] == 7
        assert len(run.rows) > 0 and set(np.unique(run.rows[:, 0])) <= set(range(1, LENGTH + 1))
        # Two people, far apart, walking steadily: every tracker keeps two identities.
        assert len(set(run.rows[:, 1].astype(int))) == 2, run.name
    with pytest.raises(PeerUnavailableError, match="boxmot runner failed"):
        run_boxmot(det, MotSequence(**{**seq.__dict__, "frames_uri": str(tmp_path / "none.mp4")}), python)
    # The appearance trackers take the caller's embeddings: one per detection row; each person its own vector.
    dets = detection_array(det, LENGTH)
    embs = np.zeros((len(dets), 8), np.float32)
    embs[dets[:, 1] < 60, 0] = 1.0
    embs[dets[:, 1] >= 60, 1] = 1.0
    runs = run_boxmot(det, seq, python, APPEARANCE_TRACKERS, embeddings=embs)
    assert [r.name for r in runs] == [f"boxmot-{t}" for t in APPEARANCE_TRACKERS]
    for run in runs:
        assert run.frames == LENGTH and len(run.rows) > 0 and run.rows[:, 1].min() >= 1
        assert len(set(run.rows[:, 1].astype(int))) == 2, run.name
    with pytest.raises(PeerUnavailableError, match="needs --embs"):
        run_boxmot(det, seq, python, ("strongsort",))
    with pytest.raises(ValueError, match="embeddings for"):
        run_boxmot(det, seq, python, ("strongsort",), embeddings=embs[:3])


class _StubTracker:
    """Stands in for a boxmot tracker: echoes each detection as a track, id = its index + 1, as boxmot's numpy
    interface does (x1, y1, x2, y2, id, conf, cls, det_ind); nothing at all in frame 2."""

    def __init__(self, frame_rate: int) -> None:
        self.frame_rate = frame_rate
        self.frame = 0

    def update(self, dets: np.ndarray, image: np.ndarray) -> np.ndarray:
        self.frame += 1
        assert image.ndim == 3 and dets.shape[1] == 6
        if self.frame == 2:
            return np.asarray([])
        n = len(dets)
        return np.column_stack([dets[:, :4], np.arange(1, n + 1), dets[:, 4], np.zeros(n), np.arange(n)])


def test_runner_maps_boxmot_columns_to_mot_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    module = types.ModuleType("stub_boxmot")
    module.Stub = _StubTracker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "stub_boxmot", module)
    monkeypatch.setitem(boxmot_runner.TRACKERS, "stub", ("stub_boxmot", "Stub", {}))
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i + 1}.png")
        cv2.imwrite(str(images[-1]), np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "frames.txt").write_text("".join(f"{p}\n" for p in images))
    dets = np.array([[1, 5, 6, 10, 20, 0.9], [1, 50, 6, 10, 20, 0.8], [2, 6, 6, 10, 20, 0.9], [3, 7, 6, 10, 20, 0.7]])
    rows, seconds, count = boxmot_runner.run("stub", dets, f"@{tmp_path / 'frames.txt'}", 3, 7.0)
    assert count == 3 and seconds >= 0
    np.testing.assert_allclose(rows, [[1, 1, 5, 6, 10, 20, 0.9], [1, 2, 50, 6, 10, 20, 0.8],
                                      [3, 1, 7, 6, 10, 20, 0.7]], rtol=1e-6)
