"""Cameras change without a restart: `siamstream run` with [[streams]] of real MJPEG cameras on 127.0.0.1, the
stream list edited and SIGHUP sent. Added streams start, removed ones flush and close, the unchanged one goes on
with no frame lost and no restart; /readyz lists every stream."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import cv2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.synthetic import ProductionLineScene, SceneConfig
from tests.camera_servers import send_jpeg, serve_mjpeg

REPO = Path(__file__).resolve().parents[2]
FPS = 5.0  # slow enough that a busy 2-core machine keeps up with three cameras: a drop would be the reload's


def _jpegs(seed: int) -> list[bytes]:
    scene = ProductionLineScene(SceneConfig(num_frames=120, seed=seed))
    return [cv2.imencode(".jpg", cv2.resize(f.image, (320, 180)))[1].tobytes() for f in scene]


class Camera:
    """An endless MJPEG camera at :data:`FPS`."""

    def __init__(self, jpegs: list[bytes]) -> None:
        self.closed = threading.Event()
        self.jpegs = jpegs
        self.server = serve_mjpeg(self._stream)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        i = 0
        while not self.closed.is_set():
            send_jpeg(handler, self.jpegs[i % len(self.jpegs)])
            i += 1
            time.sleep(1.0 / FPS)

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cameras() -> Iterator[Callable[[int], Camera]]:
    made: list[Camera] = []

    def make(seed: int) -> Camera:
        made.append(Camera(_jpegs(seed)))
        return made[-1]

    yield make
    for cam in made:
        cam.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(path: Path, model: Path, port: int, streams: dict[str, str]) -> None:
    body = "".join(f'\n[[streams]]\nname = "{n}"\nsource = "{u}"\n' for n, u in streams.items())
    path.write_text(f'[encoder]\nmodel = "{model}"\n[metrics]\nport = {port}\n[output]\nvideo = false\n'
                    f'[detector]\nmin_area = 60\n{body}')


def _readyz(port: int) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        return dict(json.loads(e.read()))
    except (urllib.error.URLError, ConnectionError):
        return {}


def _samples(port: int, name: str) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.labels["stream"]: s.value for fam in text_string_to_metric_families(body) for s in fam.samples
            if s.name == name and "stream" in s.labels}


def _wait(what: str, check: Callable[[], bool], proc: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, f"the run ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _running(port: int, names: set[str]) -> bool:
    streams = _readyz(port).get("streams", {})
    assert isinstance(streams, dict)
    return set(streams) == names and all(s["state"] == "running" for s in streams.values())


def test_sighup_adds_and_removes_cameras_and_the_unchanged_one_loses_nothing(
        tmp_path: Path, pretrained_onnx: Path, cameras: Callable[[int], Camera]) -> None:
    cam1, cam2, cam3 = cameras(1), cameras(2), cameras(3)
    port = _free_port()
    cfg = tmp_path / "streams.toml"
    _write(cfg, pretrained_onnx, port, {"cam1": cam1.url, "cam2": cam2.url})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait("cam1 and cam2 running", lambda: _running(port, {"cam1", "cam2"}), proc)
        _wait("frames on both", lambda: min(_samples(port, "siamstream_frames_processed_total").values()) >= 10, proc)
        before = _samples(port, "siamstream_frames_processed_total")["cam1"]

        _write(cfg, pretrained_onnx, port, {"cam1": cam1.url, "cam3": cam3.url})  # cam2 out, cam3 in
        proc.send_signal(signal.SIGHUP)
        _wait("cam1 and cam3 running", lambda: _running(port, {"cam1", "cam3"}), proc)
        _wait("frames on cam3", lambda: _samples(port, "siamstream_frames_processed_total").get("cam3", 0) >= 10,
              proc)
        # cam1 went on: its count only grew, nothing was dropped, and it was never restarted
        processed = _samples(port, "siamstream_frames_processed_total")
        assert processed["cam1"] > before
        assert _samples(port, "siamstream_frames_dropped_total")["cam1"] == 0
        assert _samples(port, "siamstream_stream_up") == {"cam1": 1.0, "cam2": 0.0, "cam3": 1.0}

        # cam3 changed: it alone restarts with its new settings; its first run's outputs are kept beside
        _write(cfg, pretrained_onnx, port, {"cam1": cam1.url, "cam3": cam3.url})
        cfg.write_text(cfg.read_text() + "[streams.tracker]\nmin_hits = 2\n")
        proc.send_signal(signal.SIGHUP)
        _wait("cam3 restarted", lambda: len(list(out.glob("cam3.*"))) == 1 and _running(port, {"cam1", "cam3"}), proc)
        assert _samples(port, "siamstream_frames_dropped_total")["cam1"] == 0

        _write(cfg, pretrained_onnx, port, {"cam1": cam1.url, "cam3": "not a source"})
        cfg.write_text(cfg.read_text() + "\n[tracker]\nmin_hitz = 3\n")  # a broken config: nothing changes
        proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert _running(port, {"cam1", "cam3"})
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
