"""Small labelled image manifests for the anomaly stage's tests: discs with a hole pattern on dark cloth."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np


def _part(rng: np.random.Generator, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 128 px 'part': a grey disc with a regular hole pattern on dark cloth; a defect is a bright scratch."""
    img = rng.integers(10, 30, size=(128, 128, 3)).astype(np.uint8)
    cv2.circle(img, (64, 64), 50, (90, 90, 90), -1)
    for y in range(34, 100, 16):
        for x in range(34, 100, 16):
            cv2.circle(img, (x, y), 3, (30, 30, 30), -1)
    mask = np.zeros((128, 128), np.uint8)
    if defect:
        x0, y0 = (int(v) for v in rng.integers(35, 80, size=2))
        cv2.line(img, (x0, y0), (x0 + 14, y0 + 9), (235, 235, 235), 3)
        cv2.line(mask, (x0, y0), (x0 + 14, y0 + 9), 255, 3)
    return img, mask


def write_manifest(root: Path, n_train: int = 12, n_val: int = 6, n_good: int = 5, n_bad: int = 5) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    plan = [("train", False)] * n_train + [("validation", False)] * n_val + [("test", False)] * n_good \
        + [("test", True)] * n_bad
    for i, (split, bad) in enumerate(plan):
        img, mask = _part(rng, bad)
        (root / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / split / f"{i}.png"), img)
        mask_rel = ""
        if split == "test":
            cv2.imwrite(str(root / split / f"{i}_mask.png"), mask)
            mask_rel = f"{split}/{i}_mask.png"
        rows.append([split, "scratch" if bad else "good", int(bad), f"{split}/{i}.png", mask_rel])
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "label", "is_anomaly", "image", "mask"])
        w.writerows(rows)
    return path
