"""Faults a deployed `siamstream run` meets, reproduced for real: a network camera that drops out, stalls or
never comes back; an output disk that is read-only or fills up mid-run.

The camera is an MJPEG-over-HTTP server on 127.0.0.1 (what many IP cameras serve), run by the test, sending
the frames of the real conveyor video; the pipeline reads it through OpenCV's FFmpeg backend like any
``http://`` source. Full and read-only disks are small tmpfs mounts (they need root with CAP_SYS_ADMIN; the
tests say so and skip elsewhere) and ``/dev/full``, which fails every write with ENOSPC for any user.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.sinks import EventsJsonlSink, MotTxtSink, SinkError
from pipeline.types import AnomalyEvent, Detections, Frame, FrameResult, TrackObservation, TrackState
from tests.camera_servers import send_jpeg, serve_mjpeg
from tests.media import annotated_frames, square_video

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "configs" / "conveyor.toml"
FPS = 25.0


# ---------------------------------------------------------------- an IP camera on 127.0.0.1


class MjpegCamera:
    """JPEG frames as an HTTP multipart stream (``multipart/x-mixed-replace``) at ``fps``, on 127.0.0.1.

    The frames continue across connections: frame ``i`` of the stream is ``jpegs[i % len(jpegs)]``. After
    ``fault_after`` frames one fault happens, once:

    * ``"outage"``: the connection is closed and the port stops listening; after ``outage_s`` seconds (never
      when None) the camera listens on the same port again.
    * ``"stall"``: the connection stays open but sends nothing more, as a hung camera does; new
      connections are served.
    """

    def __init__(self, jpegs: list[bytes], fault: str, fault_after: int, outage_s: float | None = None,
                 fps: float = FPS) -> None:
        self.jpegs = jpegs
        self.fault = fault
        self.fault_after = fault_after
        self.outage_s = outage_s
        self.fps = fps
        self.sent = 0
        self.faulted = threading.Event()
        self.recovered = threading.Event()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._server = self._listen(0)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"

    def _listen(self, port: int) -> ThreadingHTTPServer:
        return serve_mjpeg(self._stream, port)

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        while not self.closed.is_set():
            with self._lock:
                fault_now = self.sent == self.fault_after and not self.faulted.is_set()
                if fault_now:
                    self.faulted.set()
                else:
                    index = self.sent
                    self.sent += 1
            if fault_now:
                if self.fault == "outage":
                    threading.Thread(target=self._outage, daemon=True).start()
                else:
                    self.closed.wait()  # hung: the connection stays open, silent
                return
            send_jpeg(handler, self.jpegs[index % len(self.jpegs)])
            time.sleep(1.0 / self.fps)

    def _outage(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.outage_s is None or self.closed.wait(self.outage_s):
            return
        self._server = self._listen(self.port)
        self.recovered.set()

    def close(self) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def conveyor_jpegs(shared_data: Callable[..., Path]) -> list[bytes]:
    """The frames of the real conveyor video (535 frames, 220 x 480), JPEG-encoded as a camera sends them."""
    cap = cv2.VideoCapture(str(shared_data("conveyor_video", "cutted.avi")))
    jpegs = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        jpegs.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    cap.release()
    assert len(jpegs) == 535
    return jpegs


@pytest.fixture
def camera(conveyor_jpegs: list[bytes]) -> Iterator[Callable[..., MjpegCamera]]:
    made: list[MjpegCamera] = []

    def make(fault: str, fault_after: int, outage_s: float | None = None) -> MjpegCamera:
        made.append(MjpegCamera(conveyor_jpegs, fault, fault_after, outage_s))
        return made[-1]

    yield make
    for cam in made:
        cam.close()


# ---------------------------------------------------------------- siamstream run, watched while it runs


class Run:
    """``siamstream run`` in a subprocess; stdout and stderr are each collected on a thread (one reader per
    pipe: ``communicate()`` would compete with the stderr thread and split the log), stderr gives the metrics
    port."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.port: int | None = None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            if found:
                self.port = int(found.group(1))

    def metrics(self) -> dict[str, float]:
        """The live ``/metrics``: sample name (labels other than ``stream`` folded in) -> value."""
        assert self.port is not None
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        return samples(body)

    def finish(self, timeout_s: float = 120) -> tuple[int, str, str]:
        self.proc.wait(timeout=timeout_s)
        self._reader.join(10)
        self._out_reader.join(10)
        return self.proc.returncode, "".join(self.stdout_lines), "".join(self.stderr_lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "stream")
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def mot_rows(path: Path) -> list[list[str]]:
    """Every line of a MOT file, checked complete: 10 fields, numbers where numbers belong."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    for row in rows:
        assert len(row) == 10, row
        assert int(row[0]) >= 1 and int(row[1]) >= 1 and float(row[4]) > 0 and float(row[5]) > 0, row
        assert row[7:] == ["-1", "-1", "-1"], row
    return rows


def assert_one_line_error(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("siamstream: error: "), stderr
    for needle in needles:
        assert needle in last, last
    return last


def live_args(url: str, out: Path, model: Path, *sets: str) -> list[str]:
    args = ["--config", str(CONFIG), "--source", url, "--out", str(out), "--set", f'encoder.model="{model}"',
            "--set", "metrics.port=0", "--set", "source.queue_size=128", "--set", "source.reconnect_initial_s=0.2",
            "--set", "source.reconnect_max_s=0.5", "--set", "output.progress_every_s=0.5"]
    for s in sets:
        args += ["--set", s]
    return args


# ---------------------------------------------------------------- the camera drops out


@pytest.mark.data
def test_camera_outage_then_back_the_run_reconnects_and_goes_on(camera: Callable[..., MjpegCamera], tmp_path: Path,
                                                                pretrained_onnx: Path) -> None:
    # 40 frames, 3 s with the port closed, then the stream continues; the run stops after 100 frames read.
    # The 128-frame queue holds every frame the run reads, so none is dropped however slow the pipeline.
    cam = camera("outage", fault_after=40, outage_s=3.0)
    out = tmp_path / "run"
    run = Run(*live_args(cam.url, out, pretrained_onnx, "source.max_frames=100"))
    try:
        assert cam.faulted.wait(60), "the run never read the stream"
        wait_for(lambda: run.port is not None, 30, "the metrics endpoint")
        time.sleep(1.0)  # well inside the outage
        assert not cam.recovered.is_set()
        during = run.metrics()
        assert during["siamstream_source_reconnects_total"] == 0
        assert during["siamstream_frames_read_total"] <= 40
        # The run is alive and says what it runs on while the camera is away.
        info = [k for k in during if k.startswith("siamstream_encoder_info{")]
        assert len(info) == 1 and re.search(r"provider=\w+ExecutionProvider", info[0]), info
        assert any(k.startswith("siamstream_build_info{version=") for k in during)
        assert "siamstream_source_queue_depth" in during
        assert cam.recovered.wait(10)
        code, stdout, stderr = run.finish()
    finally:
        run.kill()
    assert code == 0, stderr
    assert "dropped 0, reconnects 1" in stdout
    assert json.loads(stdout.strip().splitlines()[-1])["frames"] == 100
    assert "reconnected" in stderr
    final = samples((out / "metrics.prom").read_text())
    assert final["siamstream_source_reconnects_total"] == 1
    assert final["siamstream_frames_read_total"] == final["siamstream_frames_processed_total"] == 100
    assert final["siamstream_frames_processed_total"] > during["siamstream_frames_processed_total"]
    assert final["siamstream_frames_dropped_total"] == 0 == final["siamstream_source_queue_depth"]
    assert annotated_frames(out) == 100  # frames from both sides of the outage
    mot_rows(out / "tracks.txt")


@pytest.mark.data
def test_camera_that_never_comes_back_ends_the_run_with_one_line_and_flushed_outputs(
        camera: Callable[..., MjpegCamera], tmp_path: Path, pretrained_onnx: Path) -> None:
    cam = camera("outage", fault_after=30, outage_s=None)
    out = tmp_path / "run"
    run = Run(*live_args(cam.url, out, pretrained_onnx, "source.reconnect_attempts=3"))
    try:
        code, _, stderr = run.finish()
    finally:
        run.kill()
    assert code == 2, stderr
    assert_one_line_error(stderr, cam.url, "stopped delivering frames", "3 consecutive attempts")
    # Every frame the camera sent was queued, processed and written before the error was raised.
    assert annotated_frames(out) == 30
    rows = mot_rows(out / "tracks.txt")
    assert all(int(r[0]) <= 30 for r in rows)


@pytest.mark.data
def test_camera_that_hangs_is_reopened_after_the_read_timeout(camera: Callable[..., MjpegCamera], tmp_path: Path,
                                                              pretrained_onnx: Path) -> None:
    # The connection stays open and silent: only the read timeout (10 s) can tell. Then the camera serves
    # a new connection normally.
    cam = camera("stall", fault_after=30)
    out = tmp_path / "run"
    run = Run(*live_args(cam.url, out, pretrained_onnx, "source.max_frames=60"))
    try:
        code, stdout, stderr = run.finish()
    finally:
        run.kill()
    assert code == 0, stderr
    assert "dropped 0, reconnects 1" in stdout
    final = samples((out / "metrics.prom").read_text())
    assert final["siamstream_source_reconnects_total"] == 1
    assert final["siamstream_frames_processed_total"] == 60
    assert annotated_frames(out) == 60


# ---------------------------------------------------------------- the output disk


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(name, size_kib, read_only=False)``: a fresh tmpfs mounted at ``tmp_path / name``."""
    mounted: list[Path] = []

    def mount(name: str, size_kib: int, read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        options = f"size={size_kib}k,mode=0755" + (",ro" if read_only else "")
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "siamstream-test", str(where)],
                                  capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            pytest.skip("no mount command: a small or read-only file system cannot be made here")
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({proc.stderr.strip()}): a full or read-only disk needs root "
                        f"with CAP_SYS_ADMIN")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def tiny_video(path: Path, n: int = 3) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    for i in range(n):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize(("sub", "problem"), [("", "not writable"), ("run", "cannot create output directory")])
def test_read_only_output_disk_is_a_one_line_error_before_any_work(tmpfs: Callable[..., Path], tmp_path: Path,
                                                                   sub: str, problem: str) -> None:
    disk = tmpfs("ro", 64, read_only=True)
    out = disk / sub if sub else disk
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(REPO / "config.toml"),
                           "--source", str(tiny_video(tmp_path / "v.avi")), "--out", str(out),
                           "--set", "metrics.enabled=false", "--set", f'encoder.cache_dir="{tmp_path / "none"}"'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, str(out), problem, "Read-only file system")
    # It failed before loading (here: exporting) the encoder.
    assert not (tmp_path / "none").exists()


def test_run_refuses_box_appearance_without_a_patch_output_before_binding_the_metrics_port(
        tmp_path: Path, encoder_cache: Path) -> None:
    import socket

    from pipeline import app
    from pipeline.config import EncoderConfig

    onnx = app.build_encoder(EncoderConfig(patch_stage=0, cache_dir=str(encoder_cache))).path
    with socket.socket() as held:  # the metrics port is taken: binding it first would be a different error
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = tmp_path / "run"
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(REPO / "config.toml"),
                               "--source", str(tiny_video(tmp_path / "v.avi")), "--out", str(out),
                               "--set", f'encoder.model="{onnx}"', "--set", 'tracker.appearance_region="box"',
                               "--set", f"metrics.port={port}"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, f"the encoder {onnx} has none", 'set appearance_region = "crop"')
    # no sink was opened: only the folder's lock and the final metrics are there
    assert sorted(p.name for p in out.iterdir()) == [".siamstream.lock", "metrics.prom"]


@pytest.mark.data
def test_disk_filling_up_mid_run_stops_with_one_line_and_a_playable_video(
        tmpfs: Callable[..., Path], shared_data: Callable[..., Path], pretrained_onnx: Path) -> None:
    disk = tmpfs("small", 2 * 1024)
    out = disk / "run"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(CONFIG), "--source",
                           str(shared_data("conveyor_video", "cutted.avi")), "--out", str(out),
                           "--set", f'encoder.model="{pretrained_onnx}"', "--set", "metrics.enabled=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, str(out / "annotated" / "000000.mp4"), "disk nearly full")
    assert "Failed to write" not in proc.stderr  # stopped before OpenCV started losing frames
    # The video so far was finalised in the room kept for it, the text outputs are whole.
    n = annotated_frames(out)
    assert 0 < n < 535
    assert all(int(r[0]) <= n + 1 for r in mot_rows(out / "tracks.txt"))
    assert (out / "events.jsonl").read_text() == ""


def test_tracks_file_on_a_full_device_is_a_one_line_error(tmp_path: Path, pretrained_onnx: Path) -> None:
    # /dev/full fails every write with ENOSPC, like a full disk, and needs no privileges.
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    out = tmp_path / "run"
    out.mkdir()
    (out / "tracks.txt").symlink_to("/dev/full")
    video = square_video(tmp_path / "v.avi")  # a square crossing the frame: a track, rows, a flush at frame 100
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(REPO / "config.toml"),
                           "--source", str(video), "--out", str(out), "--set", "metrics.enabled=false",
                           "--set", f'encoder.model="{pretrained_onnx}"', "--set", "output.video=false",
                           "--set", "detector.min_area=100"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, str(out / "tracks.txt"), "No space left on device")


def test_events_file_on_a_full_device_raises_sink_error_on_write_and_close(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    (tmp_path / "events.jsonl").symlink_to("/dev/full")
    (tmp_path / "tracks.txt").symlink_to("/dev/full")
    frame = Frame(0, 0.0, np.zeros((8, 8, 3), np.uint8))
    event = AnomalyEvent("s", 1, 0, 0.0, 2.0, 1.0, 3, (0.0, 0.0, 4.0, 4.0))
    events = EventsJsonlSink(tmp_path / "events.jsonl")
    with pytest.raises(SinkError, match="No space left on device") as exc:
        events.write(FrameResult(frame, Detections.empty(), [], [event]))
    assert str(exc.value).startswith(str(tmp_path / "events.jsonl")) and "\n" not in str(exc.value)
    with pytest.raises(SinkError, match="No space left on device"):
        events.close()  # the line still buffered cannot be flushed either
    events.close()  # idempotent
    # Tracks are buffered: the write goes through, the flush on close meets the full device.
    mot = MotTxtSink(tmp_path / "tracks.txt")
    box = np.array([[1.0, 1.0, 5.0, 5.0]], np.float32)
    detections = Detections(box, np.ones(1, np.float32), np.full(1, -1, np.int64))
    mot.write(FrameResult(frame, detections, [TrackObservation(1, box[0], TrackState.CONFIRMED, 0)]))
    with pytest.raises(SinkError, match="No space left on device"):
        mot.close()


# ---------------------------------------------------------------- SIGTERM during a live run


@pytest.mark.data
def test_sigterm_while_the_camera_is_away_flushes_and_exits(camera: Callable[..., MjpegCamera], tmp_path: Path,
                                                            pretrained_onnx: Path) -> None:
    cam = camera("outage", fault_after=30, outage_s=None)
    out = tmp_path / "run"
    run = Run(*live_args(cam.url, out, pretrained_onnx))
    try:
        assert cam.faulted.wait(60)
        wait_for(lambda: run.port is not None and run.metrics()["siamstream_frames_processed_total"] == 30, 60,
                 "the 30 frames before the outage to be processed")
        run.proc.send_signal(signal.SIGTERM)  # the source is retrying; the run must not wait for it
        code, stdout, stderr = run.finish(timeout_s=30)
    finally:
        run.kill()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert json.loads(stdout.strip().splitlines()[-1])["frames"] == 30
    assert annotated_frames(out) == 30
    final = samples((out / "metrics.prom").read_text())
    assert final["siamstream_frames_processed_total"] == final["siamstream_frames_read_total"] == 30


# ---------------------------------------------------------------- secrets in URLs


def _leaks(secrets: tuple[str, ...], *texts: str, folder: Path) -> list[str]:
    """Every place (a text, or a file under ``folder``) that holds one of ``secrets``."""
    found = [f"text {i}: {s}" for i, t in enumerate(texts) for s in secrets if s in t]
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return found


@pytest.mark.data
def test_secrets_in_the_camera_and_webhook_urls_reach_no_output_log_or_metric(
        camera: Callable[..., MjpegCamera], tmp_path: Path, pretrained_onnx: Path) -> None:
    cam = camera("outage", fault_after=40, outage_s=None)
    secrets = ("cam-s3cret", "cam-k3y", "hook-s3cret", "hook-t0ken")
    source = cam.url.replace("http://", "http://alice:cam-s3cret%21@") + "?key=cam-k3y"  # "%": percent-encoded
    hook = "http://bob:hook-s3cret@127.0.0.1:9/alerts?token=hook-t0ken"
    out = tmp_path / "run"
    run = Run(*live_args(source, out, pretrained_onnx, f'alerts.webhook_url="{hook}"', "alerts.close_timeout_s=0.5"))
    try:
        assert cam.faulted.wait(60)
        wait_for(lambda: run.port is not None and run.metrics()["siamstream_frames_processed_total"] == 40, 60,
                 "the 40 frames before the outage")
        live = urllib.request.urlopen(f"http://127.0.0.1:{run.port}/metrics", timeout=5).read().decode()
        ready = ""
        try:
            ready = urllib.request.urlopen(f"http://127.0.0.1:{run.port}/readyz", timeout=5).read().decode()
        except urllib.error.HTTPError as exc:  # 503 while the camera is away
            ready = exc.read().decode()
        run.proc.send_signal(signal.SIGTERM)
        code, stdout, stderr = run.finish(timeout_s=30)
    finally:
        run.kill()
    assert code == 130, stderr
    assert "127.0.0.1" in stdout and "***@127.0.0.1" in stderr  # shown, with the secrets masked
    assert _leaks(secrets, stdout, stderr, live, ready, folder=out) == []


def test_a_percent_encoded_password_of_a_camera_that_cannot_connect_is_not_shown(tmp_path: Path,
                                                                                  pretrained_onnx: Path) -> None:
    """OpenCV's image-sequence reader, tried on any URL holding "%", printed the whole URL to stderr."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(REPO / "config.toml"),
                           "--source", "rtsp://user:s3cret%40x@127.0.0.1:1/x?token=t0ken%20y", "--out",
                           str(tmp_path / "out"), "--set", f'encoder.model="{pretrained_onnx}"', "--set",
                           "source.reconnect_attempts=1", "--set", "metrics.enabled=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "***@127.0.0.1" in proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout and "t0ken" not in proc.stderr + proc.stdout, proc.stderr
