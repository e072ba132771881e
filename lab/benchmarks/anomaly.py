"""``siamstream bench anomaly``: defect detection on MVTec 3D-AD ``tire`` (RGB), against a baseline in one run.

1. Selection, without a defect image: every candidate in :data:`CANDIDATES` builds its bank from the 210
   ``train`` good images and scores the 29 ``validation`` good images as they are and with small synthetic
   defects painted on them (:mod:`lab.evaluation.anomaly_select`). The candidate with the highest image AUROC
   on those (pixel AP breaks ties) among those within the time budget is the recipe. The ``test`` split is not
   read.
2. The recipe is evaluated once, through the same code as ``siamstream eval anomaly``: bank from ``train``, a
   threshold from held-out good images only (the ``validation`` images and the ``train`` images scored out of
   fold), and the 112 ``test`` images scored.
3. ``patchcore-s4-224``, the PatchCore-style baseline the issue quotes (stage-4 features only, images resized to
   224x224, a 10% coreset, exact search, sigma 4 px, no border band), goes through step 2 as well.

Every candidate uses an IVF-Flat index (about 4 sqrt(n) cells, 8 probed), a greedy k-center coreset (5%, one
candidate 10%), 1-NN distance, an 8 px border band left out of the image score and a 2% false-alarm target. They
differ in the input scale (1x, 1.5x, 1.75x or 2x the image's size), the feature stages (one stage, or a finer stage
concatenated with the next one, PatchCore's two layers), the smoothing of the maps, the coreset size and whether each
patch is scored against how good images score at its grid cell (``cellnorm``, :mod:`pipeline.anomaly.cellnorm`).
Two candidates use an encoder adapted to the ``train`` images first (:mod:`encoders.adapt`: the trunk fine-tuned on good
crops with synthetic cut-paste, scratch and stain defects, about 5 minutes on 2 CPU cores); synthetic holes are never
painted in its training, so its ``AUROC hole`` in the selection table is measured on a kind it has not seen. The
adaptation paints with the same code as the selection (on train crops, not on the validation images), which favours
it in the selection: the hole column and the single test scoring are the checks on that.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lab.benchmarks.data import shared_data
from lab.evaluation.anomaly_select import WINDOW_FRACTION, SyntheticScore
from lab.evaluation.report import json_line, table
from pipeline.anomaly.bank import Bank
from pipeline.anomaly.images import image_size
from pipeline.anomaly.manifest import ManifestRow, load_manifest
from pipeline.config import Config, ConfigError, load_config, replace

if TYPE_CHECKING:
    from encoders.adapt import AdaptConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    name: str
    encoder: dict[str, object]
    bank: dict[str, object]
    anomaly: dict[str, object] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # fixed input (height, width); None: the images' size times ``scale``
    scale: float = 1.0
    adapt: bool = False  # the trunk adapted to the train images first (:mod:`encoders.adapt`, default settings)


_BANK: dict[str, object] = {"index": "ivf-flat", "nprobe": 8, "coreset_fraction": 0.05, "false_alarm_rate": 0.02,
                             "max_vectors": 500_000, "folds": 5}
_S43: dict[str, object] = {"stage": 4, "patch_stage": 4, "patch_detail_stage": 3}
_S32: dict[str, object] = {"stage": 3, "patch_stage": 3, "patch_detail_stage": 2}
CANDIDATES = (
    Entry("s4+s3 2x sigma2", _S43, _BANK, {"map_sigma": 2.0, "map_border": 8}, scale=2.0),
    Entry("s4+s3 2x sigma4", _S43, _BANK, {"map_sigma": 4.0, "map_border": 8}, scale=2.0),
    Entry("s4+s3 1.75x sigma2", _S43, _BANK, {"map_sigma": 2.0, "map_border": 8}, scale=1.75),
    Entry("s4+s3 1.75x sigma2 adapted", _S43, _BANK, {"map_sigma": 2.0, "map_border": 8}, scale=1.75,
          adapt=True),
    Entry("s4+s3 1.5x sigma2", _S43, _BANK, {"map_sigma": 2.0, "map_border": 8}, scale=1.5),
    Entry("s4+s3 1.5x sigma2 10%", _S43, {**_BANK, "coreset_fraction": 0.1},
          {"map_sigma": 2.0, "map_border": 8}, scale=1.5),
    Entry("s4+s3 1x sigma2", _S43, _BANK, {"map_sigma": 2.0, "map_border": 8}, scale=1.0),
    Entry("s3+s2 1x sigma2", _S32, _BANK, {"map_sigma": 2.0, "map_border": 8}, scale=1.0),
    Entry("s3 2x sigma2", {"stage": 3, "patch_stage": 3, "patch_detail_stage": 0}, _BANK,
          {"map_sigma": 2.0, "map_border": 8}, scale=2.0),
    Entry("s4 1x sigma4", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 0}, _BANK,
          {"map_sigma": 4.0, "map_border": 8}, scale=1.0),
    # Each patch scored against how good images score at that cell (pipeline.anomaly.cellnorm).
    Entry("s4+s3 1.75x sigma2 cellnorm", _S43, {**_BANK, "cell_norm": True},
          {"map_sigma": 2.0, "map_border": 8}, scale=1.75),
    Entry("s4+s3 1.75x sigma2 adapted cellnorm", _S43, {**_BANK, "cell_norm": True},
          {"map_sigma": 2.0, "map_border": 8}, scale=1.75, adapt=True),
    Entry("s3 2x sigma2 cellnorm", {"stage": 3, "patch_stage": 3, "patch_detail_stage": 0},
          {**_BANK, "cell_norm": True}, {"map_sigma": 2.0, "map_border": 8}, scale=2.0),
)
# Good vectors appended in the timed bank add (the "bank add of 10k vectors").
ADD_VECTORS = 10_000
# Candidates slower than this on the synthetic set (embedding, search and maps, per image) are not chosen.
MS_BUDGET = 50.0
BASELINES = (
    Entry("patchcore-s4-224", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 0},
          {"index": "flat", "coreset_fraction": 0.1, "false_alarm_rate": 0.02, "max_vectors": 500_000, "folds": 5},
          {"map_sigma": 4.0, "map_border": 0}, size=(224, 224)),
)


def entry_config(base: Config, entry: Entry) -> Config:
    cfg = replace(base, "encoder", **entry.encoder)
    cfg = replace(cfg, "anomaly", **entry.anomaly)
    return replace(cfg, "bank", level="patch", **entry.bank)


class Workspace:
    """Where a bench run keeps the encoders it adapts (one per adapted candidate, built on first use) and how long
    each adaptation took."""

    def __init__(self, root: Path, adapt: AdaptConfig | None = None) -> None:
        self.root = root
        self.adapt = adapt
        self.adapt_seconds: dict[str, float] = {}

    def config(self, base: Config, entry: Entry, rows: list[ManifestRow]) -> Config:
        """:func:`entry_config`, with ``[encoder] model`` set to the adapted encoder for an ``adapt`` entry."""
        cfg = entry_config(base, entry)
        if not entry.adapt:
            return cfg
        # One adapted trunk per encoder and input size: candidates that differ only in scoring share it.
        key = repr((sorted(entry.encoder.items()), entry_size(entry, rows)))
        path = self.root / f"adapted-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
        if not path.is_file():
            from encoders.adapt import adapt_to_onnx
            from pipeline.anomaly.images import read_rgb

            size = entry_size(entry, rows)
            images = [read_rgb(r.image, size) for r in rows if r.split == "train"]
            log.info("%s: adapting the trunk on %d train images at %dx%d", entry.name, len(images), *size)
            enc = cfg.encoder
            _, result = adapt_to_onnx(images, path, stage=enc.stage, pooling=enc.pooling,
                                      patch_stage=enc.patch_stage, patch_detail_stage=enc.patch_detail_stage,
                                      cfg=self.adapt, progress=log.info)
            self.adapt_seconds[entry.name] = result.seconds  # the first candidate that needed it
        return replace(cfg, "encoder", model=str(path), engine="onnxruntime")


def entry_size(entry: Entry, rows: list[ManifestRow]) -> tuple[int, int]:
    """The encoder's input (height, width) for ``entry``: fixed, or the validation images' size times its scale
    (every image of the manifest has one size; the test images are not read to learn it)."""
    if entry.size is not None:
        return entry.size
    h, w = image_size(next(r.image for r in rows if r.split == "validation"))
    return round(h * entry.scale), round(w * entry.scale)


@dataclass(frozen=True)
class Selection:
    chosen: Entry
    scores: dict[str, SyntheticScore]


def select_recipe(base: Config, rows: list[ManifestRow], work: Workspace,
                  candidates: tuple[Entry, ...] = CANDIDATES, per_image: int = 4, seed: int = 0,
                  window_fraction: float = WINDOW_FRACTION) -> Selection:
    """Score every candidate on small synthetic defects painted on the validation images (see the module's
    docstring); the test split is not read."""
    from lab.evaluation.anomaly_select import score_synthetic, synthetic_set
    from pipeline import app

    synthetic = synthetic_set([r for r in rows if r.split == "validation"], per_image=per_image, seed=seed,
                              window_fraction=window_fraction)
    train = [r.image for r in rows if r.split == "train"]
    log.info("selection: %d validation images, %d with a synthetic defect", int((~synthetic.is_anomaly).sum()),
             int(synthetic.is_anomaly.sum()))
    scores: dict[str, SyntheticScore] = {}
    for entry in candidates:
        cfg = work.config(base, entry, rows)
        encoder = app.build_encoder(cfg.encoder, size=entry_size(entry, rows))
        b, a = cfg.bank, cfg.anomaly
        scores[entry.name] = score = score_synthetic(
            train, synthetic, encoder, k=b.k, index_type=b.index, coreset_fraction=b.coreset_fraction,
            max_vectors=b.max_vectors, sigma_px=a.map_sigma, border_px=a.map_border, nlist=b.nlist,
            nprobe=b.nprobe, pq_m=b.pq_m, cell_norm=b.cell_norm, folds=b.folds, seed=seed, progress=log.info)
        log.info("selection: %s: synthetic image AUROC %.3f, pixel AP %.3f, %.1f ms/image", entry.name,
                 score.image_auroc, score.pixel_ap, score.ms_per_image)
    return Selection(choose(candidates, scores, MS_BUDGET), scores)


def choose(candidates: tuple[Entry, ...], scores: dict[str, SyntheticScore], ms_budget: float) -> Entry:
    """The candidate with the highest synthetic image AUROC (to 3 decimals; then the higher pixel AP) among those
    within ``ms_budget`` per image; the fastest one when none is."""
    fast = [e for e in candidates if scores[e.name].ms_per_image <= ms_budget]
    eligible = fast or [min(candidates, key=lambda e: scores[e.name].ms_per_image)]
    return max(eligible, key=lambda e: (round(scores[e.name].image_auroc, 3), scores[e.name].pixel_ap))


def time_bank_add(bank: Bank, vectors: np.ndarray, work: Path) -> float:
    """Seconds to do what ``siamstream bank add`` does once the new samples are embedded: append ``vectors``
    ``(N, C)`` to ``bank`` (all of them: no coreset reduction) and save the bank, atomically, for running
    pipelines to reload."""
    from pipeline.anomaly.bank import append_samples

    started = time.perf_counter()
    append_samples(bank, vectors[:, None, :], "bench anomaly: bank add", coreset_fraction=1.0,
                   max_new_vectors=len(vectors))
    bank.save(work / "bank")
    return time.perf_counter() - started


def new_good_vectors(cfg: Config, entry: Entry, rows: list[ManifestRow], n: int) -> np.ndarray:
    """``n`` real patch vectors of good validation (then train) images, through ``entry``'s encoder: good
    samples to add. Fewer when the good images hold fewer patches."""
    from pipeline import app
    from pipeline.anomaly.images import image_patch_features

    encoder = app.build_encoder(cfg.encoder, size=entry_size(entry, rows))
    images = [r.image for r in rows if r.split == "validation"] + [r.image for r in rows if r.split == "train"]
    per_image = encoder.patch_grid[0] * encoder.patch_grid[1]
    feats = image_patch_features(images[:max(1, -(-n // per_image))], encoder)
    return np.ascontiguousarray(feats.reshape(-1, feats.shape[-1])[:n])


def main(base: Config | None = None, baselines: bool = True, recipe: str | None = None) -> int:
    named = {e.name: e for e in CANDIDATES}
    if recipe is not None and recipe not in named:
        raise ConfigError(f"bench anomaly --recipe {recipe!r}: no such candidate; choose one of: "
                          f"{', '.join(repr(n) for n in named)} (quote the name: it holds spaces)")
    manifest = shared_data("mvtec3d_tire", "manifest.csv")
    base = base or load_config(None)
    with tempfile.TemporaryDirectory(prefix="siamstream-bench-") as tmp:
        return _run(base, manifest, Workspace(Path(tmp)), baselines, None if recipe is None else named[recipe])


def _run(base: Config, manifest: Path, work: Workspace, baselines: bool, recipe: Entry | None) -> int:
    from lab.evaluation.anomaly_report import report_lines, run_evaluation

    manifest_rows = load_manifest(manifest)
    selection = None
    if recipe is None:
        selection = select_recipe(base, manifest_rows, work)
        chosen = selection.chosen
        print(f"== selection on small synthetic defects ({len(CANDIDATES)} candidates; validation images only)")
        print(table(["candidate", "synthetic image AUROC", "synthetic pixel AP", "ms/image", "bank vectors",
                     *[f"AUROC {k}" for k in next(iter(selection.scores.values())).per_kind_auroc], "chosen"],
                    [[name, sc.image_auroc, sc.pixel_ap, sc.ms_per_image, sc.bank_vectors,
                      *sc.per_kind_auroc.values(), "<-" if name == chosen.name else ""]
                     for name, sc in selection.scores.items()]))
        for name, seconds in work.adapt_seconds.items():
            print(f"{name}: trunk adapted on the train images in {seconds:.0f} s (hole defects never painted in "
                  f"training: AUROC hole is a kind it has not seen)")
        print()
    else:
        chosen = recipe
    results = {}
    rows = []
    for entry in (chosen, *(BASELINES if baselines else ())):
        log.info("bench anomaly: %s", entry.name)
        cfg = work.config(base, entry, manifest_rows)
        ev, bank = run_evaluation(cfg, manifest, None, size=entry_size(entry, manifest_rows))
        results[entry.name] = ev
        if entry is chosen:
            print(f"== {entry.name} on the test split")
            for line in report_lines(ev):
                print(line)
            before = len(bank)
            new = new_good_vectors(cfg, entry, manifest_rows, ADD_VECTORS)
            with tempfile.TemporaryDirectory(prefix="siamstream-bench-add-") as tmp:
                add_seconds = time_bank_add(bank, new, Path(tmp))
            added = len(new)
            print(f"bank add   {added} vectors appended to the {before}-vector {bank.meta.index_type} bank and "
                  f"the bank saved in {add_seconds:.3f} s")
            print()
        rows.append([entry.name, ev.image_auroc.value, ev.pixel_auroc, ev.pixel_ap, ev.aupro, ev.recall.value,
                     ev.fpr.value, ev.ms_per_image])
    print(table(["method", "image AUROC", "pixel AUROC", "pixel AP", "AUPRO", "recall", "false alarms",
                 "ms/image"], rows))
    ours = results[chosen.name].figures()
    ours["recipe"] = chosen.name
    ours["bank_add_seconds"] = round(add_seconds, 3)
    ours["bank_add_vectors"] = added
    if work.adapt_seconds:
        ours["adapt_seconds"] = {name: round(v, 1) for name, v in work.adapt_seconds.items()}
    if selection is not None:
        ours["selection"] = {name: {"synthetic_image_auroc": round(sc.image_auroc, 4),
                                    "synthetic_pixel_ap": round(sc.pixel_ap, 4),
                                    "synthetic_hole_auroc": round(sc.per_kind_auroc.get("hole", float("nan")), 4),
                                    "ms_per_image": round(sc.ms_per_image, 2)}
                             for name, sc in selection.scores.items()}
    ours["baselines"] = {name: {k: v for k, v in ev.figures().items() if k in (
        "image_auroc", "pixel_auroc", "pixel_ap", "recall_at_threshold", "fpr_at_threshold", "ms_per_image")}
        for name, ev in results.items() if name != chosen.name}
    print(json_line(ours))
    return 0
