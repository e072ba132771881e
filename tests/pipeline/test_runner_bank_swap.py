"""Pipeline.swap_bank with the real encoder and real FAISS banks: a bank of another encoder is refused, a good
one takes effect at the next frame (scores, threshold, bank metrics, reload counter), also via BankReloader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipeline import app
from pipeline.anomaly.bank import Bank, BankError
from pipeline.anomaly.reload import BankReloader
from pipeline.config import Config, replace
from pipeline.encoder import OnnxEncoder
from pipeline.metrics import PipelineMetrics
from pipeline.runner import Pipeline
from pipeline.synthetic import ProductionLineScene, SceneConfig
from pipeline.types import Frame, FrameResult

STREAM = "line1"


@pytest.fixture(scope="module")
def cfg(pretrained_onnx: Path) -> Config:
    return replace(Config(), "encoder", model=str(pretrained_onnx))


@pytest.fixture(scope="module")
def encoder(cfg: Config) -> OnnxEncoder:
    return app.build_encoder(cfg.encoder)


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return list(ProductionLineScene(SceneConfig(num_frames=60, seed=7, defect_rate=0.0)))


def patch_bank(encoder: OnnxEncoder, vectors: np.ndarray, threshold: float, encoder_id: str | None = None) -> Bank:
    """A patch-level bank holding ``vectors`` ``(M, patch_dim)`` with a given threshold."""
    bank = Bank.create(encoder_id or encoder.encoder_id, encoder.patch_dim, encoder.input_size, level="patch",
                       patches_per_crop=1)
    bank.add(vectors, source="test", crops=len(vectors))
    bank.with_threshold(threshold, 0.01, len(vectors), len(vectors), 0.5)
    return bank


def far_bank(encoder: OnnxEncoder) -> Bank:
    """Every patch is ~1000 * sqrt(C) away from it: huge scores."""
    return patch_bank(encoder, np.full((3, encoder.patch_dim), 1000.0, np.float32), threshold=5.0)


def origin_bank(encoder: OnnxEncoder) -> Bank:
    """The zero vector twice: a patch's score is its feature norm."""
    return patch_bank(encoder, np.zeros((2, encoder.patch_dim), np.float32), threshold=7.5)


def build(cfg: Config, encoder: OnnxEncoder, bank: Bank, tmp_path: Path) -> tuple[Pipeline, CollectorRegistry]:
    registry = CollectorRegistry()
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(registry, STREAM), bank, tmp_path)
    return pipe, registry


def value(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"stream": STREAM})


def scores(result: FrameResult) -> list[float]:
    return [o.score for o in result.tracks if not math.isnan(o.score)]


def test_a_bank_of_another_encoder_is_refused(cfg: Config, encoder: OnnxEncoder, frames: list[Frame],
                                              tmp_path: Path) -> None:
    bank = far_bank(encoder)
    pipe, registry = build(cfg, encoder, bank, tmp_path)
    other_id = patch_bank(encoder, np.zeros((2, encoder.patch_dim), np.float32), 1.0, encoder_id="another-model")
    with pytest.raises(BankError, match=r"bank reload: bank was built with another encoder.*siamstream bank build"):
        pipe.swap_bank(other_id)
    # Same encoder id but global features (D) where the pipeline scores patches (C): refused as well.
    other_dim = Bank.create(encoder.encoder_id, encoder.embedding_dim, encoder.input_size, level="patch")
    other_dim.add(np.zeros((2, encoder.embedding_dim), np.float32))
    assert encoder.embedding_dim != encoder.patch_dim
    with pytest.raises(BankError, match=f"dim {encoder.embedding_dim}.*dim {encoder.patch_dim}"):
        pipe.swap_bank(other_dim)
    pipe.process(frames[0])
    assert pipe.anomaly is not None and pipe.bank is bank and pipe.anomaly.inspector.threshold == 5.0
    assert value(registry, "siamstream_bank_reloads_total") == 0
    assert value(registry, "siamstream_bank_size") == 3


def test_swap_needs_an_anomaly_stage(cfg: Config, encoder: OnnxEncoder) -> None:
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(CollectorRegistry()), None, Path("unused"))
    with pytest.raises(ValueError, match="without an anomaly stage"):
        pipe.swap_bank(origin_bank(encoder))


def test_a_swapped_bank_takes_effect_at_the_next_frame(cfg: Config, encoder: OnnxEncoder, frames: list[Frame],
                                                       tmp_path: Path) -> None:
    old = far_bank(encoder)
    pipe, registry = build(cfg, encoder, old, tmp_path)
    assert pipe.anomaly is not None
    before: list[float] = []
    it = iter(frames)
    for frame in it:  # until a whole part is in view and scored against the old bank
        before = scores(pipe.process(frame))
        if before:
            break
    assert before, "no part was scored in the first frames of the scene"
    assert min(before) > 1000.0  # against vectors of 1000s

    new = origin_bank(encoder)
    pipe.swap_bank(new)
    # Handed over, not applied: the frame being processed (or the next one) decides.
    assert pipe.bank is old and pipe.anomaly.inspector.threshold == 5.0
    assert value(registry, "siamstream_bank_reloads_total") == 0 and value(registry, "siamstream_bank_size") == 3

    after = scores(pipe.process(next(it)))
    assert pipe.bank is new and pipe.anomaly.k == new.meta.k
    assert pipe.anomaly.inspector.threshold == 7.5
    assert value(registry, "siamstream_bank_reloads_total") == 1
    assert value(registry, "siamstream_bank_size") == 2
    assert value(registry, "siamstream_bank_threshold") == 7.5
    assert value(registry, "siamstream_bank_updated_timestamp_seconds") == pytest.approx(new.meta.updated)
    assert after and all(math.isfinite(s) and 0 < s < 1000.0 for s in after)  # scored against the new bank

    pipe.process(next(it))  # nothing pending: no further reload
    assert value(registry, "siamstream_bank_reloads_total") == 1


def test_only_the_last_of_several_handovers_is_applied(cfg: Config, encoder: OnnxEncoder, frames: list[Frame],
                                                       tmp_path: Path) -> None:
    pipe, registry = build(cfg, encoder, far_bank(encoder), tmp_path)
    first, last = origin_bank(encoder), patch_bank(encoder, np.zeros((4, encoder.patch_dim), np.float32), 9.0)
    pipe.swap_bank(first)
    pipe.swap_bank(last)
    pipe.process(frames[0])
    assert pipe.anomaly is not None and pipe.bank is last and pipe.anomaly.inspector.threshold == 9.0
    assert value(registry, "siamstream_bank_reloads_total") == 1 and value(registry, "siamstream_bank_size") == 4


def test_reloader_into_pipeline_refuses_another_encoder_then_swaps_a_good_bank(
        cfg: Config, encoder: OnnxEncoder, frames: list[Frame], tmp_path: Path) -> None:
    """The wiring of `siamstream run`: BankReloader -> Pipeline.swap_bank, errors counted."""
    path = tmp_path / "bank"
    far_bank(encoder).save(path)
    loaded = app.load_bank(str(path), encoder)
    assert loaded is not None
    pipe, registry = build(cfg, encoder, loaded, tmp_path)
    metrics = pipe.metrics
    errors: list[str] = []

    def on_error(message: str) -> None:
        errors.append(message)
        metrics.bank_reload_errors.inc()

    reloader = BankReloader(path, 60.0, pipe.swap_bank, on_error)
    meta = json.loads((path / "meta.json").read_text())
    meta["encoder_id"] = "another-model"  # rewritten in place: a loadable bank the running encoder cannot use
    (path / "meta.json").write_text(json.dumps(meta))
    assert not reloader.check() and not reloader.check()
    assert len(errors) == 1 and "built with another encoder" in errors[0]
    assert value(registry, "siamstream_bank_reload_errors_total") == 1
    pipe.process(frames[0])
    assert value(registry, "siamstream_bank_reloads_total") == 0 and value(registry, "siamstream_bank_size") == 3

    origin_bank(encoder).save(path)
    assert reloader.check()
    pipe.process(frames[1])
    assert value(registry, "siamstream_bank_reloads_total") == 1 and value(registry, "siamstream_bank_size") == 2
    assert pipe.anomaly is not None and pipe.anomaly.inspector.threshold == 7.5
    assert value(registry, "siamstream_bank_reload_errors_total") == 1


def test_a_swap_into_per_cell_scores_starts_the_parts_scores_over(cfg: Config, encoder: OnnxEncoder,
                                                                  frames: list[Frame], tmp_path: Path) -> None:
    from pipeline.anomaly.cellnorm import CellNorm

    old = far_bank(encoder)
    pipe, _ = build(cfg, encoder, old, tmp_path)
    assert pipe.anomaly is not None
    it = iter(frames)
    scored: list[int] = []
    for frame in it:  # until some part has a few scores against the old bank
        result = pipe.process(frame)
        scored = [o.track_id for o in result.tracks if not math.isnan(o.score)]
        if scored and pipe.anomaly.inspector.current(scored[0]).frames_scored >= 2:
            break
    assert scored, "no part was scored in the scene"
    part = scored[0]
    cells = encoder.patch_grid[0] * encoder.patch_grid[1]
    new = Bank.create(encoder.encoder_id, encoder.patch_dim, encoder.input_size, level="patch",
                      patches_per_crop=cells)
    new.add(np.zeros((2, encoder.patch_dim), np.float32))
    new.with_cell_norm(CellNorm(np.zeros(cells, np.float32), np.ones(cells, np.float32)))
    new.with_threshold(7.5, 0.01, 2, 2, 0.5)
    pipe.swap_bank(new)
    result = pipe.process(next(it))
    seen = [o for o in result.tracks if o.track_id == part and not math.isnan(o.score)]
    assert pipe.bank is new and seen, "the part left the view at the swap"
    # the part's old distances (over 1000) are gone: one score, against the new bank
    assert pipe.anomaly.inspector.current(part).frames_scored == 1 and seen[0].score < 1000.0

    # A bank normalising another number of cells than the encoder's crops have is refused at the swap.
    wrong = Bank.create(encoder.encoder_id, encoder.patch_dim, encoder.input_size, level="patch",
                        patches_per_crop=cells + 1)
    wrong.add(np.zeros((2, encoder.patch_dim), np.float32))
    wrong.with_cell_norm(CellNorm(np.zeros(cells + 1, np.float32), np.ones(cells + 1, np.float32)))
    with pytest.raises(BankError, match=f"bank reload: bank normalises {cells + 1} patches per crop"):
        pipe.swap_bank(wrong)
