from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.anomaly.separation import auroc, average_precision


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_scikit_learn_with_ties(seed: int) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.random(2000) < 0.15
    s = np.round(rng.normal(size=2000) + 0.9 * y, 1)  # rounded: many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_perfect_reversed_and_degenerate() -> None:
    y = np.array([0, 0, 1, 1], bool)
    assert auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert average_precision(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert average_precision(y, np.array([0.9, 0.8, 0.2, 0.1])) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert math.isnan(auroc(np.zeros(3, bool), np.arange(3.0)))
    assert math.isnan(average_precision(np.zeros(3, bool), np.arange(3.0)))
