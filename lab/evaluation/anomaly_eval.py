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

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lab.evaluation.anomaly_metrics import Interval
from pipeline.anomaly.bank import Bank, BankError, build_bank, calibration_patch_scores, out_of_fold_patch_scores
from pipeline.anomaly.calibrate import false_alarm_upper_bound, threshold_for_false_alarm_rate
from pipeline.anomaly.maps import DEFAULT_SIGMA_PX, anomaly_maps, map_scores, mask_border
from pipeline.encoder import Encoder
from pipeline.progress import Progress
from pipeline.types import CropBatch

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
REQUIRED_COLUMNS = ("split", "is_anomaly", "image")


class ManifestError(ValueError):
    """The manifest cannot be used. ``str()`` names the file, the row and the fix."""


@dataclass(frozen=True)
class ManifestRow:
    split: str
    is_anomaly: bool
    image: Path
    mask: Path | None
    label: str


def load_manifest(path: str | Path, require_test: bool = True) -> list[ManifestRow]:
    """Read and check a manifest: columns, split names, 0/1 labels, files present, good-only train/validation,
    and (with ``require_test``) a test split with good and defective images."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; pass a CSV with columns split,is_anomaly,image[,mask]")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            found = ", ".join(columns) or "none"
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} (found: {found}); the header needs "
                                f"split,is_anomaly,image and may have mask,label")
        raw = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    rows: list[ManifestRow] = []
    absent: list[str] = []
    for line, r in enumerate(raw, start=2):
        if r["split"] not in SPLITS:
            raise ManifestError(f"{path}:{line}: split {r['split']!r}; valid: {', '.join(SPLITS)}")
        if r["is_anomaly"] not in ("0", "1"):
            raise ManifestError(f"{path}:{line}: is_anomaly {r['is_anomaly']!r}; write 0 (good) or 1 (defect)")
        bad = r["is_anomaly"] == "1"
        if bad and r["split"] != "test":
            raise ManifestError(f"{path}:{line}: a defective image in split {r['split']!r}; thresholds come from "
                                f"good samples only, so defects belong in 'test'")
        image = path.parent / r["image"]
        mask = path.parent / r["mask"] if r.get("mask") else None
        for f in (image, mask):
            if f is not None and not f.is_file():
                absent.append(str(f))
        rows.append(ManifestRow(r["split"], bad, image, mask, r.get("label") or ("defect" if bad else "good")))
    if absent:
        raise ManifestError(f"{path}: {len(absent)} file(s) listed but missing, e.g. {absent[0]}; paths are "
                            f"relative to the manifest's folder")
    for split in ("train", "validation"):
        if not any(r.split == split for r in rows):
            raise ManifestError(f"{path}: no {split!r} rows; the bank is built from train and the threshold "
                                f"calibrated on validation (good images)")
    test = [r for r in rows if r.split == "test"]
    if require_test and (not any(r.is_anomaly for r in test) or all(r.is_anomaly for r in test)):
        raise ManifestError(f"{path}: the test split needs both good (0) and defective (1) images; without defect "
                            f"images, score the settings on synthetic defects: eval anomaly --synthetic")
    return rows


def resize_image(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``img`` at ``size_hw``: area interpolation when shrinking, bilinear when enlarging, as is when equal."""
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    shrink = img.shape[0] > h or img.shape[1] > w
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def read_rgb(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB at ``size_hw`` (area interpolation when shrinking)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ManifestError(f"{path}: not a readable image; convert it to PNG or JPEG")
    return cv2.cvtColor(resize_image(img, size_hw), cv2.COLOR_BGR2RGB)


def read_mask(path: Path | None, size_hw: tuple[int, int]) -> np.ndarray:
    """A defect mask as ``(H, W)`` bool (any non-zero value is defect); all False without a mask file."""
    if path is None:
        return np.zeros(size_hw, bool)
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ManifestError(f"{path}: not a readable mask image")
    if m.shape != tuple(size_hw):
        m = cv2.resize(m, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)
    return m > 0


def image_size(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ManifestError(f"{path}: not a readable image; convert it to PNG or JPEG")
    return int(img.shape[0]), int(img.shape[1])


def patch_features(rows: list[ManifestRow], encoder: Encoder, batch: int = 8,
                   on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """``(N, P, C)`` patch features of each row's image at the encoder's input size."""
    return image_patch_features([r.image for r in rows], encoder, batch, on_batch)


def image_patch_features(images: list[Path] | np.ndarray, encoder: Encoder, batch: int = 8,
                         on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """``(N, P, C)`` patch features of image files, or of uint8 RGB images ``(N, H, W, 3)``, each resized to the
    encoder's input size."""
    if not encoder.patch_dim:
        raise BankError("the encoder has no 'patches' output: anomaly maps need patch features; use the built-in "
                        "encoder (patch_stage > 0) or a model with a 'patches' output")
    h, w = encoder.input_size
    out: list[np.ndarray] = []
    with Progress("embedding images", len(images), "image") as bar:
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            imgs = np.stack([read_rgb(x, (h, w)) if isinstance(x, Path) else resize_image(x, (h, w)) for x in chunk])
            boxes = np.tile(np.array([[0, 0, w, h]], np.float32), (len(imgs), 1))
            emb = encoder.embed(CropBatch(imgs, boxes), with_patches=True)
            assert emb.patches is not None
            out.append(emb.patches)
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(len(chunk))
    return np.concatenate(out)


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
                     seed: int = 0, progress: Callable[[str], None] | None = None
                     ) -> tuple[AnomalyEvaluation, Bank]:
    """Build the bank from ``train``, calibrate on held-out good images, score ``test``.

    The threshold is the ``1 - false_alarm_rate`` quantile of the held-out good images' scores (validation,
    plus out-of-fold train images when ``calibration_folds`` > 0); with few of them that rate is known only
    loosely, and :attr:`AnomalyEvaluation.validation_fpr_upper_95` says how loosely. ``ms_per_image`` is the
    test pass (read, embed, k-NN search, map) divided by its images. With ``cell_norm`` the out-of-fold train
    scores also set each grid cell's normalisation (:mod:`pipeline.anomaly.cellnorm`), and the train images
    are calibrated with the statistics of the other train images.
    """
    # scikit-learn loads slowly: only evaluations pay for it, not every CLI start.
    from sklearn.metrics import roc_auc_score

    from lab.evaluation.anomaly_metrics import aupro, auroc_with_interval, pixel_auroc_ap, wilson

    say = progress or (lambda _msg: None)
    by_split = {s: [r for r in rows if r.split == s] for s in SPLITS}
    test = by_split["test"]
    size_hw = image_size(test[0].image)
    t0 = time.perf_counter()
    train = patch_features(by_split["train"], encoder, batch)
    say(f"train: {len(train)} images embedded ({train.shape[1]} patches x {train.shape[2]} features each) in "
        f"{time.perf_counter() - t0:.1f} s; building the bank")
    t0 = time.perf_counter()
    def make_bank(features: np.ndarray) -> Bank:
        return build_bank(features, np.arange(len(features)), encoder.encoder_id, encoder.input_size,
                          level="patch", index_type=index_type, k=k, folds=0, max_vectors=max_vectors,
                          coreset_fraction=coreset_fraction, sources=[str(by_split["train"][0].image.parent)],
                          seed=seed, nlist=nlist, nprobe=nprobe, pq_m=pq_m)

    bank = make_bank(train)
    say(f"bank: {len(bank)} vectors ({bank.meta.coreset_fraction:.1%} of the train patches, coverage radius "
        f"{bank.meta.coreset_coverage:.3f}) in {time.perf_counter() - t0:.1f} s")
    grid = patch_grid_of(encoder)
    if cell_norm and calibration_folds < 2:
        raise BankError("cell normalisation learns each cell's good scores from train images scored out of fold: "
                        "set calibration folds >= 2 ([bank] folds), or cell_norm = false")

    def to_scores(patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps = mask_border(anomaly_maps(patch.reshape(len(patch), *grid), size_hw, sigma_px), border_px)
        return map_scores(maps), maps

    def to_scores_only(patch: np.ndarray, chunk: int = 32) -> np.ndarray:
        """Image scores without keeping every full-size map in memory at once."""
        return np.concatenate([to_scores(patch[i:i + chunk])[0] for i in range(0, len(patch), chunk)])

    def score(split_rows: list[ManifestRow]) -> tuple[np.ndarray, np.ndarray]:
        return to_scores(bank.patch_scores(patch_features(split_rows, encoder, batch)))

    held_out = []
    if calibration_folds:
        t0 = time.perf_counter()
        images = np.arange(len(train))  # each train image its own group
        norm, oof = calibration_patch_scores(out_of_fold_patch_scores(train, images, make_bank, calibration_folds,
                                                                      seed, say), images, cell_norm)
        bank.with_cell_norm(norm)
        held_out.append(to_scores_only(oof))
        say(f"out-of-fold calibration in {time.perf_counter() - t0:.1f} s")
    val_scores, _ = score(by_split["validation"])
    held_out.insert(0, val_scores)
    good = np.concatenate(held_out)
    threshold = threshold_for_false_alarm_rate(good, false_alarm_rate)
    n_good = len(good)
    bank.with_threshold(threshold, false_alarm_rate, n_good, n_good, false_alarm_upper_bound(n_good))
    say(f"threshold {threshold:.4f}: the {1 - false_alarm_rate:.0%} quantile of {n_good} held-out good images")
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


def patch_grid_of(encoder: Encoder) -> tuple[int, int]:
    grid = getattr(encoder, "patch_grid", None)
    if not grid or not grid[0]:
        raise BankError("the encoder does not report its patch grid; use an ONNX encoder with a 'patches' output")
    return int(grid[0]), int(grid[1])
