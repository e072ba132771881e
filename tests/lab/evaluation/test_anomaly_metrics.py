from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lab.evaluation.anomaly_metrics import aupro, auroc_with_interval, pixel_auroc_ap, wilson


def test_wilson_interval_by_hand() -> None:
    iv = wilson(0, 25)
    assert iv.value == 0.0 and iv.low == 0.0 and iv.high == pytest.approx(0.1332, abs=1e-3)
    iv = wilson(5, 10)  # centre 0.5, half-width 1.96 sqrt(.25/10 + 1.96^2/400) / (1 + 1.96^2/10)
    assert iv.value == 0.5 and iv.low == pytest.approx(0.2366, abs=1e-3) and iv.high == pytest.approx(0.7634, abs=1e-3)
    assert np.isnan(wilson(0, 0).value)


def test_auroc_interval_contains_the_value_and_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(25), np.ones(30)].astype(int)
    s = np.r_[rng.normal(0, 1, 25), rng.normal(1, 1, 30)]
    iv = auroc_with_interval(y, s, resamples=500)
    assert iv.value == pytest.approx(roc_auc_score(y, s))
    assert iv.low < iv.value < iv.high and iv.high - iv.low < 0.4
    perfect = auroc_with_interval(y, y + 0.0, resamples=100)
    assert (perfect.value, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="both good and defective"):
        auroc_with_interval(np.ones(3), np.arange(3.0))


def test_pixel_auroc_and_ap_by_hand() -> None:
    masks = np.array([[[0, 1], [0, 0]]], bool)
    maps = np.array([[[0.1, 0.9], [0.8, 0.2]]], np.float32)
    auroc, ap = pixel_auroc_ap(masks, maps)
    assert auroc == 1.0 and ap == 1.0
    maps2 = np.array([[[0.1, 0.5], [0.8, 0.2]]], np.float32)  # one good pixel outranks the defect
    auroc2, ap2 = pixel_auroc_ap(masks, maps2)
    assert auroc2 == pytest.approx(2 / 3) and ap2 == pytest.approx(0.5)
    with pytest.raises(ValueError, match="defect pixel"):
        pixel_auroc_ap(np.zeros((1, 2, 2), bool), maps)


def test_aupro_perfect_partial_and_blind() -> None:
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 5:10, 5:10] = True  # region A
    masks[1, 20:30, 20:30] = True  # region B (4x larger: AUPRO weighs regions, not pixels)
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-3)
    half = np.zeros_like(masks, np.float32)
    half[0] = masks[0]  # finds region A only
    assert aupro(masks, half) == pytest.approx(0.5, abs=0.01)
    assert aupro(masks, np.zeros_like(masks, np.float32)) == pytest.approx(0.0, abs=1e-3)
    big = np.zeros((2, 100, 100), bool)
    big[0, 10:40, 10:40] = big[1, 50:90, 50:90] = True
    noise = np.random.default_rng(0).random(big.shape).astype(np.float32)  # chance: PRO = FPR; mean over [0, 0.3]
    assert aupro(big, noise) == pytest.approx(0.15, abs=0.02)
