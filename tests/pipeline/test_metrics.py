"""The metrics module on a fresh registry per test, and its HTTP endpoints served for real.

The pipeline tests run the real pipeline (built-in ONNX encoder, FAISS bank, background subtraction) on the
synthetic line and on live sources reading real video files, and check that every metric moves when the
pipeline does the thing it counts.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipeline import app
from pipeline.anomaly.bank import Bank
from pipeline.config import Config, SourceConfig, replace
from pipeline.demo import SceneSource
from pipeline.encoder import OnnxEncoder
from pipeline.metrics import STAGES, MetricsError, PipelineMetrics, readiness, serve, write_snapshot
from pipeline.runner import run
from pipeline.sinks import EventsJsonlSink
from pipeline.sources import LiveSource
from pipeline.synthetic import ProductionLineScene, SceneConfig
from pipeline.types import FrameResult


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_two_pipelines_on_separate_registries_do_not_clash() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    PipelineMetrics(a, "x").frames_processed.inc(2)
    PipelineMetrics(b, "x").frames_processed.inc(5)
    assert a.get_sample_value("siamstream_frames_processed_total", {"stream": "x"}) == 2
    assert b.get_sample_value("siamstream_frames_processed_total", {"stream": "x"}) == 5


def test_readiness_rules() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg, "line1")
    ready, reasons = readiness(reg)
    assert not ready and "stream line1: no frame processed yet" in reasons
    assert "stream line1: encoder not loaded" in reasons
    m.encoder_info.info({"provider": "CPUExecutionProvider", "model": "m", "embedding_dim": "8"})
    m.last_frame.set(1000.0)
    assert readiness(reg, now=1005.0) == (True, [])
    assert readiness(reg, stale_after_s=10, now=1020.0) == (False, ["stream line1: no frame for 20 s"])
    m.bank_size.set(0)
    assert readiness(reg, now=1001.0) == (False, ["stream line1: the anomaly bank is empty"])
    assert readiness(CollectorRegistry()) == (False, ["no stream registered"])


def test_endpoints_served_over_http() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg, "line1")
    port = serve(reg, "127.0.0.1", 0, stale_after_s=30)
    assert get(port, "/healthz") == (200, "ok\n")
    code, body = get(port, "/readyz")
    assert code == 503 and json.loads(body)["ready"] is False
    m.encoder_info.info({"provider": "CPUExecutionProvider", "model": "m", "embedding_dim": "8"})
    m.last_frame.set(time.time())
    code, body = get(port, "/readyz")
    assert code == 200 and json.loads(body) == {"ready": True, "reasons": []}
    code, body = get(port, "/metrics")
    assert code == 200 and 'siamstream_last_frame_timestamp_seconds{stream="line1"}' in body
    assert get(port, "/nope")[0] == 404


# ---------------------------------------------------------------- the metrics move with the pipeline


@pytest.fixture(scope="module")
def line(pretrained_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, OnnxEncoder, Bank]:
    """The built-in encoder and a bank of four flat grey "parts": every real part is far from it, so every
    inspected part is flagged, which makes the flag counters move within a few seconds of frames."""
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    good = tmp_path_factory.mktemp("flat-parts")
    for i in range(4):
        assert cv2.imwrite(str(good / f"{i}.png"), np.full((128, 128, 3), 60 + 10 * i, np.uint8))
    samples = app.good_samples_from_images(good, encoder, cfg.bank.level)
    return cfg, encoder, app.bank_from_samples(samples, cfg, encoder, str(good))


def test_a_run_moves_every_pipeline_metric(line: tuple[Config, OnnxEncoder, Bank], tmp_path: Path) -> None:
    cfg, encoder, bank = line
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, "line1")
    pipe = app.build_pipeline(cfg, encoder, metrics, bank, tmp_path)
    scene = ProductionLineScene(SceneConfig(num_frames=90, defect_rate=0.0, seed=3))

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, {"stream": "line1", **labels})
        assert got is not None, f"{name} {labels} not exported"
        return got

    crops: list[int] = []
    active: list[float] = []

    def on_result(result: FrameResult) -> None:
        crops.append(len(result.detections))
        active.append(value("siamstream_active_tracks"))

    before = time.time()
    summary = run(SceneSource(scene, "scene"), pipe, [EventsJsonlSink(tmp_path / "events.jsonl")],
                  on_result=on_result)
    after = time.time()
    n = summary.frames

    # Frames: every one read and processed, none dropped, no reconnect, no queue for a file-like source.
    assert n == 90
    assert value("siamstream_frames_read_total") == value("siamstream_frames_processed_total") == n
    assert value("siamstream_frames_dropped_total") == value("siamstream_source_reconnects_total") == 0
    assert value("siamstream_source_queue_depth") == 0
    assert value("siamstream_source_nominal_fps") == scene.cfg.fps
    assert before <= value("siamstream_last_frame_timestamp_seconds") <= after
    # Latencies: one observation per frame and stage; a frame's latency covers its stages after reading.
    for stage in STAGES:
        assert value("siamstream_stage_latency_seconds_count", stage=stage) == n, stage
    assert value("siamstream_frame_latency_seconds_count") == n
    stages_after_read = sum(value("siamstream_stage_latency_seconds_sum", stage=s) for s in STAGES if s != "read")
    assert value("siamstream_frame_latency_seconds_sum") >= stages_after_read > 0
    # One encoder batch per frame, holding that frame's crops.
    assert value("siamstream_encoder_batch_size_count") == n
    assert value("siamstream_encoder_batch_size_sum") == sum(crops) > 0
    # Tracks: followed while parts pass, every started track ended by the end of the stream.
    assert max(active) >= 1 and value("siamstream_active_tracks") == 0
    assert value("siamstream_tracks_started_total") == value("siamstream_tracks_ended_total") == summary.tracks >= 3
    # Parts: every inspected part is flagged against this bank, one event each.
    events = (tmp_path / "events.jsonl").read_text().splitlines()
    flagged = value("siamstream_parts_flagged_total")
    assert flagged == len(summary.flagged) == len(events) >= 2
    assert value("siamstream_parts_inspected_total") == summary.inspected >= flagged
    # Scores: every scored crop in both histograms, the raw one inside its finite buckets.
    scored = value("siamstream_anomaly_score_count")
    assert scored > 0 and value("siamstream_anomaly_score_ratio_count") == scored
    assert value("siamstream_anomaly_score_bucket", le="1000.0") == scored > value("siamstream_anomaly_score_bucket",
                                                                                  le="0.001")
    assert value("siamstream_anomaly_score_ratio_sum") == pytest.approx(
        value("siamstream_anomaly_score_sum") / bank.meta.threshold, rel=1e-6)
    assert value("siamstream_anomaly_score_ratio_bucket", le="1.0") < scored  # above threshold: flagged
    assert value("siamstream_crops_unscored_total") > 0  # parts entering and leaving touch the frame edge
    # The bank, its threshold and its age.
    assert value("siamstream_bank_size") == len(bank) > 0
    assert value("siamstream_bank_threshold") == pytest.approx(bank.meta.threshold)
    assert 0 <= time.time() - value("siamstream_bank_updated_timestamp_seconds") < 600
    # What runs the encoder, and which siamstream this is.
    assert registry.get_sample_value("siamstream_encoder_info", {
        "stream": "line1", "provider": encoder.provider, "model": str(encoder.path),
        "embedding_dim": str(encoder.embedding_dim)}) == 1
    assert encoder.provider.endswith("ExecutionProvider")
    assert registry.get_sample_value("siamstream_build_info", {"version": metadata.version("siamstream")}) == 1


def write_video(path: Path, n: int, size: tuple[int, int] = (64, 48)) -> Path:
    """An MJPG .avi of ``n`` flat frames, ``size`` = (width, height)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 20.0, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 6 * i, np.uint8))
    writer.release()
    return path


def live(video: Path, **cfg: float) -> LiveSource:
    """A live source whose device is a real capture of ``video``: when the file ends the "camera" stops
    delivering, and the source reopens it as it would a camera that dropped out."""
    values: dict[str, float] = {"reconnect_initial_s": 0.01, "reconnect_max_s": 0.1, **cfg}
    return LiveSource("cam", lambda: cv2.VideoCapture(str(video)), SourceConfig(**values))  # type: ignore[arg-type]


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_live_queue_depth_drops_and_queueing_in_frame_latency(line: tuple[Config, OnnxEncoder, Bank],
                                                              tmp_path: Path) -> None:
    cfg, encoder, _ = line
    registry = CollectorRegistry()
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(registry, "cam"), None, tmp_path)
    source = live(write_video(tmp_path / "v.avi", 12), queue_size=4, max_frames=12)
    wait_until(lambda: not source.is_reading)  # 12 read, the 8 oldest dropped, 4 queued
    time.sleep(0.3)  # the queued frames wait: their latency counts from capture
    get = registry.get_sample_value
    depth: list[float | None] = []
    summary = run(source, pipe, [], on_result=lambda _: depth.append(get("siamstream_source_queue_depth",
                                                                         {"stream": "cam"})))
    s = {"stream": "cam"}
    assert depth == [3.0, 2.0, 1.0, 0.0]
    assert (summary.frames, summary.dropped) == (4, 8)
    assert get("siamstream_frames_read_total", s) == 12
    assert get("siamstream_frames_dropped_total", s) == 8
    assert get("siamstream_frames_processed_total", s) == 4
    assert get("siamstream_frame_latency_seconds_count", s) == 4
    assert get("siamstream_frame_latency_seconds_bucket", {**s, "le": "0.25"}) == 0
    assert (get("siamstream_frame_latency_seconds_sum", s) or 0.0) >= 4 * 0.3


@pytest.mark.parametrize("processed", [0, 1])
def test_stopped_run_accounts_for_every_frame_read(line: tuple[Config, OnnxEncoder, Bank], tmp_path: Path,
                                                   processed: int) -> None:
    cfg, encoder, _ = line
    registry = CollectorRegistry()
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(registry, "cam"), None, tmp_path)
    source = live(write_video(tmp_path / "v.avi", 12), queue_size=4, max_frames=12)
    wait_until(lambda: not source.is_reading)
    stop = threading.Event()
    if processed == 0:
        stop.set()  # stopped before its first frame: the source's counters still reach the metrics
    summary = run(source, pipe, [], stop, on_result=lambda _: stop.set())
    get = registry.get_sample_value
    s = {"stream": "cam"}
    assert summary.interrupted and summary.frames == processed
    # Read = processed + dropped + still queued, in the final values.
    assert get("siamstream_frames_read_total", s) == 12
    assert get("siamstream_frames_processed_total", s) == processed
    assert get("siamstream_frames_dropped_total", s) == 8
    assert get("siamstream_source_queue_depth", s) == 4 - processed


def test_reconnects_counted_when_a_live_source_comes_back(line: tuple[Config, OnnxEncoder, Bank],
                                                          tmp_path: Path) -> None:
    cfg, encoder, _ = line
    registry = CollectorRegistry()
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(registry, "cam"), None, tmp_path)
    # 10 frames, the device stops, it is reopened and delivers again: 25 frames need two reconnects.
    summary = run(live(write_video(tmp_path / "v.avi", 10), queue_size=64, max_frames=25), pipe, [])
    s = {"stream": "cam"}
    assert summary.reconnects == 2 and summary.frames == 25
    assert registry.get_sample_value("siamstream_source_reconnects_total", s) == 2
    assert registry.get_sample_value("siamstream_frames_read_total", s) == 25


def test_snapshot_holds_the_final_values_and_fails_in_one_line(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    m = PipelineMetrics(registry, "line1")
    m.frames_processed.inc(7)
    m.frame_latency.observe(0.03)
    write_snapshot(registry, str(tmp_path / "metrics.prom"))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families((tmp_path / "metrics.prom").read_text())
               for s in family.samples}
    assert samples[("siamstream_frames_processed_total", (("stream", "line1"),))] == 7
    assert samples[("siamstream_frame_latency_seconds_count", (("stream", "line1"),))] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.prom"]  # no temporary file left
    with pytest.raises(MetricsError) as exc:
        write_snapshot(registry, str(tmp_path / "missing" / "metrics.prom"))
    assert str(tmp_path / "missing" / "metrics.prom") in str(exc.value) and "\n" not in str(exc.value)


def test_a_port_in_use_and_an_address_not_of_this_machine_get_their_own_fix() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(MetricsError, match="choose another port"):
            serve(CollectorRegistry(), "127.0.0.1", held.getsockname()[1])
    for address in ("nope.invalid", "192.0.2.1"):  # not resolvable; a TEST-NET address no interface holds
        with pytest.raises(MetricsError, match=f"address '{address}' is not an address of this machine") as exc:
            serve(CollectorRegistry(), address, 0)
        assert "choose another port" not in str(exc.value)


def test_fleet_series_follow_the_latest_assignment() -> None:
    registry = CollectorRegistry()
    m = PipelineMetrics(registry, "cam0")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    m.set_fleet(1, 2, {"cam0": 0, "cam1": 1, "cam2": 1})
    assert value("siamstream_fleet_shard", shard="1") == 2
    assert value("siamstream_fleet_stream_assigned", stream="cam0", shard="0") == 1
    assert value("siamstream_stream_shard", stream="cam1", shard="1") == 1
    assert value("siamstream_stream_shard", stream="cam0", shard="0") is None  # another shard runs it
    m.set_fleet(1, 3, {"cam0": 0, "cam1": 2, "cam2": 1})  # grown to 3 shards: cam1 moved away
    assert value("siamstream_fleet_shard", shard="1") == 3
    assert value("siamstream_fleet_stream_assigned", stream="cam1", shard="1") is None
    assert value("siamstream_fleet_stream_assigned", stream="cam1", shard="2") == 1
    assert value("siamstream_stream_shard", stream="cam1", shard="1") is None
    assert value("siamstream_stream_shard", stream="cam2", shard="1") == 1


def test_video_gates_are_exported_per_stream(line: tuple[Config, OnnxEncoder, Bank], tmp_path: Path) -> None:
    cfg, encoder, bank = line
    registry = CollectorRegistry()
    pipe = app.build_pipeline(replace(cfg, "tracker", gates="video"), encoder, PipelineMetrics(registry, "line1"),
                              bank, tmp_path)
    run(SceneSource(ProductionLineScene(SceneConfig(num_frames=150, seed=3)), "scene"), pipe, [])
    gates = {g: registry.get_sample_value("siamstream_tracker_appearance_gate", {"stream": "line1", "gate": g})
             for g in ("first_pass", "reid")}
    assert gates == {"first_pass": pipe.tracker.max_cosine_distance, "reid": pipe.tracker.reid_max_cosine_distance}
    assert pipe.tracker.video_gates is not None and pipe.tracker.video_gates.measured  # measured on these frames
    other = CollectorRegistry()
    app.build_pipeline(cfg, encoder, PipelineMetrics(other, "line2"), bank, tmp_path).process(
        next(iter(SceneSource(ProductionLineScene(SceneConfig(num_frames=1, seed=3)), "s"))))
    assert other.get_sample_value("siamstream_tracker_appearance_gate", {"stream": "line2", "gate": "reid"}) is None
