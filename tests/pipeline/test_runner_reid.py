"""The tracker's own re-identification encoder in the pipeline: one batch of box crops per frame at the model's
shape, its vectors given to the tracker, the anomaly encoder run only where it scores parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline import app
from pipeline.config import Config, replace
from pipeline.demo import SceneSource
from pipeline.encoder import OnnxEncoder
from pipeline.metrics import PipelineMetrics
from pipeline.runner import run
from pipeline.synthetic import ProductionLineScene, SceneConfig
from pipeline.types import CropBatch, Embeddings


class Recording:
    """A real ONNX encoder that records the shapes of the batches it embeds."""

    def __init__(self, inner: OnnxEncoder) -> None:
        self.inner = inner
        self.batches: list[tuple[int, ...]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def embed(self, crops: CropBatch, with_patches: bool = True) -> Embeddings:
        self.batches.append(crops.images.shape)
        return self.inner.embed(crops, with_patches)


@pytest.mark.parametrize("with_bank", [False, True])
def test_reid_encoder_embeds_boxes_for_the_tracker(pretrained_onnx: Path, reid_onnx: Path, tmp_path: Path,
                                                   with_bank: bool) -> None:
    cfg = replace(replace(Config(), "encoder", model=str(pretrained_onnx)), "tracker", reid_model=str(reid_onnx))
    encoder = Recording(app.build_encoder(cfg.encoder))  # type: ignore[arg-type]
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    assert reid is not None and reid.input_size == (64, 32)
    reid = Recording(reid)  # type: ignore[arg-type]
    bank = None
    if with_bank:
        good = ProductionLineScene(SceneConfig(num_frames=200, defect_rate=0.0, seed=1000))
        bank = app.bank_from_samples(app.good_samples_from_frames(good, cfg, encoder.inner), cfg, encoder.inner, "g")
        encoder.batches.clear()
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(CollectorRegistry(), "s"), bank, tmp_path,  # type: ignore[arg-type]
                              reid)  # type: ignore[arg-type]
    dims: list[int] = []
    update = pipe.tracker.update

    def spy(dets, emb, *args, **kwargs):  # type: ignore[no-untyped-def]
        dims.append(emb.vectors.shape[1])
        return update(dets, emb, *args, **kwargs)

    pipe.tracker.update = spy  # type: ignore[method-assign]
    summary = run(SceneSource(ProductionLineScene(SceneConfig(num_frames=120, seed=3)), "s"), pipe, [])
    assert summary.frames == 120 and summary.tracks >= 2
    assert len(reid.batches) == 120 and all(b[1:] == (64, 32, 3) for b in reid.batches)
    assert set(dims) == {reid.embedding_dim}  # the tracker compares the re-id vectors (24 channels at stage 2)
    assert reid.embedding_dim == 24
    if with_bank:
        assert len(encoder.batches) == 120 and summary.inspected >= 1
    else:
        assert encoder.batches == []  # no bank: the anomaly encoder has nothing to do


@pytest.mark.data
def test_eval_mot_with_a_reid_model(shared_data, reid_onnx: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipeline.cli import main

    seq = shared_data("mot15", "TUD-Campus")
    assert main(["eval", "mot", "--seq", str(seq), "--out", str(tmp_path / "mot"), "--video-frames", "5",
                 "--set", f'tracker.reid_model="{reid_onnx}"']) == 0
    out = capsys.readouterr().out
    assert "encoder on CPUExecutionProvider" in out and "crops/s" in out
    figures = json.loads(out.strip().splitlines()[-1])
    assert 0 < figures["HOTA"] <= 100 and 0 < figures["IDF1"] <= 100
    assert main(["eval", "mot", "--seq", str(seq), "--out", str(tmp_path / "mot2"),
                 "--set", 'tracker.reid_model="/nonexistent/reid.onnx"']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reid.onnx: encoder model not found" in err
