"""A patch bank for whole images, calibrated on held-out good images: what ``anomaly fit`` writes and ``eval
anomaly`` scores with.

The bank holds the ``train`` images' patch features (reduced to a coreset). The threshold is the ``1 -
false_alarm_rate`` quantile of the image scores of every good image not in the bank: the ``validation`` images,
scored against the bank, and (with ``folds`` >= 2) each train image scored against a bank built from the other
folds of train, reduced the same way. A fold bank holds fewer images than the final bank, so those scores run a
little high and the threshold errs towards fewer false alarms. With ``cell_norm`` the out-of-fold scores also give
each grid cell its good statistics (:mod:`pipeline.anomaly.cellnorm`).

An image's score is the maximum of its anomaly map (patch scores smoothed at the image's size, a border band left
out): :func:`image_scores`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.anomaly.bank import Bank, BankError, build_bank, calibration_patch_scores, out_of_fold_patch_scores
from pipeline.anomaly.calibrate import false_alarm_upper_bound, threshold_for_false_alarm_rate
from pipeline.anomaly.maps import anomaly_maps, map_scores, mask_border
from pipeline.config import AnomalyConfig, BankConfig

__all__ = ["CalibratedBank", "MapGeometry", "anomaly_geometry", "calibrated_image_bank", "image_scores"]


@dataclass(frozen=True)
class MapGeometry:
    """How patch scores become an image's map: the encoder's patch grid, the map's size (the images' own
    resolution), the smoothing and the border band left out."""

    grid: tuple[int, int]
    image_hw: tuple[int, int]
    sigma_px: float
    border_px: int

    def maps(self, patch_scores: np.ndarray) -> np.ndarray:
        """``(N, P)`` patch scores -> ``(N, H, W)`` anomaly maps."""
        patch = np.asarray(patch_scores, np.float32).reshape(len(patch_scores), *self.grid)
        return mask_border(anomaly_maps(patch, self.image_hw, self.sigma_px), self.border_px)


def image_scores(patch_scores: np.ndarray, geometry: MapGeometry, chunk: int = 32) -> np.ndarray:
    """``(N, P)`` patch scores -> ``(N,)`` image scores (map maxima), without keeping every full-size map."""
    if not len(patch_scores):
        return np.zeros(0, np.float32)
    return np.concatenate([map_scores(geometry.maps(patch_scores[i:i + chunk]))
                           for i in range(0, len(patch_scores), chunk)])


@dataclass
class CalibratedBank:
    bank: Bank
    good_scores: np.ndarray  # the held-out good images' scores the threshold was set on (validation first)
    validation_scores: np.ndarray


def calibrated_image_bank(train: np.ndarray, validation: np.ndarray, encoder_id: str, input_size: tuple[int, int],
                          geometry: MapGeometry, bank_cfg: BankConfig, *, source: str, seed: int = 0,
                          calibrate: bool = True, folds: int | None = None,
                          progress: Callable[[str], None] | None = None) -> CalibratedBank:
    """Build the bank from ``train`` ``(N, P, C)`` patch features and set its threshold from ``validation``
    ``(M, P, C)`` and the out-of-fold train images (see the module's docstring). ``calibrate = False`` skips the
    out-of-fold pass unless cell normalisation needs it, and leaves the threshold unset (``nan``): for scoring
    candidates, where only the ranking of scores matters. ``folds`` overrides ``[bank] folds`` (0: validation
    images only)."""
    say = progress or (lambda _msg: None)
    b = bank_cfg
    folds = b.folds if folds is None else folds
    if b.cell_norm and (folds < 2 or len(train) < 3):
        raise BankError(f"cell normalisation learns each cell's good scores from train images scored out of fold: "
                        f"it needs [bank] folds >= 2 and at least 3 train images (got folds {folds}, "
                        f"{len(train)} images); or set cell_norm = false")

    def make_bank(features: np.ndarray) -> Bank:
        return build_bank(features, np.arange(len(features)), encoder_id, input_size, level="patch",
                          index_type=b.index, k=b.k, folds=0, max_vectors=b.max_vectors,
                          coreset_fraction=b.coreset_fraction, sources=[source], seed=seed, nlist=b.nlist,
                          nprobe=b.nprobe, pq_m=b.pq_m)

    t0 = time.perf_counter()
    bank = make_bank(train)
    say(f"bank: {len(bank)} vectors ({bank.meta.coreset_fraction:.1%} of the train patches, coverage radius "
        f"{bank.meta.coreset_coverage:.3f}) in {time.perf_counter() - t0:.1f} s")
    held_out = []
    if (calibrate and folds >= 2) or b.cell_norm:
        t0 = time.perf_counter()
        images = np.arange(len(train))  # each train image its own group
        norm, oof = calibration_patch_scores(out_of_fold_patch_scores(train, images, make_bank, folds, seed, say),
                                             images, b.cell_norm)
        bank.with_cell_norm(norm)
        held_out.append(image_scores(oof, geometry))
        say(f"out-of-fold calibration in {time.perf_counter() - t0:.1f} s")
    validation_scores = image_scores(bank.patch_scores(validation), geometry) if len(validation) else \
        np.zeros(0, np.float32)
    if not calibrate:
        return CalibratedBank(bank, np.zeros(0, np.float32), validation_scores)
    good = np.concatenate([validation_scores, *held_out])
    if not len(good):
        raise BankError("no held-out good image to set the threshold on: give validation images or [bank] folds >= 2")
    threshold = threshold_for_false_alarm_rate(good, b.false_alarm_rate)
    n_good = len(good)
    bank.with_threshold(threshold, b.false_alarm_rate, n_good, n_good, false_alarm_upper_bound(n_good))
    say(f"threshold {threshold:.4f}: the {1 - b.false_alarm_rate:.0%} quantile of {n_good} held-out good images")
    return CalibratedBank(bank, good, validation_scores)


def anomaly_geometry(grid: tuple[int, int], image_hw: tuple[int, int], anomaly: AnomalyConfig) -> MapGeometry:
    return MapGeometry(grid, image_hw, anomaly.map_sigma, anomaly.map_border)
