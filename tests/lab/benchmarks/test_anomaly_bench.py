"""``bench anomaly``: the product's ``anomaly fit`` over seeds, then the test split; its names and its config."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.benchmarks import anomaly as bench
from pipeline.anomaly.fit import RECIPES
from pipeline.config import ConfigError, load_config


def test_unknown_recipe_names_the_candidates() -> None:
    with pytest.raises(ConfigError, match="no such candidate; choose one of: 's4\\+s3 2x sigma2'"):
        bench.main(recipe="nope")


def test_seeds_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"--seeds 0: allowed 1 \.\. 20"):
        bench.main(seeds=0)


def test_the_tire_config_holds_the_recipe_bench_anomaly_chose() -> None:
    """deploy/configs/tire.toml holds the recipe `anomaly fit` chose for tire in `bench anomaly` (every seed of
    docs/benchmarks/anomaly.md), so that eval anomaly with it scores those settings."""
    chosen = next(r for r in RECIPES if r.name == "s3 2x sigma2 cellnorm")
    tire = load_config(Path(__file__).resolve().parents[3] / "deploy" / "configs" / "tire.toml")
    for section, settings in (("encoder", chosen.encoder), ("bank", chosen.bank), ("anomaly", chosen.anomaly)):
        for key, value in settings.items():
            assert getattr(getattr(tire, section), key) == value, f"[{section}] {key}"
    assert tire.bank.level == "patch" and not chosen.adapt and chosen.scale == 2.0
