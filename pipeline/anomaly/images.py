"""Whole images for the anomaly stage: read, resized to the encoder's input, embedded to patch features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from pipeline.anomaly.bank import BankError
from pipeline.anomaly.manifest import ManifestError, ManifestRow
from pipeline.encoder import Encoder
from pipeline.progress import Progress
from pipeline.types import CropBatch

__all__ = ["image_patch_features", "image_size", "patch_features", "patch_grid_of", "read_mask", "read_rgb",
           "resize_image"]


def resize_image(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``img`` at ``size_hw``: area interpolation when shrinking, bilinear when enlarging, as is when equal."""
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    shrink = img.shape[0] > h or img.shape[1] > w
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def read_rgb(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB at ``size_hw`` (area interpolation when shrinking)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ManifestError(f"{path}: not a readable image; convert it to PNG or JPEG")
    return cv2.cvtColor(resize_image(img, size_hw), cv2.COLOR_BGR2RGB)


def read_mask(path: Path | None, size_hw: tuple[int, int]) -> np.ndarray:
    """A defect mask as ``(H, W)`` bool (any non-zero value is defect); all False without a mask file."""
    if path is None:
        return np.zeros(size_hw, bool)
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ManifestError(f"{path}: not a readable mask image")
    if m.shape != tuple(size_hw):
        m = cv2.resize(m, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)
    return m > 0


def image_size(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ManifestError(f"{path}: not a readable image; convert it to PNG or JPEG")
    return int(img.shape[0]), int(img.shape[1])


def patch_features(rows: list[ManifestRow], encoder: Encoder, batch: int = 8,
                   on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """``(N, P, C)`` patch features of each row's image at the encoder's input size."""
    return image_patch_features([r.image for r in rows], encoder, batch, on_batch)


def image_patch_features(images: list[Path] | np.ndarray, encoder: Encoder, batch: int = 8,
                         on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """``(N, P, C)`` patch features of image files, or of uint8 RGB images ``(N, H, W, 3)``, each resized to the
    encoder's input size."""
    if not encoder.patch_dim:
        raise BankError("the encoder has no 'patches' output: anomaly maps need patch features; use the built-in "
                        "encoder (patch_stage > 0) or a model with a 'patches' output")
    h, w = encoder.input_size
    out: list[np.ndarray] = []
    with Progress("embedding images", len(images), "image") as bar:
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            imgs = np.stack([read_rgb(x, (h, w)) if isinstance(x, Path) else resize_image(x, (h, w)) for x in chunk])
            boxes = np.tile(np.array([[0, 0, w, h]], np.float32), (len(imgs), 1))
            emb = encoder.embed(CropBatch(imgs, boxes), with_patches=True)
            assert emb.patches is not None
            out.append(emb.patches)
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(len(chunk))
    return np.concatenate(out)


def patch_grid_of(encoder: Encoder) -> tuple[int, int]:
    grid = getattr(encoder, "patch_grid", None)
    if not grid or not grid[0]:
        raise BankError("the encoder does not report its patch grid; use an ONNX encoder with a 'patches' output")
    return int(grid[0]), int(grid[1])
