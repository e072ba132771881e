"""``siamstream bench anomaly``: ``anomaly fit`` on MVTec 3D-AD ``tire`` (RGB), over several seeds, against a baseline.

Each seed runs the whole product path a user runs on a new line:

1. ``anomaly fit`` (:mod:`pipeline.anomaly.fit`): every recipe builds its bank from the 210 ``train`` good images
   and scores the 29 ``validation`` good images with probe defects painted on the tire (adaptation included, with
   the seed); the rule in the code chooses; the chosen bank is calibrated on held-out good images and written with a
   complete config. The ``test`` split is not read.
2. ``eval anomaly --config DIR/config.toml``: the 112 ``test`` images scored once against the fitted bank, with its
   own threshold.

The seeds change the probe defects, the coresets, the calibration folds and the adaptation, so the spread over them
says how much of a result is luck. ``patchcore-s4-224``, the PatchCore-style baseline (stage-4 features, images
resized to 224x224, a 10% coreset, exact search, sigma 4 px, no border band), is built from train, calibrated the
same way and scored on the same test split. The false-alarm target is ``--false-alarm-rate`` (2% by default).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.benchmarks.data import shared_data
from lab.evaluation.anomaly_eval import AnomalyEvaluation
from lab.evaluation.report import json_line, table
from pipeline.anomaly.bank import Bank
from pipeline.anomaly.fit import BASELINE, RECIPES, FitResult, FitSettings, fit_report, recipe_config, report_table
from pipeline.config import Config, ConfigError, load_config, replace

log = logging.getLogger(__name__)

# Good vectors appended in the timed bank add (the "bank add of 10k vectors").
ADD_VECTORS = 10_000
FALSE_ALARM_RATE = 0.02


@dataclass
class SeedRun:
    seed: int
    fit: FitResult
    evaluation: AnomalyEvaluation
    bank: Bank

    def row(self) -> list[object]:
        ev = self.evaluation
        return [self.seed, self.fit.chosen.name, ev.image_auroc.value, ev.pixel_ap, ev.recall.value, ev.fpr.value,
                self.fit.bank.meta.false_alarm_upper_95, ev.ms_per_image, self.fit.seconds]


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


def new_good_vectors(cfg: Config, manifest: Path, n: int) -> np.ndarray:
    """``n`` real patch vectors of good validation (then train) images, through ``cfg``'s encoder: good samples
    to add. Fewer when the good images hold fewer patches."""
    from pipeline import app
    from pipeline.anomaly.images import image_patch_features
    from pipeline.anomaly.manifest import load_manifest

    rows = load_manifest(manifest)
    encoder = app.build_encoder(cfg.encoder)
    images = [r.image for r in rows if r.split == "validation"] + [r.image for r in rows if r.split == "train"]
    per_image = encoder.patch_grid[0] * encoder.patch_grid[1]
    feats = image_patch_features(images[:max(1, -(-n // per_image))], encoder)
    return np.ascontiguousarray(feats.reshape(-1, feats.shape[-1])[:n])


def run_seed(base: Config, manifest: Path, settings: FitSettings, work: Path) -> SeedRun:
    """One whole fit, written to ``work/fitted``, then the test split scored with the written config."""
    from lab.evaluation.anomaly_report import run_evaluation
    from pipeline.anomaly.fit import fit_anomaly, write_fit
    from pipeline.anomaly.manifest import load_manifest

    result = fit_anomaly(load_manifest(manifest), base, settings, work / "work")
    cfg = write_fit(result, work / "fitted")
    ev, bank = run_evaluation(cfg, manifest, None)
    return SeedRun(settings.seed, result, ev, bank)


def main(base: Config | None = None, baselines: bool = True, recipe: str | None = None, seeds: int = 3) -> int:
    names = [r.name for r in RECIPES]
    if recipe is not None and recipe not in names:
        raise ConfigError(f"bench anomaly --recipe {recipe!r}: no such candidate; choose one of: "
                          f"{', '.join(repr(n) for n in names)} (quote the name: it holds spaces)")
    if not 1 <= seeds <= 20:
        raise ConfigError(f"bench anomaly --seeds {seeds}: allowed 1 .. 20")
    manifest = shared_data("mvtec3d_tire", "manifest.csv")
    base = base or replace(load_config(None), "bank", false_alarm_rate=FALSE_ALARM_RATE)
    target = base.bank.false_alarm_rate
    runs: list[SeedRun] = []
    with tempfile.TemporaryDirectory(prefix="siamstream-bench-") as tmp:
        for seed in range(seeds):
            log.info("bench anomaly: seed %d of %d", seed + 1, seeds)
            settings = FitSettings(seed=seed, recipes=(recipe,) if recipe else ())
            runs.append(run_seed(base, manifest, settings, Path(tmp) / f"seed{seed}"))
            if seed == 0:
                first_cfg = load_config(Path(tmp) / "seed0" / "fitted" / "config.toml")
                new = new_good_vectors(first_cfg, manifest, ADD_VECTORS)
                before = len(runs[0].bank)
                add_seconds = time_bank_add(runs[0].bank, new, Path(tmp) / "add")
        baseline = _baseline(base, manifest) if baselines else None
    return _report(runs, baseline, add_seconds, len(new), before, target)


def _baseline(base: Config, manifest: Path) -> AnomalyEvaluation:
    from lab.evaluation.anomaly_report import run_evaluation

    log.info("bench anomaly: %s", BASELINE.name)
    cfg = replace(recipe_config(base, BASELINE), "anomaly", bank="")
    ev, _ = run_evaluation(cfg, manifest, None, size=BASELINE.size)
    return ev


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "std": round(statistics.pstdev(values), 4)}


def _report(runs: list[SeedRun], baseline: AnomalyEvaluation | None, add_seconds: float, added: int,
            before: int, target: float) -> int:
    from lab.evaluation.anomaly_report import report_lines

    first = runs[0]
    print(f"== anomaly fit, seed {first.seed}: {len(first.fit.candidates)} recipes on probe defects "
          f"(validation images only); {first.fit.size.describe()}")
    print("\n".join(report_table(first.fit)))
    for name, seconds in first.fit.adapt_seconds.items():
        print(f"{name}: trunk adapted on the train images in {seconds:.0f} s")
    print()
    print(f"== {first.fit.chosen.name} (seed {first.seed}) on the test split")
    for line in report_lines(first.evaluation):
        print(line)
    print(f"bank add   {added} vectors appended to the {before}-vector {first.bank.meta.index_type} bank and the "
          f"bank saved in {add_seconds:.3f} s")
    print()
    print(f"== every seed: the whole fit, then the test split once ({target:.0%} false-alarm target)")
    print(table(["seed", "chosen", "image AUROC", "pixel AP", "recall", "false alarms on test good",
                 "false-alarm bound (95%)", "ms/image", "fit s"], [r.row() for r in runs]))
    keys = {"image_auroc": [r.evaluation.image_auroc.value for r in runs],
            "pixel_ap": [r.evaluation.pixel_ap for r in runs],
            "recall": [r.evaluation.recall.value for r in runs], "fpr": [r.evaluation.fpr.value for r in runs]}
    spreads = {k: _spread(v) for k, v in keys.items()}
    print(table(["figure over seeds", "mean", "min", "max", "std"],
                [[k, s["mean"], s["min"], s["max"], s["std"]] for k, s in spreads.items()]))
    figures = first.evaluation.figures()
    figures |= {"recipe": first.fit.chosen.name, "bank_add_seconds": round(add_seconds, 3),
                "bank_add_vectors": added, "seeds": len(runs),
                "image_auroc_mean": spreads["image_auroc"]["mean"], "pixel_ap_mean": spreads["pixel_ap"]["mean"],
                "recall_mean": spreads["recall"]["mean"], "fpr_mean": spreads["fpr"]["mean"], "spread": spreads,
                "per_seed": [{"seed": r.seed, "recipe": r.fit.chosen.name, **r.evaluation.figures(),
                              "false_alarm_upper_95": round(r.fit.bank.meta.false_alarm_upper_95, 4),
                              "fit_seconds": round(r.fit.seconds, 1)} for r in runs],
                "selection": fit_report(first.fit)["candidates"]}
    if first.fit.adapt_seconds:
        figures["adapt_seconds"] = {n: round(v, 1) for n, v in first.fit.adapt_seconds.items()}
    if baseline is not None:
        rows = [[f"siamstream (seed {r.seed}: {r.fit.chosen.name})", r.evaluation.image_auroc.value,
                 r.evaluation.pixel_auroc, r.evaluation.pixel_ap, r.evaluation.recall.value, r.evaluation.fpr.value,
                 r.evaluation.ms_per_image] for r in runs]
        rows.append([BASELINE.name, baseline.image_auroc.value, baseline.pixel_auroc, baseline.pixel_ap,
                     baseline.recall.value, baseline.fpr.value, baseline.ms_per_image])
        print(table(["method", "image AUROC", "pixel AUROC", "pixel AP", "recall", "false alarms", "ms/image"], rows))
        figures["baselines"] = {BASELINE.name: {k: v for k, v in baseline.figures().items() if k in (
            "image_auroc", "pixel_auroc", "pixel_ap", "recall_at_threshold", "fpr_at_threshold", "ms_per_image")}}
    print(json_line(figures))
    return 0
