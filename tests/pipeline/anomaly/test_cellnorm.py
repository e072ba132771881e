from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.anomaly.bank import Bank, BankError, build_bank
from pipeline.anomaly.cellnorm import CellNorm, fit_cell_norm, leave_one_out


def test_fit_is_the_mean_and_the_spread_floored_at_the_median_spread() -> None:
    s = np.array([[1.0, 10.0, 0.0], [3.0, 10.0, 4.0], [5.0, 10.0, 8.0]])
    norm = fit_cell_norm(s)
    np.testing.assert_allclose(norm.mean, [3.0, 10.0, 4.0])
    spread = np.sqrt(8 / 3)  # cell 0; cell 1 has none; cell 2 twice cell 0's
    np.testing.assert_allclose(norm.scale, [spread, spread, 2 * spread], rtol=1e-6)  # median spread = cell 0's
    np.testing.assert_allclose(norm.apply(np.array([[3.0 + spread, 10.0, 4.0 - 4 * spread]])), [[1.0, 0.0, -2.0]],
                               atol=1e-5)


def test_leave_one_out_equals_fitting_on_the_other_rows() -> None:
    rng = np.random.default_rng(0)
    s = rng.gamma(2.0, 1.0, size=(12, 7)) * rng.uniform(0.1, 3.0, size=7)
    floor = float(np.median(s.std(axis=0)))
    expected = np.empty_like(s)
    for i in range(len(s)):
        rest = np.delete(s, i, axis=0)
        expected[i] = (s[i] - rest.mean(0)) / np.maximum(rest.std(0), floor)
    np.testing.assert_allclose(leave_one_out(s), expected, rtol=1e-5, atol=1e-5)
    # a row is more unusual against the others than against statistics that include it
    assert np.abs(leave_one_out(s)).max() > np.abs(fit_cell_norm(s).apply(s)).max()


def test_leave_one_group_out_leaves_out_every_crop_of_the_part() -> None:
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(6), [1, 4, 2, 3, 1, 5])
    s = rng.gamma(2.0, 1.0, size=(len(groups), 5)) + groups[:, None] * 0.3  # crops of a part are alike
    floor = float(np.median(s.std(axis=0)))
    expected = np.empty_like(s)
    for i, g in enumerate(groups):
        rest = s[groups != g]
        expected[i] = (s[i] - rest.mean(0)) / np.maximum(rest.std(0), floor)
    np.testing.assert_allclose(leave_one_out(s, groups), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(leave_one_out(s, groups), leave_one_out(s))
    with pytest.raises(ValueError, match="at least 2 good samples outside every group"):
        leave_one_out(s, np.r_[np.zeros(len(s) - 1), 1])  # one part holds all crops but one
    with pytest.raises(ValueError, match=r"groups must be \(N,\)"):
        leave_one_out(s, groups[:-1])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        fit_cell_norm(np.ones((1, 4)))
    with pytest.raises(ValueError, match="at least 2 good samples outside"):
        leave_one_out(np.ones((2, 4)))
    with pytest.raises(ValueError, match="finite positive scales"):
        CellNorm(np.zeros(2, np.float32), np.array([1.0, np.inf], np.float32))
    with pytest.raises(ValueError, match="finite"):
        fit_cell_norm(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="finite positive scales"):
        CellNorm(np.zeros(3, np.float32), np.array([1.0, 0.0, 1.0], np.float32))
    with pytest.raises(ValueError, match="3 cells per crop"):
        CellNorm(np.zeros(3, np.float32), np.ones(3, np.float32)).apply(np.zeros((2, 4)))


def parts(rng: np.random.Generator, n: int, defect_cell: int | None = None) -> np.ndarray:
    """``(n, 9, 8)`` patch features of parts seen in one pose: cell 0 (an edge, a highlight) differs a lot from
    part to part, every other cell very little; a defect moves one quiet cell by 0.25."""
    bases = np.random.default_rng(99).normal(0, 3.0, size=(9, 8))
    noise = np.full(9, 0.01)
    noise[0] = 0.5
    x = bases + rng.normal(size=(n, 9, 8)) * noise[None, :, None]
    if defect_cell is not None:
        step = rng.normal(size=(n, 8))
        x[:, defect_cell] += 0.25 * step / np.linalg.norm(step, axis=1, keepdims=True)
    return x.astype(np.float32)


def test_a_defect_on_a_quiet_cell_is_found_only_with_cell_norm() -> None:
    rng = np.random.default_rng(1)
    good, held_out, defective = parts(rng, 80), parts(rng, 40), parts(rng, 40, defect_cell=4)
    groups = np.arange(len(good))
    raw = build_bank(good, groups, "enc", (48, 48), level="patch", folds=5, false_alarm_rate=0.05)
    normed = build_bank(good, groups, "enc", (48, 48), level="patch", folds=5, false_alarm_rate=0.05,
                        cell_norm=True)
    assert raw.cell_norm is None and normed.cell_norm is not None and normed.cell_norm.cells == 9
    # the noisy cell sets the raw maximum: a 0.25 step on a quiet cell stays below the threshold
    assert np.mean(raw.score_crops(defective) > raw.meta.threshold) < 0.2
    # scored against its own cell's good spread, the step stands out
    assert np.mean(normed.score_crops(defective) > normed.meta.threshold) == 1.0
    # and the threshold, calibrated leave one out, holds its false-alarm rate on new good parts
    assert np.mean(normed.score_crops(held_out) > normed.meta.threshold) <= 0.15
    np.testing.assert_allclose(normed.raw_patch_scores(defective), raw.raw_patch_scores(defective), rtol=1e-6)


def test_cell_norm_is_saved_with_the_bank_and_checked_on_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    good = parts(rng, 30)
    bank = build_bank(good, np.arange(30), "enc", (48, 48), level="patch", folds=3, cell_norm=True)
    bank.save(tmp_path / "bank")
    loaded = Bank.load(tmp_path / "bank")
    query = parts(rng, 5, defect_cell=2)
    np.testing.assert_array_equal(loaded.patch_scores(query), bank.patch_scores(query))
    assert loaded.meta.threshold == bank.meta.threshold

    # the encoder of another input size gives another number of patches: refused, naming the sizes
    loaded.check_encoder("enc", 8, 8, "here", patches=9)
    with pytest.raises(BankError, match=r"here: bank normalises 9 patches per crop \(input 48x48\), the encoder "
                                        r"gives 16"):
        loaded.check_encoder("enc", 8, 8, "here", patches=16)

    meta_file = tmp_path / "bank" / "meta.json"
    meta = json.loads(meta_file.read_text())
    for broken, why in (({"cell_mean": meta["cell_mean"][:-1]}, "8 means and 9 scales for 9 patches"),
                        ({"cell_mean": 5}, "cell_mean = 5 is not a list of finite numbers"),
                        ({"cell_scale": [0.0] * 9}, "cell_scale = .* is not a list of finite numbers > 0"),
                        ({"cell_scale": {"a": 1}}, "cell_scale = {'a': 1} is not a list")):
        meta_file.write_text(json.dumps({**meta, **broken}))
        with pytest.raises(BankError, match=f"{why}.*rebuild"):
            Bank.load(tmp_path / "bank")

    # a bank saved before cell normalisation existed has neither field: it loads and scores raw distances
    old = {k: v for k, v in meta.items() if k not in ("cell_mean", "cell_scale")}
    meta_file.write_text(json.dumps(old))
    legacy = Bank.load(tmp_path / "bank")
    assert legacy.cell_norm is None
    np.testing.assert_array_equal(legacy.patch_scores(query), bank.raw_patch_scores(query))


def test_cell_norm_needs_a_patch_bank_and_folds() -> None:
    good = parts(np.random.default_rng(3), 10)
    with pytest.raises(BankError, match="cell_norm = false"):
        build_bank(good.mean(axis=1), np.arange(10), "enc", (48, 48), level="global", cell_norm=True)
    with pytest.raises(BankError, match="folds >= 2"):
        build_bank(good, np.arange(10), "enc", (48, 48), level="patch", folds=0, cell_norm=True)
    with pytest.raises(BankError, match=r"at least 3 parts.*got .* 2 parts"):
        build_bank(good, np.arange(10) % 2, "enc", (48, 48), level="patch", folds=2, cell_norm=True)
    bank = Bank.create("enc", 8, (48, 48), level="patch", patches_per_crop=4)
    with pytest.raises(BankError, match="does not fit"):
        bank.with_cell_norm(fit_cell_norm(np.random.default_rng(0).random((5, 9))))


def test_the_bank_follows_a_changed_cell_norm() -> None:
    bank = Bank.create("enc", 8, (48, 48), level="patch", patches_per_crop=3)
    bank.add(np.zeros((2, 8), np.float32))
    query = np.ones((1, 3, 8), np.float32)  # every patch at distance sqrt(8) from the bank
    bank.with_cell_norm(CellNorm(np.zeros(3, np.float32), np.ones(3, np.float32)))
    first = bank.cell_norm
    assert bank.cell_norm is first  # built once, not per call
    np.testing.assert_allclose(bank.patch_scores(query), [[np.sqrt(8)] * 3], rtol=1e-6)
    bank.with_cell_norm(CellNorm(np.full(3, 1.0, np.float32), np.full(3, 2.0, np.float32)))
    np.testing.assert_allclose(bank.patch_scores(query), [[(np.sqrt(8) - 1) / 2] * 3], rtol=1e-6)
    bank.with_cell_norm(None)
    assert bank.cell_norm is None
    np.testing.assert_allclose(bank.patch_scores(query), [[np.sqrt(8)] * 3], rtol=1e-6)
