"""``siamstream bench streams``: N streams in one process against their floors and against N processes.

For each N (default 1, 2, 4, 8), N streams of the real conveyor video (the same file opened N times, as N
cameras would be) run through :class:`pipeline.engine.Engine` with a bank built from the video's first frames, in
lossless file mode, every output but the annotated video on. Measured in the same command, on the same files:

- the pipeline: aggregate and per-stream frames/s, crops and frames per encoder call, p50/p99 frame latency (from
  decoding to verdicts written; estimated from the latency histogram as Prometheus' ``histogram_quantile`` does),
  and process CPU seconds per frame;
- the decode floor: N threads decoding and detecting the same N files and nothing else;
- the encoder floor: the encoder alone on the crops of those frames (with patch features, as the anomaly stage
  needs them), in batches of ``[encoder] max_batch``, in frames/s at the video's crops per frame;
- N one-stream processes (``siamstream run``) side by side on the same files: the sum of their frames/s (each
  process's own run loop, its start-up left out: a comparison in the processes' favour).

The figure is the pipeline's throughput over the lower floor. The settings come from ``--config`` (default
``deploy/configs/conveyor.toml``, the conveyor's detector settings).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from lab.evaluation.report import json_line, table
from pipeline import app
from pipeline.config import Config, StreamConfig
from pipeline.crops import crop_batch
from pipeline.encoder import Encoder
from pipeline.engine import Engine
from pipeline.metrics import FRAME_BUCKETS, PipelineMetrics
from pipeline.sources import open_source
from pipeline.types import CropBatch

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "configs" / "conveyor.toml"
BANK_FRAMES = 400


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The ``q`` quantile of a cumulative histogram ``[(upper bound, count), ...]`` (ascending, the last +Inf),
    interpolated linearly inside the bucket it falls in, as Prometheus' ``histogram_quantile`` does; ``nan``
    when the histogram is empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = upper, count
    return lower


def _latency(registry: CollectorRegistry, names: list[str]) -> tuple[float, float]:
    """p50 and p99 frame latency in ms over all streams."""
    bounds = [*FRAME_BUCKETS, float("inf")]
    counts = [sum(registry.get_sample_value("siamstream_frame_latency_seconds_bucket",
                                            {"stream": n, "le": "+Inf" if b == float("inf") else str(b)}) or 0.0
                  for n in names) for b in bounds]
    cumulative = list(zip(bounds, counts, strict=True))
    return histogram_quantile(0.5, cumulative) * 1000, histogram_quantile(0.99, cumulative) * 1000


def _stream_config(cfg: Config, video: Path, n: int, frames: int, bank: Path) -> Config:
    anomaly = dataclasses.replace(cfg.anomaly, bank=str(bank), evidence=False)
    streams = tuple(StreamConfig(f"s{i}", str(video), cfg.detector, cfg.tracker, anomaly,
                                 dataclasses.replace(cfg.output, stream_name=f"s{i}", video=False,
                                                     progress_every_s=0.0))
                    for i in range(n))
    return dataclasses.replace(cfg, streams=streams, source=dataclasses.replace(cfg.source, max_frames=frames))


def run_pipeline(cfg: Config, encoder: Encoder, video: Path, n: int, frames: int, bank: Path,
                 out: Path) -> dict[str, float]:
    """N streams through the engine: throughput, batching, latency, CPU."""
    cfg_n = _stream_config(cfg, video, n, frames, bank)
    registry = CollectorRegistry()
    engine = Engine(cfg_n, out, PipelineMetrics(registry, "s0"), encoder)
    cpu, start = time.process_time(), time.perf_counter()
    status = engine.run(threading.Event())
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    failed = [f"{s.name}: {s.error}" for s in status.values() if s.state != "ended"]
    if failed:
        raise RuntimeError(f"bench streams: streams did not end cleanly: {failed}")
    done = sum(s.summary.frames for s in status.values() if s.summary is not None)
    per_stream = [s.summary.fps for s in status.values() if s.summary is not None]
    get = registry.get_sample_value
    parts = {"encoder": "parts"}
    calls = max(get("siamstream_shared_encoder_batch_size_count", parts) or 0.0, 1.0)
    p50, p99 = _latency(registry, [s.name for s in cfg_n.streams])
    return {"fps": done / wall, "per_stream_fps_min": min(per_stream), "per_stream_fps_max": max(per_stream),
            "frames": done, "seconds": wall, "cpu_s_per_frame": cpu / max(done, 1),
            "crops_per_call": (get("siamstream_shared_encoder_batch_size_sum", parts) or 0.0) / calls,
            "frames_per_call": (get("siamstream_shared_encoder_batch_frames_sum", parts) or 0.0) / calls,
            "p50_latency_ms": p50, "p99_latency_ms": p99}


def decode_floor(cfg: Config, video: Path, n: int, frames: int, size: tuple[int, int] | None = None
                 ) -> tuple[float, list[CropBatch]]:
    """Frames/s of N threads that only decode and detect the N files; with ``size``, the first thread's crops
    (at the encoder's input size) for :func:`encoder_floor`."""
    crops: list[CropBatch] = []
    errors: list[BaseException] = []
    source_cfg = dataclasses.replace(cfg.source, max_frames=frames)

    def one(i: int) -> None:
        try:
            detector = app.build_detector(cfg.detector)
            source = open_source(str(video), source_cfg)
            try:
                for frame in source:
                    dets = detector.detect(frame)
                    if i == 0 and size is not None:
                        crops.append(crop_batch(frame, dets, size, cfg.encoder.crop_padding))
            finally:
                source.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return n * frames / wall, crops


def encoder_floor(encoder: Encoder, crops: list[CropBatch], n: int, max_batch: int) -> float:
    """Frames/s of the encoder alone on ``n`` copies of the frames' crops, in batches of ``max_batch``."""
    images = [c.images for c in crops if len(c)] * n
    stacked = np.concatenate(images) if images else np.zeros((0, *encoder.input_size, 3), np.uint8)
    boxes = np.zeros((len(stacked), 4), np.float32)
    start = time.perf_counter()
    for i in range(0, len(stacked), max_batch):
        encoder.embed(CropBatch(stacked[i:i + max_batch], boxes[i:i + max_batch]), with_patches=True)
    wall = time.perf_counter() - start
    return n * len(crops) / wall if wall > 0 else float("inf")


def run_processes(config_args: list[str], video: Path, n: int, frames: int, bank: Path, out: Path) -> float:
    """Sum of the frames/s of N ``siamstream run`` processes started together on the same files."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "-q", "run", *config_args, "--source", str(video), "--out",
         str(out / f"p{i}"), "--set", f"source.max_frames={frames}", "--set", f'anomaly.bank="{bank}"',
         "--set", "output.video=false", "--set", "anomaly.evidence=false", "--set", "metrics.enabled=false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    total = 0.0
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"bench streams: a one-stream process failed: {stderr.strip()[-500:]}")
        total += float(json.loads(stdout.strip().splitlines()[-1])["fps"])
    return total


def main(cfg: Config, video: Path, config_args: list[str], counts: tuple[int, ...] = (1, 2, 4, 8),
         frames: int = 300, processes: bool = True) -> int:
    encoder = app.build_encoder(cfg.encoder)
    figures: dict[str, dict[str, float]] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="siamstream-bench-streams-") as tmp:
        root = Path(tmp)
        bank_source = open_source(str(video), dataclasses.replace(cfg.source, max_frames=BANK_FRAMES))
        try:
            samples = app.good_samples_from_frames(bank_source, cfg, encoder)
        finally:
            bank_source.close()
        bank_path = root / "bank"
        app.bank_from_samples(samples, cfg, encoder, video.name).save(bank_path)
        _, crops = decode_floor(cfg, video, 1, frames, encoder.input_size)
        crops_per_frame = sum(len(c) for c in crops) / max(len(crops), 1)
        for n in counts:
            log.info("bench streams: N = %d", n)
            pipe = run_pipeline(cfg, encoder, video, n, frames, bank_path, root / f"engine{n}")
            decode, _ = decode_floor(cfg, video, n, frames)
            enc = encoder_floor(encoder, crops, n, cfg.encoder.max_batch)
            procs = run_processes(config_args, video, n, frames, bank_path, root / f"procs{n}") if processes \
                else float("nan")
            floor = min(decode, enc)
            figures[str(n)] = {
                "fps": round(pipe["fps"], 1), "per_stream_fps_min": round(pipe["per_stream_fps_min"], 1),
                "decode_fps": round(decode, 1), "encoder_fps": round(enc, 1), "floor_fps": round(floor, 1),
                "ratio": round(pipe["fps"] / floor, 3), "processes_fps": round(procs, 1),
                "vs_processes": round(pipe["fps"] / procs, 3) if procs == procs and procs > 0 else None,
                "crops_per_call": round(pipe["crops_per_call"], 1),
                "frames_per_call": round(pipe["frames_per_call"], 2),
                "p50_latency_ms": round(pipe["p50_latency_ms"], 1),
                "p99_latency_ms": round(pipe["p99_latency_ms"], 1),
                "cpu_ms_per_frame": round(pipe["cpu_s_per_frame"] * 1000, 1),
            }
            f = figures[str(n)]
            rows.append([n, f["fps"], f["per_stream_fps_min"], f["decode_fps"], f["encoder_fps"], f["ratio"],
                         f["processes_fps"], f["vs_processes"], f["frames_per_call"], f["crops_per_call"],
                         f["p50_latency_ms"], f["p99_latency_ms"], f["cpu_ms_per_frame"]])
    print(f"{video.name}: {frames} frames per stream, {crops_per_frame:.1f} crops per frame, encoder "
          f"{encoder.provider}, max_batch {cfg.encoder.max_batch}, batch_wait_ms {cfg.encoder.batch_wait_ms}")
    print(table(["N", "fps", "min stream fps", "decode floor", "encoder floor", "ratio", "N processes fps",
                 "vs processes", "frames/call", "crops/call", "p50 ms", "p99 ms", "CPU ms/frame"], rows))
    print(json_line(figures))
    return 0
