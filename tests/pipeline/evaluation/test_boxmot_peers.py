"""boxmot peers: the detections handed over, the environment's errors, and a real run in boxmot's environment."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.evaluation import boxmot_runner
from pipeline.evaluation.boxmot_peers import (
    ENV_VAR,
    READY,
    TRACKERS,
    VERSION,
    boxmot_python,
    detection_array,
    peers_dir,
    run_boxmot,
)
from pipeline.evaluation.mot_peers import PeerUnavailableError
from pipeline.evaluation.motchallenge import MotSequence

from .test_mot_peers import LENGTH, det_file


def test_detection_array_is_the_det_file(tmp_path: Path) -> None:
    det = det_file(tmp_path)
    arr = detection_array(det, LENGTH)
    assert arr.shape == (2 * LENGTH - 1, 6)  # person B is missed in frame 5
    np.testing.assert_allclose(arr[0], [1, 13, 10, 20, 40, 0.95], rtol=1e-6)
    assert (arr[arr[:, 0] == 5][:, 1] == 25).all()
    assert detection_array(det, 2).shape == (4, 6)  # frames past the length are left out


def test_runner_reads_videos_and_image_folders(tmp_path: Path) -> None:
    folder = tmp_path / "img1"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i + 1:06d}.png"), np.full((16, 24, 3), 40 * i, np.uint8))
    got = list(boxmot_runner.frames(str(folder), 2))
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
    runs = run_boxmot(det, seq, python)
    assert [r.name for r in runs] == [f"boxmot-{t}" for t in TRACKERS]
    for run in runs:
        assert run.frames == LENGTH and run.tracker_seconds > 0 and run.rows.shape[1] == 7
        assert len(run.rows) > 0 and set(np.unique(run.rows[:, 0])) <= set(range(1, LENGTH + 1))
        # Two people, far apart, walking steadily: every tracker keeps two identities.
        assert len(set(run.rows[:, 1].astype(int))) == 2, run.name
    with pytest.raises(PeerUnavailableError, match="boxmot runner failed"):
        run_boxmot(det, MotSequence(**{**seq.__dict__, "frames_uri": str(tmp_path / "none.mp4")}), python)
