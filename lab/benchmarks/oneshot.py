"""``siamstream bench oneshot``: train a Siamese encoder from scratch on Omniglot's two small background sets,
export it to ONNX and score the official 20-way one-shot runs with the exported model.

Protocol: training sees only ``images_background_small1.zip`` and ``images_background_small2.zip`` (8 distinct
alphabets: the two sets share Greek and Latin, taken once). The recipe below follows common Omniglot practice
(rotations as new classes, geometric augmentation, strokes bright on zero); ``all_runs.zip`` played no part in
choosing it and is read once, at the end, for the figure. To tune a recipe, draw within-alphabet runs from
held-out background alphabets with :func:`encoders.evaluate.background_oneshot_runs`. Each query is assigned
to its nearest support image independently (no use of the fact that a run's queries cover each class once).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

from encoders.train import TrainConfig
from lab.benchmarks.data import shared_data
from lab.evaluation.report import json_line, table

log = logging.getLogger(__name__)

# The recipe: Koch-style 4-block CNN from scratch, grey 32 px, strokes bright on zero, each character also at
# 90/180/270 degrees as new classes, geometric augmentation only, batch-hard triplets over 32 x 4 batches,
# AdamW with warm-up and cosine annealing. 50 x 100 batches fit in the 30-minute budget on 2 CPU cores.
RECIPE = TrainConfig(
    backbone="small-cnn", input_size=32, grayscale=True, embedding_dim=128, pooling="gem",
    loss="triplet_batch_hard", margin=0.2, lr=1e-3, weight_decay=1e-4, warmup_fraction=0.03,
    epochs=50, batches_per_epoch=100, p=32, k=4, augment=True, augment_preset="glyph", rotate_classes=True,
    invert=True, seed=0, device="auto", amp=True, num_threads=0, depth=2, progress_every_s=30.0,
)


def main(epochs: int | None = None, work_dir: Path | None = None, threads: int = 0) -> int:
    from encoders.export import export_run
    from encoders.train import train
    from lab.evaluation.encoder_eval import oneshot

    omniglot = shared_data("omniglot")
    sets = [omniglot / "images_background_small1.zip", omniglot / "images_background_small2.zip"]
    runs = omniglot / "all_runs.zip"
    for p in [*sets, runs]:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; the Omniglot folder must hold the two small background sets "
                                    f"and all_runs.zip")
    cfg = dataclasses.replace(RECIPE, epochs=epochs or RECIPE.epochs, num_threads=threads)
    with tempfile.TemporaryDirectory(prefix="siamstream-oneshot-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        started = time.perf_counter()
        result = train(sets, work / "run", cfg)
        report = export_run(work / "run", work / "model.onnx")
        scores = oneshot(report.path, runs, work / "runs", threads=threads)
        wall = time.perf_counter() - started
    lo, hi = scores.interval()
    print(f"Omniglot 20-way one-shot, official runs ({len(scores.runs)} x {scores.trials[0]} trials); "
          f"trained on the small background sets only, from scratch")
    print(f"recipe: {cfg.backbone} {cfg.input_size} px, {cfg.loss}, {cfg.epochs} x {cfg.batches_per_epoch} batches of "
          f"{cfg.p} x {cfg.k}, rotations as classes {cfg.rotate_classes}")
    print(table(["run", "accuracy"], [[name, acc] for name, acc in zip(scores.runs, scores.per_run, strict=True)]))
    print(table(["figure", "value"], [
        ["accuracy", scores.accuracy], ["95% interval low", lo], ["95% interval high", hi],
        ["train seconds", result.train_seconds], ["export parity max abs", report.parity_max_abs],
        ["wall seconds (train + export + eval)", wall],
    ]))
    print(json_line({"accuracy": round(scores.accuracy, 4), "train_seconds": round(result.train_seconds, 1),
                     "accuracy_ci95": [round(lo, 4), round(hi, 4)], "epochs": cfg.epochs,
                     "parity_max_abs": report.parity_max_abs}))
    return 0
