"""`siamstream bank build` and `siamstream run` on the real conveyor video, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "configs" / "conveyor.toml"

pytestmark = pytest.mark.data


def siamstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_bank_build_then_run_on_conveyor(tmp_path: Path, shared_data: Callable[..., Path],
                                         pretrained_onnx: Path) -> None:
    video = shared_data("conveyor_video", "cutted.avi")
    model = f'encoder.model="{pretrained_onnx}"'
    bank = tmp_path / "bank"
    built = siamstream("bank", "build", "--config", str(CONFIG), "--source", str(video),
                       "--out", str(bank), "--set", model)
    assert built.returncode == 0, built.stderr
    info = json.loads(built.stdout.strip().splitlines()[-1])
    assert info["level"] == "patch" and info["crops"] > 50 and info["groups"] >= 4 and info["threshold"] > 0
    assert 0 < info["vectors"] < info["crops"] * 64  # a coreset of the good patch features

    out = tmp_path / "run"
    proc = siamstream("run", "--config", str(CONFIG), "--source", str(video), "--out", str(out),
                      "--set", model, "--set", f'anomaly.bank="{bank}"', "--set", "metrics.port=0")
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(last) == {"frames", "fps", "tracks", "flagged", "out"}
    assert last["frames"] == 535 and last["tracks"] >= 4 and last["fps"] > 0
    # Every output is written: one event line per flagged part, tracks in MOT format, the whole video.
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) == last["flagged"]
    assert len({e["track_id"] for e in events}) == len(events)
    for e in events:
        assert e["score"] > e["threshold"] and Path(e["evidence"]).is_file()
    rows = [line.split(",") for line in (out / "tracks.txt").read_text().splitlines()]
    assert rows and all(len(r) == 10 for r in rows)
    assert len({r[1] for r in rows}) >= 4
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 535


def test_sigterm_mid_run_flushes_every_sink(tmp_path: Path, shared_data: Callable[..., Path],
                                            pretrained_onnx: Path) -> None:
    import signal
    import time

    video = shared_data("conveyor_video", "cutted.avi")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(CONFIG), "--source",
         str(video), "--out", str(out), "--set", f'encoder.model="{pretrained_onnx}"', "--set", "metrics.port=0",
         "--set", "output.progress_every_s=0.2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.time() + 120
    for line in proc.stderr:  # wait until frames are flowing
        if ("frames " in line and "fps" in line) or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    last = json.loads(stdout.strip().splitlines()[-1])
    assert 0 < last["frames"] < 535
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == last["frames"]  # the video was finalised, every processed frame in it
    assert (out / "tracks.txt").stat().st_size > 0
    assert (out / "events.jsonl").exists()
