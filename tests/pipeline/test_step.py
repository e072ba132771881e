"""The one frame step (detect -> crop -> embed -> track): what it embeds for whom, the stage times it reports, and
that `run` and `bank build` see the same tracks through it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline import app
from pipeline.config import Config, replace
from pipeline.metrics import PipelineMetrics
from pipeline.step import FrameStep
from pipeline.synthetic import ProductionLineScene, SceneConfig
from pipeline.types import TrackState


def scene(frames: int = 60) -> ProductionLineScene:
    return ProductionLineScene(SceneConfig(num_frames=frames, seed=3, prefill=True))


def test_parts_get_patch_features_and_every_stage_is_timed(pretrained_onnx: Path) -> None:
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    seen: Counter[str] = Counter()
    step = app.build_frame_step(cfg, encoder, app.build_detector(cfg.detector), parts=True,
                                observe=lambda stage, s: seen.update([stage]) if s >= 0 else None)
    found = 0
    for frame in scene(40):
        result = step(frame)
        assert result.crops is not None and result.embeddings is not None
        assert len(result.crops) == len(result.embeddings) == len(result.detections)
        assert result.embeddings.patches is not None and result.embeddings.grid == encoder.patch_grid
        found += len(result.detections)
    assert found > 0
    assert seen == {"detect": 40, "crop": 40, "encode": 40, "track": 40}


def test_with_a_reid_model_the_part_encoder_runs_only_for_parts(pretrained_onnx: Path, reid_onnx: Path) -> None:
    cfg = replace(replace(Config(), "encoder", model=str(pretrained_onnx)), "tracker", reid_model=str(reid_onnx))
    encoder = app.build_encoder(cfg.encoder)
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    for parts in (False, True):
        step = app.build_frame_step(cfg, encoder, app.build_detector(cfg.detector), parts=parts, reid_encoder=reid)
        results = [step(frame) for frame in scene(30)]
        assert any(len(r.detections) for r in results)
        if parts:
            assert all(r.embeddings is not None and len(r.embeddings) == len(r.detections) for r in results)
        else:
            assert all(r.crops is None and r.embeddings is None for r in results)
    with pytest.raises(ValueError, match="part encoder"):
        FrameStep(app.build_detector(cfg.detector), app.build_tracker(cfg.tracker), None, reid_encoder=reid,
                  parts=True)


def test_run_and_bank_build_track_alike(pretrained_onnx: Path, tmp_path: Path) -> None:
    """`bank build` keeps the crops of the tracks `run` would see: the same step gives the same confirmed tracks."""
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(CollectorRegistry()), None, tmp_path)
    ran = {(f.index, o.track_id) for f in scene() for o in pipe.process(f).tracks if o.state == TrackState.CONFIRMED}
    step = app.build_frame_step(cfg, encoder, app.build_detector(cfg.detector), parts=True)
    built = {(f.index, o.track_id) for f in scene() for o in step(f).tracked.observations
             if o.state == TrackState.CONFIRMED}
    assert ran and ran == built
