"""The whole pipeline in-process on the synthetic line: real encoder, real FAISS bank, real metrics server."""

from __future__ import annotations

import threading
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline import app
from pipeline.config import Config, replace
from pipeline.demo import SceneSource
from pipeline.metrics import PipelineMetrics, serve
from pipeline.runner import run
from pipeline.sinks import EventsJsonlSink, MotTxtSink
from pipeline.synthetic import ProductionLineScene, SceneConfig
from pipeline.types import TrackState


@pytest.fixture(scope="module")
def setup(pretrained_onnx: Path) -> tuple[Config, object, object]:
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    good = ProductionLineScene(SceneConfig(num_frames=500, defect_rate=0.0, seed=1000))
    bank = app.bank_from_samples(app.good_samples_from_frames(good, cfg, encoder), cfg, encoder, "good")
    return cfg, encoder, bank


def test_pipeline_counts_metrics_and_writes_one_event_per_flagged_part(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, encoder, bank = setup
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, "line1")
    pipe = app.build_pipeline(cfg, encoder, metrics, bank, tmp_path)
    scene = ProductionLineScene(SceneConfig(num_frames=240, seed=3))
    sinks = [EventsJsonlSink(tmp_path / "events.jsonl"), MotTxtSink(tmp_path / "tracks.txt")]
    batches: list[int] = []
    summary = run(SceneSource(scene, "s"), pipe, sinks, on_result=lambda r: batches.append(len(r.detections)))
    get = registry.get_sample_value
    assert summary.frames == 240 and get("siamstream_frames_processed_total", {"stream": "line1"}) == 240
    assert get("siamstream_frames_read_total", {"stream": "line1"}) == 240
    assert get("siamstream_stage_latency_seconds_count", {"stream": "line1", "stage": "encode"}) == 240
    assert get("siamstream_encoder_batch_size_sum", {"stream": "line1"}) == sum(batches)
    assert get("siamstream_bank_size", {"stream": "line1"}) == len(bank)
    flagged = get("siamstream_parts_flagged_total", {"stream": "line1"})
    events = (tmp_path / "events.jsonl").read_text().splitlines()
    assert flagged == len(summary.flagged) == len(events)
    assert summary.tracks >= 4 and summary.inspected >= 3
    assert get("siamstream_tracks_started_total", {"stream": "line1"}) == summary.tracks
    assert get("siamstream_active_tracks", {"stream": "line1"}) == 0  # all ended at the end of the stream


def test_metrics_endpoint_serves_prometheus_names() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, "s")
    metrics.frames_processed.inc(3)
    port = serve(registry, "127.0.0.1", 0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in ("siamstream_frames_processed_total{stream=\"s\"} 3.0", "siamstream_frames_dropped_total",
                 "siamstream_stage_latency_seconds_bucket", "siamstream_active_tracks",
                 "siamstream_parts_flagged_total", "siamstream_build_info"):
        assert name in body


def test_stop_event_ends_run_and_flushes(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, encoder, bank = setup
    registry = CollectorRegistry()
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(registry), bank, tmp_path)
    stop = threading.Event()
    mot = MotTxtSink(tmp_path / "tracks.txt")
    seen: list[int] = []

    def on_result(r) -> None:  # type: ignore[no-untyped-def]
        seen.append(r.frame.index)
        if len(seen) == 60:
            stop.set()

    summary = run(SceneSource(ProductionLineScene(SceneConfig(num_frames=300, seed=4)), "s"), pipe, [mot], stop,
                  on_result=on_result)
    assert summary.interrupted and summary.frames == 60
    assert (tmp_path / "tracks.txt").read_text().count("\n") > 0  # flushed on close


def test_busy_metrics_port_is_a_clear_error() -> None:
    from pipeline.metrics import MetricsError

    registry = CollectorRegistry()
    port = serve(registry, "127.0.0.1", 0)
    with pytest.raises(MetricsError, match=f"127.0.0.1:{port}.*metrics.port"):
        serve(CollectorRegistry(), "127.0.0.1", port)


def test_patch_maps_reach_the_results_the_video_and_the_evidence(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    import cv2
    import numpy as np

    from pipeline.sinks import draw_annotations

    cfg, encoder, bank = setup
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(CollectorRegistry(), "s"), bank, tmp_path)
    # Every part defective, the belt full from the first frame: this seed's scene has flagged parts.
    scene = ProductionLineScene(SceneConfig(num_frames=240, seed=3, defect_rate=1.0, prefill=True))
    results = []
    assert pipe.evidence_dir == tmp_path / "evidence"
    run(SceneSource(scene, "s"), pipe, app.build_sinks(replace(cfg, "output", video=False, mot=False).output, tmp_path,
                                                       20.0, evidence_dir=pipe.evidence_dir), on_result=results.append)
    with_maps = [r for r in results if r.patch_maps]
    assert with_maps
    for r in with_maps[:20]:
        for m in r.patch_maps:
            assert m.grid.shape == encoder.patch_grid and m.threshold == bank.meta.threshold
            # The crop's score is its worst patch.
            obs = next((o for o in r.tracks if o.detection_index == m.detection_index), None)
            if obs is not None and np.isfinite(obs.score):
                assert obs.score == pytest.approx(float(m.grid.max()), rel=1e-5)
    hot = [r for r in results if any(m.grid.max() > m.threshold for m in r.patch_maps)]
    assert hot, "the defective parts of this scene score over the threshold somewhere"
    plain = draw_annotations(hot[0].frame.image, replace_maps(hot[0]))
    assert not np.array_equal(draw_annotations(hot[0].frame.image, hot[0]), plain)  # the map is drawn
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events
    for e in events:  # evidence: the crop, and beside it the same crop under its anomaly map
        img = cv2.imread(e["evidence"])
        assert img is not None and img.shape[1] % 2 == 0
        left, right = np.hsplit(img, 2)
        assert not np.array_equal(left, right)


def replace_maps(result):  # type: ignore[no-untyped-def]
    from dataclasses import replace as dc_replace

    return dc_replace(result, patch_maps=[])


def _track_parts(pipe, seed: int) -> tuple[dict[int, Counter[int | None]], set[int]]:  # type: ignore[no-untyped-def]
    """Each confirmed track's matched boxes, counted by the scene's true part under them; and the embedding
    dimensions the tracker's tracks held."""
    scene = ProductionLineScene(SceneConfig(num_frames=240, seed=seed))
    parts: dict[int, Counter[int | None]] = defaultdict(Counter)
    dims: set[int] = set()

    def on_result(r) -> None:  # type: ignore[no-untyped-def]
        dims.update(len(t.ema) for t in pipe.tracker._tracks if t.ema is not None)
        for obs in r.tracks:
            if obs.detection_index >= 0 and obs.state == TrackState.CONFIRMED:
                parts[obs.track_id][scene.part_at(r.frame.index, obs.xyxy)] += 1

    run(SceneSource(scene, "s"), pipe, [], on_result=on_result)
    return parts, dims


def _parts_against_crop(cfg, encoder, tmp_path: Path, **tracker) -> set[int]:  # type: ignore[no-untyped-def]
    """Track the line with ``[tracker]`` changed as given and with the defaults (the crop's embedding); check that
    every track follows one part and the same parts are followed, in no more tracks. Returns the dimensions of
    the vectors the changed tracker held."""
    changed, dims = _track_parts(app.build_pipeline(replace(cfg, "tracker", **tracker), encoder,
                                                    PipelineMetrics(CollectorRegistry()), None, tmp_path), seed=3)
    crop, _ = _track_parts(app.build_pipeline(cfg, encoder, PipelineMetrics(CollectorRegistry()), None, tmp_path),
                           seed=3)
    assert all(len(counts) == 1 and None not in counts for counts in changed.values())
    followed = {next(iter(counts)) for counts in changed.values()}
    assert len(followed) >= 5 and followed == {next(iter(counts)) for counts in crop.values()}
    assert len(changed) <= len(crop)
    return dims


def test_box_appearance_feeds_the_tracker_the_patch_features_inside_each_box(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, encoder, _ = setup
    dims = _parts_against_crop(cfg, encoder, tmp_path, appearance_region="box")
    assert dims == {encoder.patch_dim} and encoder.patch_dim != encoder.embedding_dim


def test_colour_joins_the_tracker_vectors_and_every_track_still_follows_one_part(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.tracking.color import color_dim

    cfg, encoder, _ = setup
    assert _parts_against_crop(cfg, encoder, tmp_path, color_weight=0.5) == {encoder.embedding_dim + color_dim()}


def test_box_appearance_without_a_patch_output_is_refused_at_start(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, _, _ = setup
    no_patches = replace(replace(cfg, "encoder", model="", patch_stage=0, cache_dir=str(tmp_path / "cache")),
                         "tracker", appearance_region="box")
    encoder = app.build_encoder(no_patches.encoder)
    assert encoder.patch_grid == (0, 0)
    with pytest.raises(ValueError, match='appearance_region = "crop"'):
        app.build_pipeline(no_patches, encoder, PipelineMetrics(CollectorRegistry()), None, tmp_path)
