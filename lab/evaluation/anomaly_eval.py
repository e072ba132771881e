"""`siamstream eval anomaly`: the anomaly stage on a labelled image manifest.

The manifest is a CSV with columns ``split`` (train | validation | test), ``is_anomaly`` (0/1), ``image`` and
optionally ``mask`` and ``label`` (defect type), paths relative to the CSV. The bank is built from the
``train`` images (all good), the threshold is calibrated on the ``validation`` images (good only: no defect
is ever seen before the test), and the ``test`` images are scored. Each image is embedded whole, at the
encoder's input size; the patch scores become an anomaly map at the image's own size (mask resolution) and
the image's score is the map's maximum (outside a thin border band, see :func:`mask_border`).

Calibration uses every good image not in the bank: the ``validation`` images, scored against the bank, and
(with ``calibration_folds`` > 0) each ``train`` image scored against a bank built from the other folds of
``train``, reduced the same way. A fold bank holds fewer images than the final bank, so those scores run a
little high and the threshold errs towards fewer false alarms.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lab.evaluation.anomaly_metrics import Interval
from pipeline.anomaly.bank import Bank
from pipeline.anomaly.calibrate import false_alarm_upper_bound
from pipeline.anomaly.image_bank import MapGeometry, calibrated_image_bank, image_scores
from pipeline.anomaly.images import image_size, patch_features, patch_grid_of, read_mask
from pipeline.anomaly.manifest import SPLITS, ManifestRow
from pipeline.anomaly.maps import DEFAULT_SIGMA_PX, map_scores
from pipeline.config import BankConfig
from pipeline.encoder import Encoder

log = logging.getLogger(__name__)

@dataclass
class AnomalyEvaluation:
    """Every figure of one evaluation plus what the plots need."""

    image_auroc: Interval
    pixel_auroc: float
    pixel_ap: float
    aupro: float
    threshold: float
    false_alarm_rate_target: float
    recall: Interval
    fpr: Interval
    validation_fpr_upper_95: float
    calibration_images: int
    per_type_auroc: dict[str, float]
    ms_per_image: float
    bank_vectors: int
    coreset_coverage: float
    counts: dict[str, int]
    test_rows: list[ManifestRow] = field(repr=False)
    test_scores: np.ndarray = field(repr=False)
    calibration_scores: np.ndarray = field(repr=False)
    test_maps: np.ndarray = field(repr=False)
    test_masks: np.ndarray = field(repr=False)

    def figures(self) -> dict[str, object]:
        """The JSON figures, ``eval anomaly``'s and ``bench anomaly``'s last line."""
        return {
            "image_auroc": round(self.image_auroc.value, 4), "image_auroc_ci95": self.image_auroc.as_list(),
            "pixel_auroc": round(self.pixel_auroc, 4), "pixel_ap": round(self.pixel_ap, 4),
            "aupro": round(self.aupro, 4), "recall_at_threshold": round(self.recall.value, 4),
            "recall_ci95": self.recall.as_list(), "fpr_at_threshold": round(self.fpr.value, 4),
            "fpr_ci95": self.fpr.as_list(), "threshold": round(self.threshold, 6),
            "per_type_auroc": {k: round(v, 4) for k, v in self.per_type_auroc.items()},
            "ms_per_image": round(self.ms_per_image, 2),
        }


def evaluate_anomaly(rows: list[ManifestRow], encoder: Encoder, *, k: int = 1, index_type: str = "flat",
                     coreset_fraction: float = 0.1, max_vectors: int = 200_000, false_alarm_rate: float = 0.01,
                     sigma_px: float = DEFAULT_SIGMA_PX, border_px: int = 0, calibration_folds: int = 5,
                     nlist: int = 0, nprobe: int = 8, pq_m: int = 0, cell_norm: bool = False, batch: int = 8,
                     seed: int = 0, progress: Callable[[str], None] | None = None, bank: Bank | None = None
                     ) -> tuple[AnomalyEvaluation, Bank]:
    """Build the bank from ``train``, calibrate on held-out good images, score ``test``.

    The threshold is the ``1 - false_alarm_rate`` quantile of the held-out good images' scores (validation,
    plus out-of-fold train images when ``calibration_folds`` > 0); with few of them that rate is known only
    loosely, and :attr:`AnomalyEvaluation.validation_fpr_upper_95` says how loosely. ``ms_per_image`` is the
    test pass (read, embed, k-NN search, map) divided by its images. With ``cell_norm`` the out-of-fold train
    scores also set each grid cell's normalisation (:mod:`pipeline.anomaly.cellnorm`), and the train images
    are calibrated with the statistics of the other train images.

    With ``bank`` (a bank written by ``anomaly fit`` or ``bank build``, ``[anomaly] bank``) nothing is built:
    the test images are scored against it with its own threshold, exactly as a deployment would score them; the
    validation images are scored only for the report.
    """
    # scikit-learn loads slowly: only evaluations pay for it, not every CLI start.
    from sklearn.metrics import roc_auc_score

    from lab.evaluation.anomaly_metrics import aupro, auroc_with_interval, pixel_auroc_ap, wilson

    say = progress or (lambda _msg: None)
    by_split = {s: [r for r in rows if r.split == s] for s in SPLITS}
    test = by_split["test"]
    size_hw = image_size(test[0].image)
    geometry = MapGeometry(patch_grid_of(encoder), size_hw, sigma_px, border_px)
    if bank is None:
        t0 = time.perf_counter()
        train = patch_features(by_split["train"], encoder, batch)
        say(f"train: {len(train)} images embedded ({train.shape[1]} patches x {train.shape[2]} features each) in "
            f"{time.perf_counter() - t0:.1f} s; building the bank")
        bank_cfg = dataclasses.replace(BankConfig(), level="patch", k=k, index=index_type, nlist=nlist,
                                       nprobe=nprobe, pq_m=pq_m, false_alarm_rate=false_alarm_rate,
                                       max_vectors=max_vectors, coreset_fraction=coreset_fraction,
                                       cell_norm=cell_norm)
        fitted = calibrated_image_bank(train, patch_features(by_split["validation"], encoder, batch),
                                       encoder.encoder_id, encoder.input_size, geometry, bank_cfg,
                                       source=str(by_split["train"][0].image.parent), seed=seed,
                                       folds=calibration_folds, progress=say)
        bank, good = fitted.bank, fitted.good_scores
        n_good = len(good)
    else:
        bank.check_encoder(encoder.encoder_id, encoder.embedding_dim, encoder.patch_dim or 0, "eval anomaly",
                           encoder.patch_grid[0] * encoder.patch_grid[1])
        good = image_scores(bank.patch_scores(patch_features(by_split["validation"], encoder, batch)), geometry)
        n_good = bank.meta.calibration_samples
        false_alarm_rate = bank.meta.false_alarm_rate
        say(f"bank: {len(bank)} vectors as written, threshold {bank.meta.threshold:.4f} from {n_good} good images")
    threshold = bank.meta.threshold

    def score(split_rows: list[ManifestRow]) -> tuple[np.ndarray, np.ndarray]:
        maps = geometry.maps(bank.patch_scores(patch_features(split_rows, encoder, batch)))
        return map_scores(maps), maps

    t0 = time.perf_counter()
    test_scores, test_maps = score(test)
    ms = 1000 * (time.perf_counter() - t0) / len(test)
    masks = np.stack([read_mask(r.mask, size_hw) for r in test])
    y = np.array([r.is_anomaly for r in test])
    flagged = test_scores > threshold
    per_type = {}
    for label in sorted({r.label for r in test if r.is_anomaly}):
        sel = np.array([(r.label == label) or not r.is_anomaly for r in test])
        per_type[label] = float(roc_auc_score(y[sel], test_scores[sel]))
    has_masks = masks.any()
    pix_auroc, pix_ap = pixel_auroc_ap(masks, test_maps) if has_masks else (float("nan"), float("nan"))
    evaluation = AnomalyEvaluation(
        image_auroc=auroc_with_interval(y, test_scores, seed=seed),
        pixel_auroc=pix_auroc, pixel_ap=pix_ap, aupro=aupro(masks, test_maps) if has_masks else float("nan"),
        threshold=threshold, false_alarm_rate_target=false_alarm_rate,
        recall=wilson(int(flagged[y].sum()), int(y.sum())),
        fpr=wilson(int(flagged[~y].sum()), int((~y).sum())),
        validation_fpr_upper_95=false_alarm_upper_bound(n_good), calibration_images=n_good,
        per_type_auroc=per_type, ms_per_image=ms,
        bank_vectors=len(bank), coreset_coverage=bank.meta.coreset_coverage,
        counts={s: len(v) for s, v in by_split.items()} | {"test_defective": int(y.sum())},
        test_rows=test, test_scores=test_scores, calibration_scores=good, test_maps=test_maps,
        test_masks=masks)
    return evaluation, bank
