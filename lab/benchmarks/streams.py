"""``siamstream bench streams``: N streams in one process against their floors and against N processes.

Two workloads of real video, as two kinds of camera of one site: the conveyor video with a bank built from its
first frames (MOG2 detection, anomaly scoring), and PETS09-S2L1 with its public detections (``[detector] kind =
"file"``, people tracked). Stream ``i`` of N plays workload ``i mod 2`` (N = 1 is the conveyor alone), every stream
opening its own copy of the file, in lossless file mode, every output but the annotated video on. For each N
(default 1, 2, 4, 8), measured in the same command on the same files:

- the pipeline (:class:`pipeline.engine.Engine`): aggregate frames/s (all frames over the longest stream's run
  loop, start-up left out as for the processes; with start-up too as ``fps_with_start``), the slowest stream's
  frames/s, crops and frames per
  encoder call, p50/p99 frame latency (decoding to verdicts written; estimated from the latency histogram as
  Prometheus' ``histogram_quantile`` does), and process CPU seconds per frame;
- the decode floor: N threads that only decode and detect the same N files;
- the encoder floor: the encoder alone on those frames' crops (the conveyor's with patch features, as the anomaly
  stage needs them), in batches of ``[encoder] max_batch``, in frames/s;
- N one-stream processes (``siamstream run``) side by side on the same files: the sum of their frames/s (each
  process's own run loop, its start-up left out: a comparison in the processes' favour).

The figure is the pipeline's throughput over the lower floor. The conveyor's settings come from ``--config``
(default ``deploy/configs/conveyor.toml``); the encoder and the shared sections are that config's.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from lab.evaluation.report import json_line, table
from pipeline import app
from pipeline.config import Config, DetectorConfig, StreamConfig, TrackerConfig
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


@dataclass(frozen=True)
class Workload:
    """One kind of camera: its video, detector and tracker settings, its bank (``None``: no anomaly scoring) and
    the ``--set`` arguments that give a one-stream process the same settings."""

    name: str
    video: Path
    detector: DetectorConfig
    tracker: TrackerConfig
    bank: Path | None
    sets: tuple[str, ...]


def _stream_config(cfg: Config, workloads: list[Workload], n: int, frames: int) -> Config:
    streams = []
    for i in range(n):
        w = workloads[i % len(workloads)]
        anomaly = dataclasses.replace(cfg.anomaly, bank=str(w.bank or ""), evidence=False)
        output = dataclasses.replace(cfg.output, stream_name=f"s{i}", video=False, progress_every_s=0.0)
        streams.append(StreamConfig(f"s{i}", str(w.video), w.detector, w.tracker, anomaly, output))
    return dataclasses.replace(cfg, streams=tuple(streams), source=dataclasses.replace(cfg.source, max_frames=frames))


def run_pipeline(cfg: Config, encoder: Encoder, workloads: list[Workload], n: int, frames: int,
                 out: Path) -> dict[str, float]:
    """N streams through the engine: throughput, batching, latency, CPU."""
    cfg_n = _stream_config(cfg, workloads, n, frames)
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
    # the streams' run loops, start-up (opening the file, loading the bank) left out, as for the processes
    loops = max(s.summary.seconds for s in status.values() if s.summary is not None)
    get = registry.get_sample_value
    parts = {"encoder": "parts"}
    calls = max(get("siamstream_shared_encoder_batch_size_count", parts) or 0.0, 1.0)
    p50, p99 = _latency(registry, [s.name for s in cfg_n.streams])
    return {"fps": done / loops, "fps_with_start": done / wall, "per_stream_fps_min": min(per_stream),
            "per_stream_fps_max": max(per_stream),
            "frames": done, "seconds": wall, "cpu_s_per_frame": cpu / max(done, 1),
            "crops_per_call": (get("siamstream_shared_encoder_batch_size_sum", parts) or 0.0) / calls,
            "frames_per_call": (get("siamstream_shared_encoder_batch_frames_sum", parts) or 0.0) / calls,
            "p50_latency_ms": p50, "p99_latency_ms": p99}


def decode_floor(cfg: Config, workloads: list[Workload], n: int, frames: int, size: tuple[int, int] | None = None
                 ) -> tuple[float, list[list[CropBatch]]]:
    """Frames/s of N threads that only decode and detect the N streams' files; with ``size``, the crops (at the
    encoder's input size) of the first stream of each workload, for :func:`encoder_floor`."""
    crops: list[list[CropBatch]] = [[] for _ in workloads]
    errors: list[BaseException] = []
    source_cfg = dataclasses.replace(cfg.source, max_frames=frames)

    def one(i: int) -> None:
        w = workloads[i % len(workloads)]
        keep = crops[i] if i < len(workloads) and size is not None else None
        try:
            detector = app.build_detector(w.detector)
            source = open_source(str(w.video), source_cfg)
            try:
                for frame in source:
                    dets = detector.detect(frame)
                    if keep is not None and size is not None:
                        keep.append(crop_batch(frame, dets, size, cfg.encoder.crop_padding))
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


def encoder_floor(encoder: Encoder, workloads: list[Workload], crops: list[list[CropBatch]], n: int,
                  max_batch: int) -> float:
    """Frames/s of the encoder alone on the crops of N streams' frames (stream ``i`` the crops of workload
    ``i mod len``), in batches of ``max_batch``; with patch features where the workload scores anomalies."""
    h, w = encoder.input_size
    frames = 0
    seconds = 0.0
    for j, (work, per_frame) in enumerate(zip(workloads, crops, strict=True)):
        copies = len(range(j, n, len(workloads)))
        if not copies:
            continue
        images = [c.images for c in per_frame if len(c)]
        stacked = np.concatenate(images * copies) if images else np.zeros((0, h, w, 3), np.uint8)
        boxes = np.tile(np.array([[0, 0, w, h]], np.float32), (len(stacked), 1))
        start = time.perf_counter()
        for i in range(0, len(stacked), max_batch):
            encoder.embed(CropBatch(stacked[i:i + max_batch], boxes[i:i + max_batch]),
                          with_patches=work.bank is not None)
        seconds += time.perf_counter() - start
        frames += copies * len(per_frame)
    return frames / seconds if seconds > 0 else float("inf")


def run_processes(config_args: list[str], workloads: list[Workload], n: int, frames: int, out: Path) -> float:
    """Sum of the frames/s of N ``siamstream run`` processes started together on the N streams' files."""
    procs = []
    for i in range(n):
        w = workloads[i % len(workloads)]
        sets = [x for s in (*w.sets, f"source.max_frames={frames}", f'anomaly.bank="{w.bank or ""}"',
                            "output.video=false", "anomaly.evidence=false", "metrics.enabled=false")
                for x in ("--set", s)]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "-q", "run", *config_args, "--source", str(w.video), "--out",
             str(out / f"p{i}"), *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    total = 0.0
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"bench streams: a one-stream process failed: {stderr.strip()[-500:]}")
        total += float(json.loads(stdout.strip().splitlines()[-1])["fps"])
    return total


def conveyor_workload(cfg: Config, encoder: Encoder, video: Path, folder: Path) -> Workload:
    """The conveyor video with a bank of its first :data:`BANK_FRAMES` frames, built into ``folder``."""
    source = open_source(str(video), dataclasses.replace(cfg.source, max_frames=BANK_FRAMES))
    try:
        samples = app.good_samples_from_frames(source, cfg, encoder)
    finally:
        source.close()
    app.bank_from_samples(samples, cfg, encoder, video.name).save(folder)
    return Workload("conveyor", video, cfg.detector, cfg.tracker, folder, ())


def pets_workload(cfg: Config, sequence: Path) -> Workload:
    """PETS09-S2L1's video with its public detections, people tracked with the default ``[tracker]``."""
    video = next(iter(sorted(sequence.glob("*.avi"))), None)
    if video is None:
        raise FileNotFoundError(f"{sequence}: no .avi video of the sequence")
    det = sequence / "det" / "det.txt"
    detector = dataclasses.replace(cfg.detector, kind="file", file=str(det))
    tracker = TrackerConfig()
    sets = ('detector.kind="file"', f'detector.file="{det}"',
            *(f"tracker.{f.name}={json.dumps(getattr(tracker, f.name))}" for f in dataclasses.fields(tracker)
              if getattr(tracker, f.name) != getattr(cfg.tracker, f.name)))
    return Workload("pets", video, detector, tracker, None, sets)


def main(cfg: Config, conveyor: Path, pets: Path | None, config_args: list[str],
         counts: tuple[int, ...] = (1, 2, 4, 8), frames: int = 300, processes: bool = True) -> int:
    encoder = app.build_encoder(cfg.encoder)
    figures: dict[str, dict[str, object]] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="siamstream-bench-streams-") as tmp:
        root = Path(tmp)
        workloads = [conveyor_workload(cfg, encoder, conveyor, root / "bank")]
        if pets is not None:
            workloads.append(pets_workload(cfg, pets))
        _, crops = decode_floor(cfg, workloads, len(workloads), frames, encoder.input_size)
        for n in counts:
            log.info("bench streams: N = %d", n)
            pipe = run_pipeline(cfg, encoder, workloads, n, frames, root / f"engine{n}")
            decode, _ = decode_floor(cfg, workloads, n, frames)
            enc = encoder_floor(encoder, workloads, crops, n, cfg.encoder.max_batch)
            procs = run_processes(config_args, workloads, n, frames, root / f"procs{n}") if processes \
                else float("nan")
            floor = min(decode, enc)
            f: dict[str, object]
            figures[str(n)] = f = {
                "fps": round(pipe["fps"], 1), "fps_with_start": round(pipe["fps_with_start"], 1),
                "per_stream_fps_min": round(pipe["per_stream_fps_min"], 1),
                "decode_fps": round(decode, 1), "encoder_fps": round(enc, 1), "floor_fps": round(floor, 1),
                "ratio": round(pipe["fps"] / floor, 3), "processes_fps": round(procs, 1),
                "vs_processes": round(pipe["fps"] / procs, 3) if procs == procs and procs > 0 else None,
                "crops_per_call": round(pipe["crops_per_call"], 1),
                "frames_per_call": round(pipe["frames_per_call"], 2),
                "p50_latency_ms": round(pipe["p50_latency_ms"], 1),
                "p99_latency_ms": round(pipe["p99_latency_ms"], 1),
                "cpu_ms_per_frame": round(pipe["cpu_s_per_frame"] * 1000, 1),
            }
            rows.append([n, f["fps"], f["per_stream_fps_min"], f["decode_fps"], f["encoder_fps"], f["ratio"],
                         f["processes_fps"], f["vs_processes"], f["frames_per_call"], f["crops_per_call"],
                         f["p50_latency_ms"], f["p99_latency_ms"], f["cpu_ms_per_frame"]])
    mix = " and ".join(f"{w.name} ({w.video.name}, {sum(len(c) for c in cs) / max(len(cs), 1):.1f} crops per frame)"
                       for w, cs in zip(workloads, crops, strict=True))
    print(f"streams alternate {mix}; {frames} frames per stream; encoder {encoder.provider}, max_batch "
          f"{cfg.encoder.max_batch}, batch_wait_ms {cfg.encoder.batch_wait_ms}")
    print(table(["N", "fps", "slowest stream fps", "decode floor", "encoder floor", "ratio", "N processes fps",
                 "vs processes", "frames/call", "crops/call", "p50 ms", "p99 ms", "CPU ms/frame"], rows))
    print(json_line(figures))
    return 0
