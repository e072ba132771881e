"""``bench anomaly``'s recipe selection: candidates scored on synthetic defects, never on the test split."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoders.adapt import AdaptConfig
from lab.benchmarks import anomaly as bench
from lab.evaluation.anomaly_select import SyntheticScore
from pipeline import app
from pipeline.anomaly.manifest import load_manifest
from pipeline.config import ConfigError, load_config, replace
from pipeline.encoder import OnnxEncoder

from ..evaluation.test_anomaly_eval import write_manifest

SMALL = {"index": "flat", "coreset_fraction": 0.5, "false_alarm_rate": 0.2, "max_vectors": 100_000, "folds": 2}
CANDIDATES = (
    bench.Entry("s4 sigma2", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 0}, SMALL,
                {"map_sigma": 2.0, "map_border": 0}, size=(64, 64)),
    # Sized from the images (128 px, here at half their size): the size comes from the validation images.
    bench.Entry("s4+s3 half", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 3}, SMALL,
                {"map_sigma": 2.0, "map_border": 0}, scale=0.5),
    bench.Entry("s4+s3 half adapted", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 3}, SMALL,
                {"map_sigma": 2.0, "map_border": 0}, scale=0.5, adapt=True),
)


def score(auroc: float, ap: float, ms: float) -> SyntheticScore:
    return SyntheticScore(image_auroc=auroc, pixel_ap=ap, per_kind_auroc={}, ms_per_image=ms, bank_vectors=1)


def test_choose_takes_the_best_auroc_within_the_time_budget() -> None:
    a, b, c = (bench.Entry(n, {}, {}) for n in ("a", "b", "c"))
    scores = {"a": score(0.97, 0.3, 60.0), "b": score(0.95, 0.2, 40.0), "c": score(0.9504, 0.4, 20.0)}
    assert bench.choose((a, b, c), scores, 50.0) is c  # a is over budget; b and c tie at 0.950, c has more AP
    assert bench.choose((a, b, c), scores, 100.0) is a
    assert bench.choose((a, b, c), scores, 10.0) is c  # nothing within budget: the fastest


def test_selection_scores_every_candidate_without_reading_the_test_split(tmp_path: Path) -> None:
    rows = load_manifest(write_manifest(tmp_path / "data"))
    for row in rows:  # the selection must not need the test images: remove them
        if row.split == "test":
            row.image.unlink()
    base = replace(load_config(None), "encoder", cache_dir=str(tmp_path / "cache"))
    work = bench.Workspace(tmp_path / "work", AdaptConfig(steps=2, batch=2, crop=64))
    sel = bench.select_recipe(base, rows, work, CANDIDATES, per_image=2, window_fraction=0.4)
    assert set(sel.scores) == {"s4 sigma2", "s4+s3 half", "s4+s3 half adapted"}
    # The adapted candidate was scored with its own encoder, adapted on the train images only.
    adapted = work.config(base, CANDIDATES[2], rows).encoder.model
    assert Path(adapted).is_file() and set(work.adapt_seconds) == {"s4+s3 half adapted"}
    assert OnnxEncoder(adapted).encoder_id != OnnxEncoder(
        app.build_encoder(bench.entry_config(base, CANDIDATES[1]).encoder, size=(64, 64)).path).encoder_id
    assert sel.chosen is bench.choose(CANDIDATES, sel.scores, bench.MS_BUDGET)
    assert all(0.0 <= s.image_auroc <= 1.0 and s.ms_per_image > 0 for s in sel.scores.values())
    assert bench.entry_size(CANDIDATES[1], rows) == (64, 64)


def test_unknown_recipe_names_the_candidates() -> None:
    with pytest.raises(ConfigError, match="no such candidate; choose one of: 's4\\+s3 2x sigma2'"):
        bench.main(recipe="nope")


def test_the_tire_config_holds_the_recipe_bench_anomaly_chose() -> None:
    """deploy/configs/tire.toml is what the README tells users to run: the settings of the chosen candidate (the
    "Defect detection" table of docs/benchmarks/anomaly.md), so that eval anomaly with it reproduces the benchmark."""
    chosen = next(e for e in bench.CANDIDATES if e.name == "s4+s3 1.75x sigma2 adapted cellnorm")
    tire = load_config(Path(__file__).resolve().parents[3] / "deploy" / "configs" / "tire.toml")
    for section, settings in (("encoder", chosen.encoder), ("bank", chosen.bank), ("anomaly", chosen.anomaly)):
        for key, value in settings.items():
            assert getattr(getattr(tire, section), key) == value, f"[{section}] {key}"
    assert tire.bank.level == "patch" and chosen.adapt and chosen.scale == 1.75
