"""Choosing anomaly settings without a single defect image: small synthetic defects on held-out good images.

A new production line has good parts only, so the settings of the anomaly stage (input scale, feature stages,
smoothing, index) cannot be chosen on real defects without cheating. Here each candidate builds its bank from the
``train`` images and scores the ``validation`` images twice: as they are (good) and with small synthetic defects
painted on them (:func:`small_defect`: cut-paste, scratch, hole, stain from :func:`encoders.data.synthetic_defect`,
drawn inside a random window of 12% of the image's height and width, so that a defect covers well under 1% of the
image, as real surface defects do: on MVTec 3D-AD tire they cover 0.16% of the pixels on average). Larger windows
make every candidate look perfect (image AUROC >= 0.99 with a window of a quarter of the side), which chooses
nothing. The figures (image AUROC of defective vs good, pixel AP on the painted masks, time per image) say which
candidate separates small defects best, and the ``test`` split is never read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from encoders.data import SMALL_DEFECT_WINDOW, small_defect
from pipeline.anomaly.bank import Bank, BankError, build_bank, calibration_patch_scores, out_of_fold_patch_scores
from pipeline.anomaly.images import image_patch_features, patch_grid_of
from pipeline.anomaly.manifest import ManifestError, ManifestRow
from pipeline.anomaly.maps import anomaly_maps, map_scores, mask_border
from pipeline.encoder import Encoder

__all__ = ["WINDOW_FRACTION", "SyntheticScore", "SyntheticSet", "score_synthetic", "small_defect", "synthetic_set"]

WINDOW_FRACTION = SMALL_DEFECT_WINDOW


@dataclass(frozen=True)
class SyntheticSet:
    """Good images and copies of them with one small synthetic defect each, at the images' own size."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    masks: np.ndarray  # (N, H, W) bool
    is_anomaly: np.ndarray  # (N,) bool
    kinds: tuple[str, ...]  # "good" or the defect kind, per image


def synthetic_set(rows: list[ManifestRow], per_image: int = 4, seed: int = 0,
                  window_fraction: float = WINDOW_FRACTION) -> SyntheticSet:
    """Each good row's image as it is, plus ``per_image`` copies with one defect each (the kinds in turn)."""
    from encoders.data import DEFECT_KINDS

    if not rows or any(r.is_anomaly for r in rows):
        raise ManifestError("synthetic defects are painted on good images only; pass the good validation rows")
    rng = np.random.default_rng(seed)
    images, masks, kinds = [], [], []
    for row in rows:
        bgr = cv2.imread(str(row.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ManifestError(f"{row.image}: not a readable image; convert it to PNG or JPEG")
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        images.append(img)
        masks.append(np.zeros(img.shape[:2], bool))
        kinds.append("good")
        for j in range(per_image):
            kind = DEFECT_KINDS[j % len(DEFECT_KINDS)]
            bad, mask = small_defect(img, rng, kind, window_fraction)
            images.append(bad)
            masks.append(mask)
            kinds.append(kind)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ManifestError(f"the validation images differ in size ({sorted(shapes)}); resize them to one size")
    return SyntheticSet(np.stack(images), np.stack(masks), np.array([k != "good" for k in kinds]), tuple(kinds))


@dataclass(frozen=True)
class SyntheticScore:
    """One candidate's figures on a :class:`SyntheticSet`."""

    image_auroc: float
    pixel_ap: float
    per_kind_auroc: dict[str, float]
    ms_per_image: float
    bank_vectors: int


def score_synthetic(train: list[Path], synthetic: SyntheticSet, encoder: Encoder, *, k: int = 1,
                    index_type: str = "flat", coreset_fraction: float = 0.1, max_vectors: int = 200_000,
                    sigma_px: float = 2.0, border_px: int = 0, nlist: int = 0, nprobe: int = 8, pq_m: int = 0,
                    cell_norm: bool = False, folds: int = 5, batch: int = 8, seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> SyntheticScore:
    """Build a patch bank from the ``train`` images and score ``synthetic`` through it, as
    :func:`~lab.evaluation.anomaly_eval.evaluate_anomaly` scores test images (with ``cell_norm``, each
    cell normalised by the train images' scores out of ``folds`` folds, as there)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    say = progress or (lambda _msg: None)
    if cell_norm and (folds < 2 or len(train) < 3):
        raise BankError(f"cell normalisation learns each cell's good scores from train images scored out of fold: "
                        f"it needs folds >= 2 and at least 3 train images (got folds {folds}, {len(train)} images)")
    feats = image_patch_features(train, encoder, batch)

    def make_bank(features: np.ndarray) -> Bank:
        return build_bank(features, np.arange(len(features)), encoder.encoder_id, encoder.input_size, level="patch",
                          index_type=index_type, k=k, folds=0, max_vectors=max_vectors,
                          coreset_fraction=coreset_fraction, sources=[str(train[0].parent)], seed=seed, nlist=nlist,
                          nprobe=nprobe, pq_m=pq_m)

    bank = make_bank(feats)
    if cell_norm:
        images = np.arange(len(feats))
        bank.with_cell_norm(calibration_patch_scores(out_of_fold_patch_scores(feats, images, make_bank, folds, seed),
                                                     images, True)[0])
    say(f"bank of {len(bank)} vectors from {len(train)} train images")
    grid = patch_grid_of(encoder)
    size_hw = synthetic.images.shape[1:3]
    started = time.perf_counter()
    queries = image_patch_features(synthetic.images, encoder, batch)
    n = len(queries)
    patch = bank.patch_scores(queries).reshape(n, int(grid[0]), int(grid[1]))
    maps = mask_border(anomaly_maps(patch, (int(size_hw[0]), int(size_hw[1])), sigma_px), border_px)
    scores = map_scores(maps)
    ms = 1000 * (time.perf_counter() - started) / n
    y = synthetic.is_anomaly
    kinds = np.array(synthetic.kinds)
    per_kind = {kind: float(roc_auc_score(y[(kinds == kind) | ~y], scores[(kinds == kind) | ~y]))
                for kind in sorted(set(synthetic.kinds) - {"good"})}
    return SyntheticScore(image_auroc=float(roc_auc_score(y, scores)),
                          pixel_ap=float(average_precision_score(synthetic.masks.ravel(), maps.ravel())),
                          per_kind_auroc=per_kind, ms_per_image=ms, bank_vectors=len(bank))
