"""`siamstream bank add` while `siamstream run` watches a camera: the running pipeline swaps the grown bank in
without a restart, and says so in its metrics.

The camera is an MJPEG-over-HTTP server on 127.0.0.1 sending frames of the synthetic production line at a
fixed rate, so the run lasts as long as the test needs whatever the speed of the machine: the test holds the
stream while `bank add` runs, then lets the rest of the frames through; the run stops after
``source.max_frames`` frames and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import app
from pipeline.anomaly.bank import Bank, append_samples
from pipeline.config import Config, replace
from pipeline.encoder import OnnxEncoder
from pipeline.synthetic import KINDS, ProductionLineScene, SceneConfig, render_part
from tests.camera_servers import send_jpeg, serve_mjpeg

REPO = Path(__file__).resolve().parents[2]
FPS = 10.0
MAX_FRAMES = 40


class HeldCamera:
    """JPEG frames as a ``multipart/x-mixed-replace`` stream at ``FPS``; :meth:`hold` stops sending (the
    connection stays open) until :meth:`release`. Frames continue across connections."""

    def __init__(self, jpegs: list[bytes]) -> None:
        self.jpegs = jpegs
        self.sent = 0
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self._server = serve_mjpeg(self._stream)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/line.mjpg"

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        while not self.closed.is_set():
            if not self.flowing.wait(0.1):
                continue
            jpeg = self.jpegs[self.sent % len(self.jpegs)]
            self.sent += 1
            send_jpeg(handler, jpeg)
            time.sleep(1.0 / FPS)

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def camera() -> Iterator[HeldCamera]:
    scene = ProductionLineScene(SceneConfig(num_frames=60, defect_rate=0.0, seed=21))
    cam = HeldCamera([cv2.imencode(".jpg", f.image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in scene])
    yield cam
    cam.close()


def write_parts(folder: Path, n: int, seed: int) -> Path:
    """``n`` images of good synthetic parts on a plain grey background."""
    folder.mkdir(parents=True)
    for i in range(n):
        good, _ = render_part(KINDS[i % len(KINDS)], None, seed + i)
        image = good.over(np.full(good.bgr.shape, 90.0, np.float32))
        assert cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(image, 0, 255).astype(np.uint8))
    return folder


def samples(text: str) -> dict[str, float]:
    """Prometheus text -> ``{name: value}`` (one stream, so the ``stream`` label is dropped)."""
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Run:
    """``siamstream run`` on the camera with hot reload every 0.2 s; stderr is read on a thread, which gives
    the metrics port and calls ``on_line`` with each line."""

    def __init__(self, camera: HeldCamera, bank: Path, out: Path, model: Path, max_frames: int,
                 on_line: Callable[[str], None] = lambda _line: None) -> None:
        self.out = out
        self.port: int | None = None
        self.lines: list[str] = []
        self._on_line = on_line
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "--config", str(REPO / "config.toml"), "--source",
             camera.url, "--out", str(out), "--set", f'encoder.model="{model}"', "--set", f'anomaly.bank="{bank}"',
             "--set", "anomaly.reload_interval_s=0.2", "--set", "metrics.port=0",
             "--set", f"source.max_frames={max_frames}", "--set", "output.video=false"],
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            if found:
                self.port = int(found.group(1))
            self._on_line(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def live(self) -> dict[str, float]:
        assert self.port is not None
        return samples(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode())

    def finish(self) -> tuple[dict[str, Any], dict[str, float]]:
        """Wait for the exit (0 expected): the last stdout line and the metrics written at the end."""
        self.proc.wait(timeout=120)  # not communicate(): it would read stderr too, taking lines from the reader
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()  # a few lines, printed at the end
        self._reader.join(5)
        assert self.proc.returncode == 0, self.log
        return json.loads(stdout.strip().splitlines()[-1]), samples((self.out / "metrics.prom").read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module")
def encoder_and_cfg(pretrained_onnx: Path) -> tuple[OnnxEncoder, Config]:
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    return app.build_encoder(cfg.encoder), cfg


def first_bank(tmp_path: Path, encoder: OnnxEncoder, cfg: Config) -> Path:
    """A patch bank of 10 good part images, saved under ``tmp_path/bank``."""
    first = write_parts(tmp_path / "first", 10, seed=100)
    bank = tmp_path / "bank"
    app.bank_from_samples(app.good_samples_from_images(first, encoder, "patch"), cfg, encoder, str(first)).save(bank)
    return bank


def test_bank_add_during_run_is_swapped_in(camera: HeldCamera, tmp_path: Path, pretrained_onnx: Path,
                                           encoder_and_cfg: tuple[OnnxEncoder, Config]) -> None:
    bank = first_bank(tmp_path, *encoder_and_cfg)
    start = Bank.load(bank)
    more = write_parts(tmp_path / "more", 5, seed=700)
    run = Run(camera, bank, tmp_path / "run", pretrained_onnx, MAX_FRAMES)
    try:
        wait_for(lambda: run.port is not None or run.proc.poll() is not None, 60, "the metrics endpoint")
        assert run.port is not None, run.log
        # A processed frame means the reloader is watching the bank (it starts before the first frame).
        wait_for(lambda: run.live().get("siamstream_frames_processed_total", 0) >= 1, 60, "the first frame")
        camera.hold()  # the run waits for frames while `bank add` works, however long that takes
        live = run.live()
        assert live["siamstream_bank_size"] == len(start) and live["siamstream_bank_reloads_total"] == 0

        add = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "bank", "add", str(bank), "--source",
                              str(more), "--set", f'encoder.model="{pretrained_onnx}"'], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert add.returncode == 0, add.stderr
        grown = json.loads(add.stdout.strip().splitlines()[-1])
        assert grown["vectors"] > len(start) and grown["crops"] == 15

        camera.release()
        last, final = run.finish()
    finally:
        run.kill()
    assert last["frames"] > 0 and final["siamstream_frames_read_total"] == MAX_FRAMES
    assert final["siamstream_bank_reloads_total"] >= 1, run.log
    assert final["siamstream_bank_size"] == grown["vectors"]
    assert final["siamstream_bank_threshold"] == pytest.approx(start.meta.threshold)  # `bank add` keeps it
    assert final["siamstream_bank_updated_timestamp_seconds"] == pytest.approx(Bank.load(bank).meta.updated)
    assert final["siamstream_bank_reload_errors_total"] == 0, run.log
    assert f"bank swapped in: {grown['vectors']} vectors" in run.log


def test_a_bank_saved_while_the_run_starts_up_is_not_missed(camera: HeldCamera, tmp_path: Path,
                                                             pretrained_onnx: Path,
                                                             encoder_and_cfg: tuple[OnnxEncoder, Config]) -> None:
    """A save landing after the run loaded its bank, while it builds the rest of the pipeline, is swapped in
    at the first frame (the reloader looks at the bank's files before the bank is loaded)."""
    encoder, cfg = encoder_and_cfg
    bank = first_bank(tmp_path, encoder, cfg)
    grown = Bank.load(bank)
    more = write_parts(tmp_path / "more", 5, seed=700)
    append_samples(grown, app.good_samples_from_images(more, encoder, "patch").features, str(more))
    saved = threading.Event()

    def save_once_loaded(line: str) -> None:
        if " loaded: " in line:  # logged once the bank is loaded, before the pipeline is built
            grown.save(bank)
            saved.set()

    camera.hold()  # no frame until the new bank is on disk
    run = Run(camera, bank, tmp_path / "run", pretrained_onnx, 20, on_line=save_once_loaded)
    try:
        assert saved.wait(60), run.log
        camera.release()
        _, final = run.finish()
    finally:
        run.kill()
    assert final["siamstream_bank_size"] == len(grown), run.log
    assert final["siamstream_bank_reloads_total"] == 1 and final["siamstream_bank_reload_errors_total"] == 0


@pytest.mark.parametrize(("field", "value", "said"), [("k", 0, "bank field k = 0"),
                                                      ("threshold", -1.0, "bank field threshold = -1.0")])
def test_a_bank_rewritten_with_an_impossible_value_is_never_swapped_in(
        camera: HeldCamera, tmp_path: Path, pretrained_onnx: Path, encoder_and_cfg: tuple[OnnxEncoder, Config],
        field: str, value: float, said: str) -> None:
    bank = first_bank(tmp_path, *encoder_and_cfg)
    start = Bank.load(bank)
    run = Run(camera, bank, tmp_path / "run", pretrained_onnx, MAX_FRAMES)
    try:
        wait_for(lambda: run.port is not None or run.proc.poll() is not None, 60, "the metrics endpoint")
        assert run.port is not None, run.log
        wait_for(lambda: run.live().get("siamstream_frames_processed_total", 0) >= 1, 60, "the first frame")
        camera.hold()
        meta = json.loads((bank / "meta.json").read_text())
        (bank / "meta.json").write_text(json.dumps({**meta, field: value}))  # rewritten in place, as by hand
        wait_for(lambda: run.live().get("siamstream_bank_reload_errors_total", 0) >= 1, 30, "the reload error")
        camera.release()
        last, final = run.finish()  # exit 0: the run went on with the bank it had
    finally:
        run.kill()
    assert last["frames"] > 0 and final["siamstream_frames_read_total"] == MAX_FRAMES
    assert final["siamstream_bank_reloads_total"] == 0 and final["siamstream_bank_reload_errors_total"] == 1
    assert final["siamstream_bank_threshold"] == pytest.approx(start.meta.threshold)
    assert "bank swapped in" not in run.log and said in run.log and "previous bank stays in use" in run.log
