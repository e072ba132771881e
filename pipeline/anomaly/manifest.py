"""A labelled image manifest: the CSV that ``anomaly fit`` and ``eval anomaly`` read.

Columns ``split`` (train | validation | test), ``is_anomaly`` (0/1), ``image`` and optionally ``mask`` and
``label`` (defect type), paths relative to the CSV. ``train`` and ``validation`` hold good images only: the bank
is built from train and thresholds come from good images; defects belong in ``test``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REQUIRED_COLUMNS", "SPLITS", "ManifestError", "ManifestRow", "load_manifest"]

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
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                found = ", ".join(columns) or "none"
                raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} (found: {found}); the header "
                                    f"needs split,is_anomaly,image and may have mask,label")
            raw = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start}); save the manifest as a UTF-8 CSV") from None
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
