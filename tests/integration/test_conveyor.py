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

from tests.media import annotated_frames

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "configs" / "conveyor.toml"

pytestmark = pytest.mark.data


def siamstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("cell_norm", [False, True])
def test_bank_build_then_run_on_conveyor(tmp_path: Path, shared_data: Callable[..., Path],
                                         pretrained_onnx: Path, cell_norm: bool) -> None:
    from pipeline.anomaly.bank import Bank

    video = shared_data("conveyor_video", "cutted.avi")
    model = f'encoder.model="{pretrained_onnx}"'
    bank = tmp_path / "bank"
    built = siamstream("bank", "build", "--config", str(CONFIG), "--source", str(video),
                       "--out", str(bank), "--set", model, "--set", f"bank.cell_norm={str(cell_norm).lower()}")
    assert built.returncode == 0, built.stderr
    info = json.loads(built.stdout.strip().splitlines()[-1])
    assert info["level"] == "patch" and info["crops"] > 50 and info["groups"] >= 4 and info["threshold"] > 0
    assert 0 < info["vectors"] < info["crops"] * 64  # a coreset of the good patch features
    assert len(Bank.load(bank).meta.cell_mean) == (64 if cell_norm else 0)

    out = tmp_path / "run"
    proc = siamstream("run", "--config", str(CONFIG), "--source", str(video), "--out", str(out),
                      "--set", model, "--set", f'anomaly.bank="{bank}"', "--set", "metrics.port=0")
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(last) == {"frames", "fps", "tracks", "flagged", "out"}
    assert last["frames"] == 535 and last["tracks"] >= 4 and last["fps"] > 0
    # Every object in the video is in the bank, so (nearly) none is flagged; distances judged against a per-cell
    # z-score threshold, or the reverse, would flag most of the 20-odd parts inspected.
    assert last["flagged"] <= 2
    # Every output is written: one event line per flagged part, tracks in MOT format, the whole video.
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) == last["flagged"]
    assert len({e["track_id"] for e in events}) == len(events)
    for e in events:
        assert e["score"] > e["threshold"] and Path(e["evidence"]).is_file()
    rows = [line.split(",") for line in (out / "tracks.txt").read_text().splitlines()]
    assert rows and all(len(r) == 10 for r in rows)
    assert len({r[1] for r in rows}) >= 4
    assert annotated_frames(out) == 535


def flat_parts_bank(folder: Path, model: Path) -> Path:
    """A bank of four flat grey "parts": every real part is far from it, so every inspected part raises an
    event within a few frames."""
    import numpy as np

    from pipeline import app
    from pipeline.config import Config, replace

    good = folder / "flat"
    good.mkdir()
    for i in range(4):
        assert cv2.imwrite(str(good / f"{i}.png"), np.full((128, 128, 3), 60 + 10 * i, np.uint8))
    cfg = replace(Config(), "encoder", model=str(model))
    encoder = app.build_encoder(cfg.encoder)
    bank = app.bank_from_samples(app.good_samples_from_images(good, encoder, cfg.bank.level), cfg, encoder,
                                 str(good))
    bank.save(folder / "bank")
    return folder / "bank"


def test_sigterm_mid_run_flushes_every_sink(tmp_path: Path, shared_data: Callable[..., Path],
                                            pretrained_onnx: Path) -> None:
    import re
    import signal
    import time

    from prometheus_client.parser import text_string_to_metric_families

    video = shared_data("conveyor_video", "cutted.avi")
    bank = flat_parts_bank(tmp_path, pretrained_onnx)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(CONFIG), "--source",
         str(video), "--out", str(out), "--set", f'encoder.model="{pretrained_onnx}"', "--set", "metrics.port=0",
         "--set", f'anomaly.bank="{bank}"', "--set", "output.progress_every_s=0.2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.time() + 120
    for line in proc.stderr:  # wait until frames are flowing and a part was flagged
        flagged = re.search(r"frames \d+\S* .* flagged (\d+)", line)
        if (flagged and int(flagged.group(1)) > 0) or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = json.loads(stdout.strip().splitlines()[-1])
    frames = last["frames"]
    assert 0 < frames < 535 and last["flagged"] > 0

    # The video was finalised, every processed frame in it.
    assert annotated_frames(out) == frames
    # One whole JSON object per line, one line per flagged part, each with its evidence crop.
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) == last["flagged"]
    assert len({e["track_id"] for e in events}) == len(events)
    for e in events:
        assert e["event"] == "part_flagged" and e["stream"] == "conveyor"
        assert e["frame_index"] < frames and e["score"] > e["threshold"] > 0
        assert Path(e["evidence"]).is_file()
    # Every MOT row complete, none past the last processed frame.
    rows = [line.split(",") for line in (out / "tracks.txt").read_text().splitlines()]
    assert rows
    for r in rows:
        assert len(r) == 10 and 1 <= int(r[0]) <= frames and int(r[1]) >= 1, r
        assert float(r[4]) > 0 and float(r[5]) > 0 and r[7:] == ["-1", "-1", "-1"], r
    # The final metrics agree with the summary and with each other.
    final = {(s.name, s.labels.get("stage", "")): s.value
             for family in text_string_to_metric_families((out / "metrics.prom").read_text())
             for s in family.samples if s.labels.get("stream") == "conveyor" and "le" not in s.labels}
    assert final[("siamstream_frames_processed_total", "")] == final[("siamstream_frames_read_total", "")] == frames
    assert final[("siamstream_frames_dropped_total", "")] == 0
    for stage in ("read", "detect", "crop", "encode", "track", "anomaly", "sink"):
        assert final[("siamstream_stage_latency_seconds_count", stage)] == frames
    assert final[("siamstream_frame_latency_seconds_count", "")] == frames
    assert final[("siamstream_encoder_batch_size_count", "")] == frames
    assert final[("siamstream_parts_flagged_total", "")] == last["flagged"]
    assert final[("siamstream_parts_inspected_total", "")] >= last["flagged"]
    assert final[("siamstream_tracks_started_total", "")] == final[("siamstream_tracks_ended_total", "")] \
        == last["tracks"]
    assert final[("siamstream_active_tracks", "")] == 0  # every track ended when the run stopped
