"""Cameras change without a restart: `siamstream run` with [[streams]] of real MJPEG cameras on 127.0.0.1, the
stream list edited and SIGHUP sent. Added streams start, removed ones flush and close, the unchanged one goes on
with no frame lost and no restart; /readyz lists every stream."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.alert_servers import free_port
from tests.camera_servers import Camera
from tests.engine_runs import running, samples, wait_for, write_streams

REPO = Path(__file__).resolve().parents[2]
def test_sighup_adds_and_removes_cameras_and_the_unchanged_one_loses_nothing(
        tmp_path: Path, pretrained_onnx: Path, cameras: Callable[[int], Camera]) -> None:
    cam1, cam2, cam3 = cameras(1), cameras(2), cameras(3)
    port = free_port()
    cfg = tmp_path / "streams.toml"
    write_streams(cfg, pretrained_onnx, port, {"cam1": cam1.url, "cam2": cam2.url})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("cam1 and cam2 running", lambda: running(port, {"cam1", "cam2"}), proc)
        wait_for("frames on both", lambda: min(samples(port, "siamstream_frames_processed_total").values()) >= 10, proc)
        before = samples(port, "siamstream_frames_processed_total")["cam1"]

        write_streams(cfg, pretrained_onnx, port, {"cam1": cam1.url, "cam3": cam3.url})  # cam2 out, cam3 in
        proc.send_signal(signal.SIGHUP)
        wait_for("cam1 and cam3 running", lambda: running(port, {"cam1", "cam3"}), proc)
        wait_for("frames on cam3", lambda: samples(port, "siamstream_frames_processed_total").get("cam3", 0) >= 10,
              proc)
        # cam1 went on: its count only grew, nothing was dropped, and it was never restarted
        processed = samples(port, "siamstream_frames_processed_total")
        assert processed["cam1"] > before
        assert samples(port, "siamstream_frames_dropped_total")["cam1"] == 0
        assert samples(port, "siamstream_stream_up") == {"cam1": 1.0, "cam2": 0.0, "cam3": 1.0}

        # cam3 changed: it alone restarts with its new settings; its first run's outputs are kept beside
        write_streams(cfg, pretrained_onnx, port, {"cam1": cam1.url, "cam3": cam3.url})
        cfg.write_text(cfg.read_text() + "[streams.tracker]\nmin_hits = 2\n")
        proc.send_signal(signal.SIGHUP)
        wait_for("cam3 restarted", lambda: len(list(out.glob("cam3.*"))) == 1 and running(port, {"cam1", "cam3"}), proc)
        assert samples(port, "siamstream_frames_dropped_total")["cam1"] == 0

        write_streams(cfg, pretrained_onnx, port, {"cam1": cam1.url, "cam3": "not a source"})
        cfg.write_text(cfg.read_text() + "\n[tracker]\nmin_hitz = 3\n")  # a broken config: nothing changes
        proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert running(port, {"cam1", "cam3"})
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "reload: 1 stream(s) added, 1 removed, 0 changed, 1 unchanged" in stderr
    assert "reload: 0 stream(s) added, 0 removed, 1 changed, 1 unchanged" in stderr
    assert "min_hitz" in stderr and "the running streams stay as they are" in stderr
    doc = json.loads(stdout.strip().splitlines()[-1])
    assert set(doc["streams"]) == {"cam1", "cam3"} and [e["name"] for e in doc["earlier"]] == ["cam2", "cam3"]
    assert doc["earlier"][0]["state"] == "stopped" and doc["earlier"][0]["frames"] >= 10
    assert doc["streams"]["cam1"]["frames"] >= processed["cam1"]
    kept = list(out.glob("cam3.*"))
    assert len(kept) == 1 and (kept[0] / "tracks.txt").exists()
    for name in ("cam1", "cam2", "cam3"):  # each flushed its own folder
        assert (out / name / "tracks.txt").exists() and (out / name / "events.jsonl").exists()
    assert (out / "metrics.prom").exists()


def test_a_changed_config_file_is_read_again_without_a_signal(
        tmp_path: Path, pretrained_onnx: Path, cameras: Callable[[int], Camera]) -> None:
    """As a Kubernetes ConfigMap update does: the file's content changes (here: replaced by a rename, as the
    kubelet's symlink swap and most editors do) and no signal comes."""
    cam1, cam2 = cameras(1), cameras(2)
    port = free_port()
    cfg = tmp_path / "streams.toml"
    watch = "[fleet]\nwatch_config_s = 0.2\n"
    write_streams(cfg, pretrained_onnx, port, {"cam1": cam1.url}, extra=watch)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg), "--out",
                             str(tmp_path / "out")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for("cam1 running", lambda: running(port, {"cam1"}), proc)
        new = tmp_path / "streams.new.toml"
        write_streams(new, pretrained_onnx, port, {"cam1": cam1.url, "cam2": cam2.url}, extra=watch)
        new.replace(cfg)
        wait_for("cam2 started by the file change", lambda: running(port, {"cam1", "cam2"}), proc, timeout_s=60)
        assert samples(port, "siamstream_frames_dropped_total")["cam1"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"{cfg} changed: reading the stream list again" in stderr
    assert "reload: 1 stream(s) added, 0 removed, 0 changed, 1 unchanged" in stderr
