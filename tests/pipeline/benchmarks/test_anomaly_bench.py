"""``bench anomaly``'s recipe selection: candidates scored on synthetic defects, never on the test split."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.benchmarks import anomaly as bench
from pipeline.config import load_config, replace
from pipeline.evaluation.anomaly_eval import load_manifest

from ..evaluation.test_anomaly_eval import write_manifest

SMALL = {"index": "flat", "coreset_fraction": 0.5, "false_alarm_rate": 0.2, "max_vectors": 100_000, "folds": 0}
CANDIDATES = (
    bench.Entry("s4 sigma2", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 0}, SMALL,
                {"map_sigma": 2.0, "map_border": 0, "k": 1}, size=(64, 64)),
    bench.Entry("s4+s3 sigma2", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 3}, SMALL,
                {"map_sigma": 2.0, "map_border": 0, "k": 1}, size=(64, 64)),
)


def test_selection_scores_every_candidate_without_reading_the_test_split(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rows = load_manifest(write_manifest(tmp_path / "data"))
    for row in rows:  # the selection must not need the test images: remove them
        if row.split == "test":
            row.image.unlink()
    base = replace(load_config(None), "encoder", cache_dir=str(tmp_path / "cache"))
    sel = bench.select_recipe(base, rows, CANDIDATES, per_image=2, window_fraction=0.4)
    assert set(sel.scores) == {"s4 sigma2", "s4+s3 sigma2"}
    best = max(CANDIDATES, key=lambda e: (round(sel.scores[e.name].image_auroc, 3), sel.scores[e.name].pixel_ap))
    assert sel.chosen == best
    assert all(0.0 <= s.image_auroc <= 1.0 and s.ms_per_image > 0 for s in sel.scores.values())

    # Over the time budget: the fastest candidate is taken whatever its accuracy.
    monkeypatch.setattr(bench, "MS_BUDGET", 0.0)
    slow = bench.select_recipe(base, rows, CANDIDATES, per_image=2, window_fraction=0.4)
    assert slow.chosen == min(CANDIDATES, key=lambda e: slow.scores[e.name].ms_per_image)


def test_unknown_recipe_names_the_candidates() -> None:
    with pytest.raises(ValueError, match="choose one of: s4\\+s3 2x sigma2"):
        bench.main(recipe="nope")
