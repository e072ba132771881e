"""``siamstream bench verify``: face verification on AT&T/ORL faces, cross-validated over subjects.

All 40 subjects (``training/`` and ``testing/``) are split into ``folds`` groups; for each group an encoder is
trained on the other subjects only (``siamstream train``), exported to ONNX, and every pair of the held-out subjects'
images is scored with the exported model (genuine pairs: same subject). Reported per fold and as the mean over
folds: ROC AUC, the equal error rate and the distance threshold that gives it. The same ImageNet-pretrained trunk
without any training is scored on the same held-out pairs, for comparison. ROC plots are saved per fold.

Recipes (``--recipe``):

- ``whiten`` (default): the ImageNet-pretrained EfficientNet-Lite0 trunk cut after stage 6, GeM-pooled, at 160 px,
  with a linear head fitted in closed form on the training subjects: within-class whitening (WCCN), mirror images
  counted as more images of their subject, shrinkage 0.3. No gradient steps. Chosen on inner cross-validation
  splits of the first fold's training subjects (never on held-out subjects).
- ``triplet``: the same kind of trunk (stage 5, 112 px) fine-tuned end to end with batch-hard triplets.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from encoders.train import TrainConfig
from lab.benchmarks.data import shared_data
from lab.evaluation.report import json_line, table
from pipeline.config import ConfigError

log = logging.getLogger(__name__)

# ImageNet EfficientNet-Lite0 features, RGB-replicated grey faces at 160 px, head = within-class whitening.
RECIPE = TrainConfig(
    backbone="efficientnet-lite0", stage=6, input_size=160, grayscale=False, embedding_dim=0, pooling="gem",
    epochs=0, whiten=True, whiten_shrinkage=0.3, whiten_mirror=True, seed=0, device="auto", num_threads=0,
    depth=1, progress_every_s=30.0,
)
# ImageNet EfficientNet-Lite0 fine-tuned with batch-hard triplets, RGB-replicated grey faces at 112 px.
TRIPLET_RECIPE = TrainConfig(
    backbone="efficientnet-lite0", stage=5, input_size=112, grayscale=False, embedding_dim=128, pooling="gem",
    loss="triplet_batch_hard", margin=0.2, lr=3e-4, weight_decay=1e-4, warmup_fraction=0.05,
    epochs=5, batches_per_epoch=20, p=16, k=4, augment=True, augment_preset="photo", seed=0, device="auto",
    amp=True, num_threads=0, depth=1, progress_every_s=30.0,
)
RECIPES: dict[str, TrainConfig] = {"whiten": RECIPE, "triplet": TRIPLET_RECIPE}


def describe(cfg: TrainConfig) -> str:
    """One line saying what a recipe trains."""
    trunk = f"{cfg.backbone}" + (f" stage {cfg.stage}" if cfg.backbone == "efficientnet-lite0" else "")
    parts = [f"{trunk}, {cfg.pooling} pooling, {cfg.input_size} px"]
    if cfg.epochs:
        parts.append(f"{cfg.loss}, {cfg.epochs} x {cfg.batches_per_epoch} batches of {cfg.p} x {cfg.k}")
    if cfg.whiten:
        parts.append(f"within-class whitening head (shrinkage {cfg.whiten_shrinkage:g}"
                     f"{', mirror images' if cfg.whiten_mirror else ''})")
    return "; ".join(parts)


def subject_folds(subjects: list[Path], folds: int, seed: int = 0) -> list[list[Path]]:
    """Subjects shuffled with ``seed`` and dealt into ``folds`` groups of (nearly) equal size."""
    order = np.random.default_rng(seed).permutation(len(subjects))
    return [[subjects[i] for i in order[f::folds]] for f in range(folds)]


def _link_folder(dst: Path, subjects: list[Path]) -> Path:
    dst.mkdir(parents=True)
    for s in subjects:
        (dst / s.name).symlink_to(s.resolve(), target_is_directory=True)
    return dst


def main(folds: int = 5, epochs: int | None = None, out_dir: Path | None = None, threads: int = 0,
         recipe: str = "whiten") -> int:
    from encoders.export import export_onnx, export_run
    from encoders.models import pretrained_lite0
    from encoders.train import train
    from lab.evaluation.encoder_eval import verify

    if recipe not in RECIPES:
        raise ConfigError(f"bench verify --recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    base_cfg = RECIPES[recipe]
    if epochs is not None and (base_cfg.epochs == 0 or epochs < 1):
        raise ConfigError(f"bench verify --epochs {epochs}: " + (
            f"the {recipe} recipe trains no epochs (its head is fitted in closed form); drop --epochs or use "
            f"--recipe triplet" if base_cfg.epochs == 0 else "allowed: 1 or more"))
    faces = shared_data("att_faces")
    subjects = sorted(d for split in ("training", "testing") for d in (faces / split).iterdir()
                      if d.is_dir() and d.name.startswith("s"))
    if len(subjects) < 2 * folds:
        raise FileNotFoundError(f"{faces}: {len(subjects)} subject folders; need at least {2 * folds}")
    cfg = dataclasses.replace(base_cfg, epochs=base_cfg.epochs if epochs is None else epochs, num_threads=threads)
    rows, trained, baseline, seconds = [], [], [], []
    out = Path(out_dir) if out_dir else None
    with tempfile.TemporaryDirectory(prefix="siamstream-verify-") as tmp:
        work = Path(tmp)
        pretrained = export_onnx(pretrained_lite0(stage=cfg.stage, pooling=cfg.pooling), work / "pretrained.onnx",
                                 cfg.input_size, backbone=f"efficientnet-lite0:imagenet:stage{cfg.stage}").path
        for f, held_out in enumerate(subject_folds(subjects, folds)):
            names = {s.name for s in held_out}
            train_dir = _link_folder(work / f"fold{f}" / "train", [s for s in subjects if s.name not in names])
            test_dir = _link_folder(work / f"fold{f}" / "test", held_out)
            started = time.perf_counter()
            result = train(train_dir, work / f"fold{f}" / "run", cfg)
            seconds.append(time.perf_counter() - started)
            model = export_run(work / f"fold{f}" / "run", work / f"fold{f}" / "model.onnx").path
            fold_out = out / f"fold{f}" if out else None
            rep = verify(model, test_dir, fold_out, threads=threads)
            base = verify(pretrained, test_dir, None, threads=threads)
            trained.append(rep.result)
            baseline.append(base.result)
            rows.append([f + 1, ",".join(sorted(names, key=lambda n: int(n[1:]))), rep.result.genuine_pairs,
                         rep.result.impostor_pairs, base.result.auc, base.result.eer, rep.result.auc, rep.result.eer,
                         rep.result.threshold, result.train_seconds])
    auc = statistics.mean(r.auc for r in trained)
    eer = statistics.mean(r.eer for r in trained)
    print(f"AT&T faces verification, {folds}-fold cross-validation over {len(subjects)} subjects "
          f"(trained on the other subjects; all pairs of held-out images)")
    print(f"recipe {recipe}: {describe(cfg)}")
    print(table(["fold", "held-out subjects", "genuine", "impostor", "pretrained AUC", "pretrained EER",
                 "trained AUC", "trained EER", "threshold", "train s"], rows))
    print(table(["figure", "mean over folds", "std"], [
        ["AUC (trained)", auc, statistics.pstdev(r.auc for r in trained)],
        ["EER (trained)", eer, statistics.pstdev(r.eer for r in trained)],
        ["AUC (pretrained, no training)", statistics.mean(r.auc for r in baseline),
         statistics.pstdev(r.auc for r in baseline)],
        ["EER (pretrained, no training)", statistics.mean(r.eer for r in baseline),
         statistics.pstdev(r.eer for r in baseline)],
    ]))
    if out:
        print(f"ROC plots: {out}/fold*/roc.png")
    print(json_line({"auc": round(auc, 4), "eer": round(eer, 4),
                     "eer_per_fold": [round(r.eer, 4) for r in trained],
                     "threshold_per_fold": [round(r.threshold, 4) for r in trained],
                     "pretrained_auc": round(statistics.mean(r.auc for r in baseline), 4),
                     "pretrained_eer": round(statistics.mean(r.eer for r in baseline), 4),
                     "train_seconds": round(sum(seconds), 1), "recipe": recipe}))
    return 0
