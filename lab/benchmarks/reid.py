"""``siamstream bench reid``: the person re-identification encoder the tracker uses, trained and scored here.

Market-1501's training split (``reid/market1501_train`` in the shared data) less ``[reid] val_identities`` held-out
identities (seeded; query and gallery from different cameras) trains the default ``[reid]`` recipe; the exported
ONNX model (as ``siamstream export`` writes it: each crop averaged with its mirror image) and the built-in ImageNet
encoder (``[encoder]`` stage and pooling, at the same input shape) are both scored on the held-out identities by
the Market-1501 protocol, with the trained model's int8 export (``siamstream export --int8``, calibrated on training
identities); then all three run in ONNX Runtime on the CPU at batch 32, alternating, to give crops per second.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from encoders.export import ensure_pretrained_onnx, export_run
from encoders.quantize import calibration_paths, int8_path, quantize_int8, validation_files
from encoders.reid_train import VALIDATION, read_reid_data, train_reid
from lab.benchmarks.data import shared_data
from lab.evaluation.reid_eval import ReidReport, evaluate_reid
from lab.evaluation.report import json_line, table
from pipeline import app
from pipeline.config import Config
from pipeline.encoder import OnnxEncoder
from pipeline.types import CropBatch

log = logging.getLogger(__name__)

BATCH = 32


def crops_per_second(models: list[Path], threads: int, batch: int = BATCH, repeats: int = 20,
                     seed: int = 0) -> list[float]:
    """ONNX Runtime CPU crops/s of each model at ``batch``: the median of ``repeats`` alternating timed runs
    (one batch of each model per round, so load from other processes hits them alike)."""
    encoders = [OnnxEncoder(m, device="cpu", threads=threads, max_batch=batch) for m in models]
    rng = np.random.default_rng(seed)
    batches = []
    for enc in encoders:
        h, w = enc.input_size
        images = rng.integers(0, 256, size=(batch, h, w, 3), dtype=np.uint8)
        batches.append(CropBatch(images, np.tile(np.array([0, 0, w, h], np.float32), (batch, 1))))
    times: list[list[float]] = [[] for _ in encoders]
    for r in range(repeats + 2):
        for i, (enc, crops) in enumerate(zip(encoders, batches, strict=True)):
            start = time.perf_counter()
            enc.embed(crops, with_patches=False)
            if r >= 2:  # two warm-up rounds
                times[i].append(time.perf_counter() - start)
    return [batch / statistics.median(t) for t in times]


def main(cfg: Config, out_dir: Path | None = None, epochs: int | None = None, threads: int = 2) -> int:
    market = shared_data("reid", "market1501_train")
    rcfg = app.reid_train_config(cfg.reid)
    rcfg = replace(rcfg, num_threads=threads, epochs=epochs or rcfg.epochs)
    with tempfile.TemporaryDirectory(prefix="siamstream-reid-") as tmp:
        work = Path(out_dir) if out_dir is not None else Path(tmp)
        run_dir = work / "run"
        result = train_reid([market], run_dir, rcfg)
        model = export_run(run_dir, work / "reid.onnx").path
        baseline = ensure_pretrained_onnx(cfg.encoder.cache_dir, cfg.encoder.stage, cfg.encoder.pooling,
                                          rcfg.size, patch_stage=0)
        int8 = quantize_int8(model, int8_path(model), calibration_paths(read_reid_data([market]),
                                                                        validation_files(run_dir)), threads=threads)
        split = run_dir / VALIDATION
        trained = evaluate_reid(model, split, work / "eval", threads=threads)
        quantised = evaluate_reid(int8.path, split, None, threads=threads)
        builtin = evaluate_reid(baseline, split, None, threads=threads)
        speed_trained, speed_int8, speed_builtin = crops_per_second([model, int8.path, baseline], threads)
        print_report(result.train_seconds, result.epochs, result.train_identities,
                     [("siamstream re-id (trained here, mirror-averaged)", trained, speed_trained),
                      ("  its int8 export", quantised, speed_int8),
                      ("built-in ImageNet encoder", builtin, speed_builtin)], rcfg.backbone, threads)
        last = result.last_validation
        print(json_line({
            "rank1": trained.figures()["rank1"], "rank5": trained.figures()["rank5"],
            "rank10": trained.figures()["rank10"], "mAP": trained.figures()["mAP"],
            "train_seconds": round(result.train_seconds, 1), "epochs": result.epochs,
            "train_identities": result.train_identities, "validation_identities": result.validation_identities,
            "queries": trained.result.queries, "gallery": trained.gallery, **trained.thresholds(),
            "torch_validation_rank1": round(last.rank1, 4) if last and last.rank1 is not None else None,
            "baseline_rank1": builtin.figures()["rank1"], "baseline_mAP": builtin.figures()["mAP"],
            "crops_per_s": round(speed_trained, 1), "baseline_crops_per_s": round(speed_builtin, 1),
            "rank1_int8": quantised.figures()["rank1"], "mAP_int8": quantised.figures()["mAP"],
            "crops_per_s_int8": round(speed_int8, 1),
            "int8_mean_cosine_distance": round(int8.mean_cosine_distance, 5),
            "batch": BATCH, "threads": threads, "backbone": rcfg.backbone,
            "model": str(model) if out_dir is not None else None,
        }))
    return 0


def print_report(train_seconds: float, epochs: int, identities: int,
                 models: list[tuple[str, ReidReport, float]], backbone: str, threads: int) -> None:
    """One row per ``(name, report, crops/s)``; the first is the trained model."""
    rows = []
    for name, rep, speed in models:
        f = rep.figures()
        rows.append([name, f["rank1"], f["rank5"], f["rank10"], f["mAP"], speed])
    trained = models[0][1]
    print(table(["encoder", "rank-1", "rank-5", "rank-10", "mAP", f"crops/s (ORT CPU, {threads} thr, b{BATCH})"],
                rows))
    print(f"split      {trained.result.queries} queries, {trained.gallery} gallery images of held-out identities; "
          f"trained on {identities} other identities")
    print(f"training   {backbone}, {epochs} epochs in {train_seconds / 60:.1f} min")
