"""What a run leaves in its output folder when another process wants it, when the run is killed, and when the run
ends on an error: one writer per folder, a stale lock taken over, metrics.prom written on every exit path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.outlock import LOCK_NAME
from tests.media import annotated_frames, square_video, video_frames

REPO = Path(__file__).resolve().parents[2]
BASE = ["--config", str(REPO / "config.toml"), "--set", "metrics.enabled=false", "--set", "output.progress_every_s=0",
        "--set", "detector.min_area=100"]

HOLD = """
import sys, time
from pathlib import Path
from pipeline.outlock import OutputLock
lock = OutputLock(Path(sys.argv[1]), "siamstream run")
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def siamstream(*args: str, model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--set", f'encoder.model="{model}"', *BASE],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def final_metrics(path: Path) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(path.read_text()) for s in f.samples}


def test_an_output_folder_in_use_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(
        tmp_path: Path, pretrained_onnx: Path) -> None:
    video = square_video(tmp_path / "v.avi")
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = siamstream("run", "--source", str(video), "--out", str(out), model=pretrained_onnx)
        assert refused.returncode == 2, refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        assert "Traceback" not in refused.stderr
        assert last.startswith("siamstream: error: ") and f"in use by pid {holder.pid}" in last, last
        assert "--out" in last
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the holder's folder touched
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
        holder.wait()
    assert str(holder.pid) in (out / LOCK_NAME).read_text()  # the stale owner is still written there
    ran = siamstream("run", "--source", str(video), "--out", str(out), model=pretrained_onnx)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.strip().splitlines()[-1])["frames"] == 120
    assert (out / LOCK_NAME).read_text() == ""  # released at the end


def test_two_real_runs_on_one_folder_one_is_refused_and_the_other_is_intact(tmp_path: Path,
                                                                          pretrained_onnx: Path) -> None:
    long_video = square_video(tmp_path / "long.avi", frames=1500)
    other = square_video(tmp_path / "other.avi", frames=60)
    out = tmp_path / "same"
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--source", str(long_video), "--out",
                              str(out), "--set", f'encoder.model="{pretrained_onnx}"', *BASE], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / LOCK_NAME).exists() and (out / LOCK_NAME).read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the folder"
            time.sleep(0.05)
        second = siamstream("run", "--source", str(other), "--out", str(out), model=pretrained_onnx)
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
    assert first.returncode == 0, stderr
    assert b"\0" not in (out / "tracks.txt").read_bytes()
    assert annotated_frames(out) == 1500


def test_a_run_that_ends_on_an_error_still_writes_metrics_prom(tmp_path: Path, pretrained_onnx: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(30):
        image = np.full((64, 96, 3), 40, np.uint8)
        image[20:44, 5 + i:29 + i] = 220
        cv2.imwrite(str(folder / f"f{i:03d}.png"), image)
    (folder / "f020.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    proc = siamstream("run", "--source", str(folder), "--out", str(out), model=pretrained_onnx)
    assert proc.returncode == 2, proc.stderr
    assert "f020.png" in proc.stderr.strip().splitlines()[-1]
    final = final_metrics(out / "metrics.prom")
    assert final["siamstream_frames_processed_total"] == 20
    assert (out / LOCK_NAME).read_text() == ""


def test_metrics_prom_that_cannot_be_written_is_said_and_the_run_error_kept(tmp_path: Path,
                                                                          pretrained_onnx: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.prom").mkdir()  # a directory where the file goes: the snapshot cannot be renamed over it
    proc = siamstream("run", "--source", str(folder), "--out", str(out), model=pretrained_onnx)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "a.png" in lines[-1]  # the error that ended the run stays the one reported
    assert any("metrics.prom" in line and "cannot write" in line for line in lines[:-1]), proc.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX processes")
def test_lock_file_left_by_a_killed_run_is_stale(tmp_path: Path) -> None:
    from pipeline.outlock import OutputLock
    from pipeline.sinks import SinkError

    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "h", "command": "x", "started": 0}))
    with OutputLock(out, "test"):  # nobody holds the flock: the owner written in the file is stale
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(SinkError, match=f"in use by pid {os.getpid()}"):
            OutputLock(out, "second").acquire()


def test_kill_9_mid_run_loses_at_most_the_segment_being_written(tmp_path: Path, pretrained_onnx: Path) -> None:
    video = square_video(tmp_path / "long.avi", frames=3000)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--source", str(video), "--out", str(out),
                            "--set", f'encoder.model="{pretrained_onnx}"', "--set", "output.video_segment_s=2",
                            *BASE], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        index = out / "annotated" / "segments.jsonl"
        deadline = time.monotonic() + 120
        while not (index.exists() and len(index.read_text().splitlines()) >= 6):  # past tracks.txt's first flush
            assert run.poll() is None and time.monotonic() < deadline, "no six segments were closed"
            time.sleep(0.05)
    finally:
        run.kill()  # SIGKILL: nothing is flushed or closed
        run.wait()
    assert run.returncode == -signal.SIGKILL
    closed = [json.loads(line) for line in index.read_text().splitlines()]  # whole lines only
    assert len(closed) >= 6
    for entry in closed:  # every closed segment plays, with the frames the index says
        assert video_frames(out / "annotated" / entry["file"]) == entry["frames"] == 20
    assert [e["first_frame"] for e in closed] == [20 * i for i in range(len(closed))]
    rows = (out / "tracks.txt").read_text()  # flushed every 100 frames, in whole lines
    assert rows.endswith("\n") and all(len(r.split(",")) == 10 for r in rows.splitlines())
    assert int(rows.splitlines()[-1].split(",")[0]) >= 90
    # the next run takes the folder over (the kernel released the dead run's lock) and replaces its outputs
    again = siamstream("run", "--source", str(square_video(tmp_path / "short.avi", frames=30)), "--out", str(out),
                       "--set", "output.video_segment_s=2", model=pretrained_onnx)
    assert again.returncode == 0, again.stderr
    assert [json.loads(x)["frames"] for x in index.read_text().splitlines()] == [20, 10]
    assert annotated_frames(out) == 30
