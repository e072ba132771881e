"""`bench streams` parts: the latency quantile read from a histogram, and one small real round of the engine
against its floors on a synthetic video."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import pytest

from lab.benchmarks.streams import Workload, decode_floor, encoder_floor, histogram_quantile, run_pipeline
from pipeline import app
from pipeline.config import Config, replace
from pipeline.synthetic import ProductionLineScene, SceneConfig


def test_histogram_quantile_interpolates_inside_the_bucket_as_prometheus_does() -> None:
    inf = float("inf")
    buckets = [(0.01, 0.0), (0.02, 50.0), (0.05, 100.0), (inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.02)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.015)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.02 + 0.03 * 0.98)
    assert histogram_quantile(0.99, [(0.01, 0.0), (inf, 10.0)]) == 0.01  # in the +Inf bucket: its lower bound
    assert math.isnan(histogram_quantile(0.5, [(0.01, 0.0), (inf, 0.0)]))


def test_one_round_of_two_streams_against_the_floors(tmp_path: Path, pretrained_onnx: Path) -> None:
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (640, 360))
    for frame in ProductionLineScene(SceneConfig(num_frames=90, seed=2)):
        writer.write(frame.image)
    writer.release()
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    good = ProductionLineScene(SceneConfig(num_frames=300, defect_rate=0.0, seed=1000))
    app.bank_from_samples(app.good_samples_from_frames(good, cfg, encoder), cfg, encoder, "g").save(tmp_path / "bank")

    workloads = [Workload("parts", video, cfg.detector, cfg.tracker, tmp_path / "bank", ()),
                 Workload("tracking only", video, cfg.detector, cfg.tracker, None, ())]
    pipe = run_pipeline(cfg, encoder, workloads, 2, 60, tmp_path / "out")
    assert pipe["frames"] == 120 and pipe["fps"] > 0 and pipe["cpu_s_per_frame"] > 0
    assert 1.0 <= pipe["frames_per_call"] <= 2.0  # at most one frame of each stream per call
    assert pipe["crops_per_call"] > 0 and 0 < pipe["p50_latency_ms"] <= pipe["p99_latency_ms"]
    decode, crops = decode_floor(cfg, workloads, 2, 60, encoder.input_size)
    assert decode > 0 and [len(c) for c in crops] == [60, 60] and sum(len(c) for c in crops[0]) > 0
    assert encoder_floor(encoder, workloads, crops, 2, cfg.encoder.max_batch) > 0
