"""PNG figures of an anomaly evaluation: score histograms and a grid of anomaly maps."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lab.evaluation.anomaly_eval import AnomalyEvaluation
from pipeline.anomaly.images import read_rgb
from pipeline.anomaly.maps import overlay


def save_histograms(path: Path, ev: AnomalyEvaluation) -> None:
    """Image scores of validation good, test good and each test defect type, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {"held-out good (calibration)": ev.calibration_scores}
    labels = [r.label for r in ev.test_rows]
    for label in ["good", *sorted({r.label for r in ev.test_rows if r.is_anomaly})]:
        sel = np.array([lab == label for lab in labels])
        groups[f"test {label}"] = ev.test_scores[sel]
    every = np.concatenate(list(groups.values()))
    bins = np.linspace(float(every.min()), float(every.max()), 30).tolist()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, scores in groups.items():
        ax.hist(scores, bins=bins, histtype="step", linewidth=1.8, label=f"{name} ({len(scores)})")
    ax.axvline(ev.threshold, color="k", linestyle="--", label=f"threshold {ev.threshold:.3f}")
    ax.set_xlabel("image anomaly score (max of the smoothed map)")
    ax.set_ylabel("images")
    ax.set_title(f"image AUROC {ev.image_auroc.value:.3f}; recall {ev.recall.value:.2f} at "
                 f"{ev.fpr.value:.0%} false alarms on test good")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_map_grid(path: Path, ev: AnomalyEvaluation, per_label: int = 3) -> None:
    """Rows of (image with the defect outlined | anomaly map over the image), ``per_label`` images of each
    test label, the highest-scoring first; the colour scale runs from the lowest test score to the threshold
    and above, so red means "over the threshold"."""
    labels = [r.label for r in ev.test_rows]
    picks: list[int] = []
    for label in ["good", *sorted({r.label for r in ev.test_rows if r.is_anomaly})]:
        idx = [i for i, lab in enumerate(labels) if lab == label]
        picks.extend(sorted(idx, key=lambda i: -ev.test_scores[i])[:per_label])
    h, w = ev.test_maps.shape[1:]
    low = float(np.percentile(ev.test_maps, 50))
    high = max(ev.threshold, low + 1e-6)
    tiles = []
    for i in picks:
        row = ev.test_rows[i]
        img = cv2.cvtColor(read_rgb(row.image, (h, w)), cv2.COLOR_RGB2BGR)
        outlined = img.copy()
        contours, _ = cv2.findContours(ev.test_masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(outlined, contours, -1, (0, 255, 0), 1)
        heat = overlay(img, ev.test_maps[i], low, high)
        cv2.drawContours(heat, contours, -1, (0, 255, 0), 1)
        pair = np.hstack([outlined, heat])
        verdict = "FLAG" if ev.test_scores[i] > ev.threshold else "ok"
        cv2.putText(pair, f"{row.label} {ev.test_scores[i]:.3f} {verdict}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(pair)
    cols = 3
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[r:r + cols]) for r in range(0, len(tiles), cols)])
    cv2.imwrite(str(path), grid)
