from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.anomaly.fit import RECIPES, CandidateResult, FitSettings, Recipe, choose, fit_anomaly, size_policy
from pipeline.anomaly.manifest import load_manifest
from pipeline.config import Config, ConfigError, load_config, replace
from tests.anomaly_manifests import write_manifest


def _candidate(name: str, auroc: float, ap: float, ms: float, budget: float = 50.0) -> CandidateResult:
    return CandidateResult(name, (64, 64), auroc, ap, {}, ms / 10, ms, ms <= budget, 100, 1.0)


def test_the_rule_takes_the_best_probe_auroc_within_the_budget() -> None:
    cands = {c.name: c for c in [_candidate("slow best", 0.99, 0.5, 80.0), _candidate("fast", 0.95, 0.3, 20.0),
                                 _candidate("fast better", 0.97, 0.2, 45.0)]}
    assert choose(cands) == "fast better"


def test_auroc_ties_to_three_decimals_go_to_pixel_ap() -> None:
    cands = {c.name: c for c in [_candidate("a", 0.9701, 0.2, 10.0), _candidate("b", 0.9699, 0.4, 10.0)]}
    assert choose(cands) == "b"


def test_the_fastest_when_none_fits_the_budget() -> None:
    cands = {c.name: c for c in [_candidate("a", 0.99, 0.2, 90.0), _candidate("b", 0.8, 0.1, 60.0)]}
    assert choose(cands) == "b"


def test_images_of_one_size_are_used_as_they_are(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.zeros((40, 60, 3), np.uint8))
    policy = size_policy(paths)
    assert policy.size_hw == (40, 60) and policy.resized == 0
    assert "used as they are" in policy.describe()


def test_images_of_varying_size_go_to_the_median_size(tmp_path: Path) -> None:
    sizes = [(40, 60), (44, 60), (50, 80), (40, 60), (48, 70)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.zeros((h, w, 3), np.uint8))
    policy = size_policy(paths)
    assert policy.size_hw == (44, 60) and policy.resized == 4 and policy.images == 5
    assert policy.aspect_range == pytest.approx((60 / 44, 1.6))
    assert "4 of 5 images resized to 44x60" in policy.describe()


def test_settings_are_checked() -> None:
    assert len(FitSettings().candidates()) == len(RECIPES)
    assert not any(r.adapt for r in FitSettings(adapt=False).candidates())
    assert [r.name for r in FitSettings(recipes=("s4 1x sigma4",)).candidates()] == ["s4 1x sigma4"]
    with pytest.raises(ConfigError, match="no recipe 's9'"):
        FitSettings(recipes=("s9",))
    with pytest.raises(ConfigError, match="--budget-ms"):
        FitSettings(budget_ms=0)
    with pytest.raises(ConfigError, match="--defect-size"):
        FitSettings(defect_size=0.9)


SMALL = {"index": "flat", "coreset_fraction": 0.5, "max_vectors": 100_000}
TINY_RECIPES = (
    Recipe("s4 64px", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 0}, SMALL,
           {"map_sigma": 2.0, "map_border": 0}, size=(64, 64)),
    # Sized from the images (128 px, here at half their size).
    Recipe("s4+s3 half", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 3}, SMALL,
           {"map_sigma": 2.0, "map_border": 0}, scale=0.5),
    Recipe("s4+s3 half adapted", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 3}, SMALL,
           {"map_sigma": 2.0, "map_border": 0}, scale=0.5, adapt=True),
)


def _base(tmp_path: Path, false_alarm_rate: float = 0.2) -> Config:
    cfg = replace(load_config(None), "encoder", cache_dir=str(tmp_path / "cache"))
    return replace(cfg, "bank", false_alarm_rate=false_alarm_rate, folds=2)


def test_fit_scores_every_recipe_without_reading_the_test_split(tmp_path: Path) -> None:
    from encoders.adapt import AdaptConfig

    rows = load_manifest(write_manifest(tmp_path / "data"))
    for row in rows:  # the fit must not need the test images: remove them
        if row.split == "test":
            row.image.unlink()
    result = fit_anomaly(rows, _base(tmp_path), FitSettings(per_image=2, defect_size=0.15), tmp_path / "work",
                         recipes=TINY_RECIPES, adapt=AdaptConfig(steps=2, batch=2, crop=64))
    assert set(result.candidates) == {r.name for r in TINY_RECIPES}
    assert set(result.adapt_seconds) == {"s4+s3 half adapted"}  # adapted on the train images only
    assert result.candidates["s4+s3 half"].input_hw == (64, 64) and result.candidates["s4 64px"].input_hw == (64, 64)
    assert result.chosen.name == choose(result.candidates)
    for c in result.candidates.values():
        assert 0.0 <= c.image_auroc <= 1.0 and c.cost_ratio > 0 and c.ms_per_image > 0
        assert set(c.per_kind_auroc) == {"crack", "spot"}  # two probes per image: the first two kinds
    assert len(result.reference_ms) == len(TINY_RECIPES) * (1 + FitSettings().timing_repeats)
    adapted = result.encoder_path if result.chosen.adapt else None
    assert adapted is None or adapted.is_file()
    meta = result.bank.meta
    assert meta.calibration_samples == 12 + 6 and meta.false_alarm_rate == 0.2
    assert meta.threshold == pytest.approx(np.quantile(result.calibrated.good_scores, 0.8, method="higher"))


def test_the_threshold_keeps_its_false_alarm_bound_across_seeds(tmp_path: Path) -> None:
    """Fitted with three seeds (probes, coreset, folds), each threshold's false-alarm rate on good images the fit
    never saw stays within the 95% upper bound the bank stores."""
    from lab.evaluation.anomaly_eval import evaluate_anomaly
    from pipeline.encoder import OnnxEncoder

    rows = load_manifest(write_manifest(tmp_path / "data", n_good=30, n_bad=2))
    unseen = [r for r in rows if r.split == "test" and not r.is_anomaly]
    for seed in range(3):
        result = fit_anomaly(rows, _base(tmp_path, 0.1), FitSettings(per_image=1, defect_size=0.15, seed=seed),
                             tmp_path / f"work{seed}", recipes=TINY_RECIPES[:1])
        ev, _ = evaluate_anomaly(rows, OnnxEncoder(result.encoder_path), sigma_px=2.0, bank=result.bank)
        flagged_good = int((ev.test_scores[:len(unseen)] > result.bank.meta.threshold).sum())
        assert [r.is_anomaly for r in ev.test_rows[:len(unseen)]] == [False] * len(unseen)
        assert flagged_good / len(unseen) <= result.bank.meta.false_alarm_upper_95, seed
