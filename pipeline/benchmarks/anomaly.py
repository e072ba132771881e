"""``siamstream bench anomaly``: defect detection on MVTec 3D-AD ``tire`` (RGB), against baselines in one run.

Every entry builds its bank from the 210 ``train`` good images, calibrates its threshold on the 29
``validation`` good images (never a defect) and scores the 112 ``test`` images, through the same code as
``siamstream eval anomaly``:

- ``siamstream``: the recipe below: whole images at their native 320x240, EfficientNet-Lite0 stage 3 and stage 4
  features concatenated on the stage-3 grid (stride 8), a 10% greedy k-center coreset, 1-NN distance,
  Gaussian-smoothed maps, image score = map maximum, threshold at a 2% false-alarm target;
- ``patchcore-s4-224``: the PatchCore-style baseline the issue quotes: stage-4 features only, images resized
  to 224x224, the same coreset and calibration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.benchmarks.data import shared_data
from pipeline.benchmarks.report import json_line, table
from pipeline.config import Config, load_config, replace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    name: str
    size: tuple[int, int] | None  # None: the images' own size
    encoder: dict[str, object]
    bank: dict[str, object]


RECIPE = Entry("siamstream", None, {"stage": 4, "patch_stage": 4, "patch_detail_stage": 3},
               {"coreset_fraction": 0.1, "false_alarm_rate": 0.02, "max_vectors": 200_000})
BASELINES = (
    Entry("patchcore-s4-224", (224, 224), {"stage": 4, "patch_stage": 4, "patch_detail_stage": 0},
          {"coreset_fraction": 0.1, "false_alarm_rate": 0.02, "max_vectors": 200_000}),
)


def entry_config(base: Config, entry: Entry) -> Config:
    cfg = replace(base, "encoder", **entry.encoder)
    return replace(cfg, "bank", level="patch", **entry.bank)


def main(base: Config | None = None, baselines: bool = True) -> int:
    from pipeline.evaluation.anomaly_report import report_lines, run_evaluation

    manifest = shared_data("mvtec3d_tire", "manifest.csv")
    base = base or load_config(None)
    results = {}
    rows = []
    for entry in (RECIPE, *(BASELINES if baselines else ())):
        log.info("bench anomaly: %s", entry.name)
        ev, _ = run_evaluation(entry_config(base, entry), manifest, None, size=entry.size)
        results[entry.name] = ev
        if entry is RECIPE:
            print(f"== {entry.name}")
            for line in report_lines(ev):
                print(line)
            print()
        rows.append([entry.name, ev.image_auroc.value, ev.pixel_auroc, ev.pixel_ap, ev.aupro, ev.recall.value,
                     ev.fpr.value, ev.ms_per_image])
    print(table(["method", "image AUROC", "pixel AUROC", "pixel AP", "AUPRO", "recall", "false alarms",
                 "ms/image"], rows))
    ours = results[RECIPE.name].figures()
    ours["baselines"] = {name: {k: v for k, v in ev.figures().items() if k in (
        "image_auroc", "pixel_auroc", "pixel_ap", "recall_at_threshold", "fpr_at_threshold", "ms_per_image")}
        for name, ev in results.items() if name != RECIPE.name}
    print(json_line(ours))
    return 0
