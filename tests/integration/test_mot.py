"""`siamstream eval mot` on a real MOT15 sequence (TUD-Campus, 71 frames), through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.data


def test_eval_mot_tracks_scores_and_writes_outputs(tmp_path: Path, shared_data: Callable[..., Path],
                                                   pretrained_onnx: Path) -> None:
    seq = shared_data("mot15", "TUD-Campus")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "eval", "mot", "--seq", str(seq), "--out",
                           str(tmp_path), "--set", f'encoder.model="{pretrained_onnx}"', "--set",
                           'encoder.device="cpu"'], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(figures) == {"HOTA", "MOTA", "IDF1", "IDSW", "protocol"} and figures["protocol"] == "MOT15"
    # Far above an empty or random output (HOTA 0), as every published tracker on these detections is
    assert figures["HOTA"] > 30 and figures["IDF1"] > 40 and figures["MOTA"] > 30
    speed = next(line for line in proc.stdout.splitlines() if line.startswith("speed"))
    det_rows = np.loadtxt(seq / "det" / "det.txt", delimiter=",", ndmin=2)
    assert f"({len(det_rows)} crops, encoder on CPUExecutionProvider)" in speed  # one crop per detection
    rows = np.loadtxt(tmp_path / "TUD-Campus.txt", delimiter=",", ndmin=2)
    assert rows.shape[1] == 10 and rows[:, 0].min() >= 1 and rows[:, 0].max() <= 71
    assert len(np.unique(rows[:, 1])) >= 5  # 8 people walk through
    # Offline clean-up (the default): no track has a gap it was found again after, within max_lost_seconds (2 s).
    for tid in np.unique(rows[:, 1]):
        frames = np.sort(rows[rows[:, 1] == tid, 0])
        assert not ((np.diff(frames) > 1) & (np.diff(frames) <= 2 * 25 + 1)).any()
    online = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "eval", "mot", "--seq", str(seq), "--out",
                             str(tmp_path / "online"), "--set", f'encoder.model="{pretrained_onnx}"', "--set",
                             "output.mot_fill_gaps=false"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert online.returncode == 0, online.stderr
    online_rows = np.loadtxt(tmp_path / "online" / "TUD-Campus.txt", delimiter=",", ndmin=2)
    assert len(online_rows) < len(rows)  # the per-frame output misses the frames the clean-up adds
    assert cv2.imread(str(tmp_path / "timeline.png")) is not None
    video = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 71
    video.release()


def mot17_copy(src: Path, seq: Path) -> np.ndarray:
    """``src`` (a MOT15 sequence) at ``seq`` as MOT17 lays one out (ground truth ``conf,class,visibility``), its
    longest-seen walker marked a static person (class 7, conf 0); returns the original ground truth."""
    (seq / "det").mkdir(parents=True)
    (seq / "gt").mkdir()
    (seq / "det" / "det.txt").write_bytes((src / "det" / "det.txt").read_bytes())
    (seq / "TUD-Campus.mp4").symlink_to(src / "TUD-Campus.mp4")
    (seq / "seqinfo.ini").write_text((src / "seqinfo.ini").read_text().replace("name=TUD-Campus",
                                                                               f"name={seq.name}"))
    gt = np.loadtxt(src / "gt" / "gt.txt", delimiter=",", ndmin=2)
    static = np.bincount(gt[:, 1].astype(int)).argmax()  # the walker seen longest
    classed = np.column_stack([gt[:, :6], np.ones(len(gt)), np.ones(len(gt)), np.ones(len(gt))])
    classed[gt[:, 1] == static, 6:8] = (0, 7)
    np.savetxt(seq / "gt" / "gt.txt", classed, fmt="%.6g", delimiter=",")
    return gt


def test_eval_mot_scores_a_mot17_layout_sequence_by_the_mot17_protocol(
        tmp_path: Path, shared_data: Callable[..., Path], pretrained_onnx: Path) -> None:
    """The MOT17 evaluation drops the tracker's boxes on a static person, where MOT15 counts them wrong."""
    from lab.evaluation.mot_metrics import evaluate
    from lab.evaluation.motchallenge import load_sequence

    seq = tmp_path / "MOT17-TUD"
    gt = mot17_copy(shared_data("mot15", "TUD-Campus"), seq)

    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "eval", "mot", "--seq", str(seq), "--out",
                           str(tmp_path / "out"), "--set", f'encoder.model="{pretrained_onnx}"', "--video-frames",
                           "0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["protocol"] == "MOT17"
    assert "TrackEval, MOT17 protocol" in proc.stdout
    sequence = load_sequence(seq)
    tracks = tmp_path / "out" / "MOT17-TUD.txt"
    mot17, mot15 = evaluate(None, tracks, sequence), evaluate(None, tracks, sequence, protocol="MOT15")
    assert (mot17.protocol, mot15.protocol) == ("MOT17", "MOT15")
    assert mot17.gt_ids == mot15.gt_ids == len(np.unique(gt[:, 1])) - 1
    assert mot17.fp < mot15.fp and mot17.tp == mot15.tp  # the static person's boxes: removed, not false positives
    assert mot17.fp - mot17.motmetrics.fp == 0 and mot15.fp - mot15.motmetrics.fp == 0


def test_a_protocol_the_ground_truth_cannot_have_is_refused_before_tracking(
        tmp_path: Path, shared_data: Callable[..., Path]) -> None:
    seq = shared_data("mot15", "TUD-Campus")  # MOT15 ground truth: no class column
    for command in (["eval", "mot", "--out", str(tmp_path / "out")], ["bench", "mot", "--peers", "iou"]):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", *command, "--seq", str(seq),
                               "--protocol", "MOT17"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "MOT17 protocol needs ground truth with a class column" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was tracked or written


def test_bench_mot_on_the_users_own_sequences(tmp_path: Path, shared_data: Callable[..., Path],
                                             pretrained_onnx: Path) -> None:
    seq = tmp_path / "MOT17-TUD"
    mot17_copy(shared_data("mot15", "TUD-Campus"), seq)

    def bench(*args: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "bench", "mot", "--seq", str(seq),
                               "--peers", "iou", "--set", f'encoder.model="{pretrained_onnx}"', *args], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"stdout": proc.stdout, **figures}

    own = bench("--seq", str(shared_data("mot15", "TUD-Campus")))
    assert set(own) == {"stdout", "MOT17-TUD", "TUD-Campus"}
    assert {"siamstream", "iou"} <= set(own["MOT17-TUD"]) and {"siamstream", "iou"} <= set(own["TUD-Campus"])
    assert "MOT17-TUD MOT17 protocol, TUD-Campus MOT15 protocol" in own["stdout"]
    # Forced to MOT15, the same rows count the boxes on the static person as false positives.
    forced = bench("--protocol", "MOT15")
    assert "MOT17-TUD MOT15 protocol" in forced["stdout"]
    for tracker in ("siamstream", "iou"):
        assert own["MOT17-TUD"][tracker]["MOTA"] > forced["MOT17-TUD"][tracker]["MOTA"]

    (seq / "gt" / "gt.txt").unlink()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "bench", "mot", "--seq", str(seq), "--peers",
                           "iou"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "no gt/gt.txt, nothing to score" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_tracking_a_sequence_with_the_patch_features_inside_each_box(shared_data: Callable[..., Path],
                                                                    pretrained_onnx: Path) -> None:
    from lab.evaluation.mot_metrics import evaluate
    from lab.evaluation.mot_run import track_sequence
    from lab.evaluation.motchallenge import load_sequence
    from pipeline import app
    from pipeline.config import Config, replace
    from pipeline.detect.motchallenge import MotDetectionFile
    from pipeline.tracking.tracker import Tracker

    class Recording(Tracker):
        """The real tracker, noting the width of the vectors it is given."""

        dims: ClassVar[set[int]] = set()

        def update(self, detections, embeddings, timestamp, **kwargs):  # type: ignore[no-untyped-def]
            self.dims.add(embeddings.dim)
            return super().update(detections, embeddings, timestamp, **kwargs)

    seq = load_sequence(shared_data("mot15", "TUD-Campus"))
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    tracker = Recording()
    run = track_sequence(seq, MotDetectionFile(seq.det_path), encoder, tracker, appearance_region="box")
    assert tracker.dims == {encoder.patch_dim} and encoder.patch_dim != encoder.embedding_dim
    scores = evaluate(None, run.rows, seq)
    assert scores.hota > 30 and scores.idf1 > 40 and len(np.unique(run.rows[:, 1])) >= 5


@pytest.mark.parametrize("model", ["built-in", "file"])
def test_eval_mot_refuses_box_appearance_without_a_patch_output_before_writing(
        tmp_path: Path, shared_data: Callable[..., Path], model: str) -> None:
    from pipeline import app
    from pipeline.config import EncoderConfig

    seq = shared_data("mot15", "TUD-Campus")
    if model == "built-in":  # caught when the config is read
        encoder_args = ["--set", "encoder.patch_stage=0", "--set", 'bank.level="global"']
        message, fix = "appearance_region = 'box' needs patch features", "appearance_region = 'crop'"
    else:  # an ONNX model without a 'patches' output: caught once the model is loaded
        onnx = app.build_encoder(EncoderConfig(patch_stage=0, cache_dir=str(tmp_path / "cache"))).path
        encoder_args = ["--set", f'encoder.model="{onnx}"']
        message, fix = f"the encoder {onnx} has none", 'set appearance_region = "crop"'
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "eval", "mot", "--seq", str(seq), "--out",
                           str(tmp_path / "out"), *encoder_args, "--set", 'tracker.appearance_region="box"'], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and fix in proc.stderr
    assert not (tmp_path / "out" / "annotated.mp4").exists()


def test_eval_mot_on_a_folder_that_is_not_a_sequence(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "eval", "mot", "--seq", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "seqinfo.ini" in proc.stderr


def test_run_tracks_a_sequence_with_detections_read_from_its_det_file(tmp_path: Path,
                                                                      shared_data: Callable[..., Path],
                                                                      pretrained_onnx: Path) -> None:
    """`[detector] kind = "file"`: `siamstream run` on PETS09-S2L1's video with its public detections."""
    from pipeline.cli import main

    seq = shared_data("mot15", "PETS09-S2L1")
    out = tmp_path / "out"
    code = main(["run", "--config", str(REPO / "config.toml"), "--source", str(seq / "PETS09-S2L1_480x360.avi"),
                 "--out", str(out), "--set", 'detector.kind="file"',
                 "--set", f'detector.file="{seq / "det" / "det.txt"}"',
                 "--set", f'encoder.model="{pretrained_onnx}"', "--set", "source.max_frames=40",
                 "--set", "metrics.enabled=false", "--set", "output.video=false"])
    assert code == 0
    rows = [line.split(",") for line in (out / "tracks.txt").read_text().splitlines()]
    assert rows and all(1 <= int(r[0]) <= 40 for r in rows)
    assert len({r[1] for r in rows}) >= 3  # several people followed


def test_a_detections_file_that_is_missing_is_one_line_at_start(tmp_path: Path, pretrained_onnx: Path,
                                                               shared_data: Callable[..., Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    video = shared_data("mot15", "PETS09-S2L1", "PETS09-S2L1_480x360.avi")
    code = main(["run", "--config", str(REPO / "config.toml"), "--source", str(video), "--out", str(tmp_path / "o"),
                 "--set", f'encoder.model="{pretrained_onnx}"', "--set", "metrics.enabled=false",
                 "--set", 'detector.kind="file"', "--set", f'detector.file="{tmp_path / "nope.txt"}"'])
    assert code == 2
    assert "nope.txt" in capsys.readouterr().err
