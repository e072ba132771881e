"""`eval anomaly` / `bench anomaly` end to end: the encoder, the evaluation, the files, the printed report."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from lab.evaluation.anomaly_eval import AnomalyEvaluation, evaluate_anomaly
from lab.evaluation.report import table
from pipeline.anomaly.bank import Bank
from pipeline.anomaly.fit import ProbeScore
from pipeline.anomaly.images import image_size
from pipeline.anomaly.manifest import ManifestRow, load_manifest
from pipeline.config import Config
from pipeline.encoder import Encoder

log = logging.getLogger(__name__)


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (or one number for a square) -> ``(height, width)``."""
    parts = text.lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--size {text!r}: write HEIGHTxWIDTH in pixels, e.g. 320x240") from None
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 32 or max(hw) > 4096:
        raise ValueError(f"--size {text!r}: write HEIGHTxWIDTH, each 32..4096 pixels, e.g. 320x240")
    return hw[0], hw[1]


def evaluation_encoder(cfg: Config, rows: list[ManifestRow], size: tuple[int, int] | None = None,
                       model: str | None = None) -> Encoder:
    """``model`` (an ONNX file with a 'patches' output), else ``[encoder] model``, else the built-in encoder
    exported at ``size`` (default: the size of the manifest's first validation image, so whole images are seen
    at their own resolution)."""
    from pipeline import app
    from pipeline.config import replace

    # a model file is ONNX: ONNX Runtime runs it, whatever [encoder] engine says for the built-in encoder
    encoder_cfg = replace(cfg, "encoder", model=model, engine="onnxruntime").encoder if model else cfg.encoder
    if not encoder_cfg.model and size is None:
        size = image_size(next(r.image for r in rows if r.split == "validation"))
    encoder = app.build_encoder(encoder_cfg, size=size)
    log.info("encoder %s on %s: input %dx%d, patch grid %dx%d of %d features", encoder.name, encoder.provider,
             *encoder.input_size, *encoder.patch_grid, encoder.patch_dim)
    return encoder


def run_evaluation(cfg: Config, manifest: Path, out: Path | None, size: tuple[int, int] | None = None,
                   model: str | None = None) -> tuple[AnomalyEvaluation, Bank]:
    """Evaluate the anomaly stage configured by ``cfg`` on ``manifest``; write outputs under ``out``. The
    encoder is :func:`evaluation_encoder`'s."""
    rows = load_manifest(manifest)
    encoder = evaluation_encoder(cfg, rows, size, model)
    b, a = cfg.bank, cfg.anomaly
    fitted = None
    if a.bank:
        fitted = Bank.load(a.bank)
        log.info("scoring with the bank %s as written ([anomaly] bank); set it to \"\" to build one from train", a.bank)
    ev, bank = evaluate_anomaly(rows, encoder, k=b.k, index_type=b.index, coreset_fraction=b.coreset_fraction,
                                max_vectors=b.max_vectors, false_alarm_rate=b.false_alarm_rate,
                                sigma_px=a.map_sigma, border_px=a.map_border, calibration_folds=b.folds,
                                nlist=b.nlist, nprobe=b.nprobe, pq_m=b.pq_m, cell_norm=b.cell_norm,
                                progress=log.info, bank=fitted)
    if out is not None:
        write_outputs(out, ev, bank)
    return ev, bank


def run_synthetic(cfg: Config, manifest: Path, size: tuple[int, int] | None = None, model: str | None = None,
                  per_image: int = 4, seed: int = 0, defect_size: float = 0.08) -> ProbeScore:
    """Score the anomaly settings of ``cfg`` on probe defects painted on the manifest's validation images, as
    ``anomaly fit`` scores each recipe (:func:`pipeline.anomaly.fit.score_on_probes`): a check that needs good
    images only. Test rows are not read."""
    from pipeline.anomaly.fit import score_on_probes, size_policy
    from pipeline.anomaly.images import read_rgb
    from pipeline.anomaly.probes import probe_set

    rows = load_manifest(manifest, require_test=False)
    encoder = evaluation_encoder(cfg, rows, size, model)
    train = [r.image for r in rows if r.split == "train"]
    validation = [r.image for r in rows if r.split == "validation"]
    working = size_policy(train + validation).size_hw
    probes = probe_set([read_rgb(p, working) for p in validation], per_image, defect_size, seed)
    return score_on_probes(cfg, encoder, train, probes, working, seed)


def write_outputs(out: Path, ev: AnomalyEvaluation, bank: Bank) -> None:
    """``scores.csv`` (one row per test image), ``calibration.csv`` (the held-out good images' scores the
    threshold was set on), ``histograms.png``, ``maps.png`` and the bank itself."""
    from lab.evaluation.anomaly_plots import save_histograms, save_map_grid

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "is_anomaly", "score", "flagged"])
        for row, score in zip(ev.test_rows, ev.test_scores, strict=True):
            w.writerow([str(row.image), row.label, int(row.is_anomaly), f"{score:.6f}", int(score > ev.threshold)])
    with open(out / "calibration.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["score"])
        w.writerows([f"{s:.6f}"] for s in ev.calibration_scores)
    save_histograms(out / "histograms.png", ev)
    save_map_grid(out / "maps.png", ev)
    bank.save(out / "bank")


def report_lines(ev: AnomalyEvaluation) -> list[str]:
    """The human-readable report printed before the JSON line."""
    c = ev.counts
    lines = [
        f"images     train {c['train']} (bank: {ev.bank_vectors} patch vectors, coverage radius "
        f"{ev.coreset_coverage:.3f}), validation {c['validation']}, test {c['test']} ({c['test_defective']} defective)",
        f"threshold  {ev.threshold:.4f}: the {1 - ev.false_alarm_rate_target:.0%} quantile of {ev.calibration_images} "
        f"held-out good images ({c['validation']} validation"
        + (f", {ev.calibration_images - c['validation']} train out of fold" if ev.calibration_images > c['validation']
           else "") + f"; with that many, a false-alarm rate up to {ev.validation_fpr_upper_95:.1%} cannot be ruled "
        f"out at 95% confidence)",
        "",
    ]
    rows = [
        ["image AUROC", f"{ev.image_auroc.value:.3f}", f"{ev.image_auroc.low:.3f} .. {ev.image_auroc.high:.3f}"],
        ["pixel AUROC", f"{ev.pixel_auroc:.3f}", ""],
        ["pixel AP", f"{ev.pixel_ap:.3f}", ""],
        ["AUPRO (FPR <= 0.3)", f"{ev.aupro:.3f}", ""],
        ["recall at threshold", f"{ev.recall.value:.3f}", f"{ev.recall.low:.3f} .. {ev.recall.high:.3f}"],
        ["false alarms on test good", f"{ev.fpr.value:.3f}", f"{ev.fpr.low:.3f} .. {ev.fpr.high:.3f}"],
        *[[f"AUROC {label}", f"{v:.3f}", ""] for label, v in ev.per_type_auroc.items()],
        ["ms per image", f"{ev.ms_per_image:.1f}", ""],
    ]
    lines.append(table(["figure", "value", "95% interval"], rows))
    return lines
