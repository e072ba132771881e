"""Choosing anomaly settings on small synthetic defects painted on good validation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lab.evaluation.anomaly_select import score_synthetic, small_defect, synthetic_set
from pipeline.anomaly.manifest import ManifestError, load_manifest

from .test_anomaly_eval import write_manifest


@pytest.mark.parametrize("kind", ["cutpaste", "scratch", "hole", "stain"])
def test_small_defect_stays_inside_its_window_and_mask(kind: str) -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(60, 120, size=(96, 128, 3)).astype(np.uint8)
    bad, mask = small_defect(img, rng, kind, window_fraction=0.25)
    assert bad.shape == img.shape and bad.dtype == np.uint8 and mask.dtype == bool
    changed = (bad != img).any(axis=2)
    assert changed.any() and not (changed & ~mask).any()  # nothing outside the mask changes
    ys, xs = np.nonzero(mask)
    assert ys.max() - ys.min() < 24 and xs.max() - xs.min() < 32  # inside a window of a quarter of each side
    assert mask.mean() < 0.0625


def test_small_defect_rejects_bad_windows() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="window_fraction"):
        small_defect(img, np.random.default_rng(0), window_fraction=0.0)
    with pytest.raises(ValueError, match="too small"):
        small_defect(np.zeros((6, 6, 3), np.uint8), np.random.default_rng(0))


def test_synthetic_set_pairs_each_good_image_with_defective_copies(tmp_path: Path) -> None:
    rows = load_manifest(write_manifest(tmp_path))
    validation = [r for r in rows if r.split == "validation"]
    synth = synthetic_set(validation, per_image=4, seed=1)
    assert synth.images.shape == (6 * 5, 128, 128, 3) and synth.masks.shape == (30, 128, 128)
    assert synth.kinds[:5] == ("good", "cutpaste", "scratch", "hole", "stain")
    assert synth.is_anomaly.sum() == 24
    assert not synth.masks[~synth.is_anomaly].any() and all(m.any() for m in synth.masks[synth.is_anomaly])
    again = synthetic_set(validation, per_image=4, seed=1)
    assert np.array_equal(again.images, synth.images)  # seeded
    with pytest.raises(ManifestError, match="good images only"):
        synthetic_set([r for r in rows if r.is_anomaly])


def test_score_synthetic_separates_painted_defects(tmp_path: Path, pretrained_onnx: Path) -> None:
    from pipeline.encoder import OnnxEncoder

    rows = load_manifest(write_manifest(tmp_path))
    encoder = OnnxEncoder(pretrained_onnx, device="cpu", threads=2)
    synth = synthetic_set([r for r in rows if r.split == "validation"], per_image=4, window_fraction=0.4)
    train = [r.image for r in rows if r.split == "train"]
    score = score_synthetic(train, synth, encoder, coreset_fraction=0.5, sigma_px=2.0)
    assert score.image_auroc >= 0.8  # defects on a regular part stand out from the bank of good ones
    assert 0.0 < score.pixel_ap <= 1.0 and score.ms_per_image > 0
    assert set(score.per_kind_auroc) == {"cutpaste", "scratch", "hole", "stain"}
    assert 0 < score.bank_vectors <= 12 * encoder.patch_grid[0] * encoder.patch_grid[1]
    # A bank that has seen nothing like these parts separates nothing: the figure measures the bank.
    blank = [tmp_path / "blank.png"]
    import cv2

    cv2.imwrite(str(blank[0]), np.full((128, 128, 3), 128, np.uint8))
    assert score_synthetic(blank * 2, synth, encoder, coreset_fraction=1.0).image_auroc < score.image_auroc
