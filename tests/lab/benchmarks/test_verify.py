"""``siamstream bench verify`` end to end on the real AT&T faces: folds over subjects, the whitening recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.benchmarks.verify import RECIPES, describe, main, subject_folds
from pipeline.config import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_subject_folds_deal_every_subject_once() -> None:
    subjects = [Path(f"s{i}") for i in range(1, 41)]
    folds = subject_folds(subjects, 5)
    assert [len(f) for f in folds] == [8] * 5
    assert sorted(s for f in folds for s in f) == sorted(subjects)
    assert subject_folds(subjects, 5) == folds  # seeded


def test_recipes_say_what_they_train() -> None:
    assert describe(RECIPES["whiten"]) == ("efficientnet-lite0 stage 6, gem pooling, 160 px; within-class whitening "
                                           "head (shrinkage 0.3, mirror images)")
    assert "triplet_batch_hard, 5 x 20 batches of 16 x 4" in describe(RECIPES["triplet"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 3}, "the whiten recipe trains no epochs"),
    ({"epochs": 0, "recipe": "triplet"}, "allowed: 1 or more"),
    ({"recipe": "arcface"}, "choose one of whiten, triplet"),
])
def test_bad_recipe_or_epochs_is_a_clear_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        main(**kwargs)  # type: ignore[arg-type]


@pytest.mark.data
def test_bench_verify_on_two_folds_of_real_faces(shared_data: Callable[..., Path], tmp_path: Path) -> None:
    shared_data("att_faces", "training")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "bench", "verify", "--folds", "2", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["recipe"] == "whiten" and len(figures["eer_per_fold"]) == 2
    assert 0.0 <= figures["eer"] <= 0.5 and 0.5 <= figures["auc"] <= 1.0
    assert figures["train_seconds"] > 0
    assert "recipe whiten: efficientnet-lite0 stage 6" in proc.stdout
    assert all((tmp_path / f"fold{f}" / "roc.png").stat().st_size > 1000 for f in range(2))
