"""Anomaly maps: patch scores on the feature grid -> a per-pixel map over the crop or image (pure functions).

A patch bank scores each cell of the encoder's feature grid. The map is that grid resized to the image
(bilinear) and smoothed with a Gaussian (PatchCore uses sigma = 4 px): one isolated high cell is usually
noise, a defect lights up a few neighbouring cells. The image's (or crop's) score is the map's maximum.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.types import PatchMap

DEFAULT_SIGMA_PX = 4.0


def anomaly_maps(patch_scores: np.ndarray, size_hw: tuple[int, int], sigma_px: float = DEFAULT_SIGMA_PX
                 ) -> np.ndarray:
    """``(N, h, w)`` patch scores -> ``(N, H, W)`` float32 maps at ``size_hw``, smoothed by ``sigma_px``."""
    grid = np.asarray(patch_scores, np.float32)
    if grid.ndim != 3:
        raise ValueError(f"patch scores must be (N, h, w), got shape {grid.shape}")
    height, width = int(size_hw[0]), int(size_hw[1])
    out = np.empty((len(grid), height, width), np.float32)
    for i, g in enumerate(grid):
        m = cv2.resize(g, (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = cv2.GaussianBlur(m, (0, 0), sigma_px) if sigma_px > 0 else m
    return out


def mask_border(maps: np.ndarray, border_px: int) -> np.ndarray:
    """``(N, H, W)`` maps with a band of ``border_px`` pixels along the edges set to each map's minimum.

    Convolutional features see zero padding at the image edge, and the corners of a photo are where the
    lighting falls off: both give good images their highest scores at the border. Parts are inspected where
    they are, inside the frame, so the band is left out of the maximum (and out of pixel metrics' positives,
    which a mask never has there)."""
    m = np.array(maps, np.float32, copy=True)
    b = int(border_px)
    if b <= 0 or len(m) == 0:
        return m
    if 2 * b >= min(m.shape[1:]):
        raise ValueError(f"border of {b} px leaves nothing of a {m.shape[1]}x{m.shape[2]} map")
    low = m.reshape(len(m), -1).min(axis=1)[:, None, None]
    inner = m[:, b:-b, b:-b].copy()
    m[:] = low
    m[:, b:-b, b:-b] = inner
    return m


def map_scores(maps: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` maps -> ``(N,)`` scores: the largest value of each map."""
    m = np.asarray(maps)
    return m.reshape(len(m), -1).max(axis=1) if len(m) else np.zeros(0, np.float32)


def smoothed_grid_max(patch_scores: np.ndarray, sigma_cells: float) -> np.ndarray:
    """``(N, h, w)`` patch scores -> ``(N,)``: the maximum after Gaussian smoothing on the grid itself.

    The per-crop score the live pipeline uses: the same smoothing as :func:`anomaly_maps` expressed in grid
    cells (``sigma_px / stride``), without building full-resolution maps for every crop of every frame."""
    grid = np.asarray(patch_scores, np.float32)
    if sigma_cells <= 0:
        return grid.reshape(len(grid), -1).max(axis=1) if len(grid) else np.zeros(0, np.float32)
    return np.array([cv2.GaussianBlur(g, (0, 0), sigma_cells).max() for g in grid], np.float32)


def overlay(image_bgr: np.ndarray, amap: np.ndarray, low: float, high: float, alpha: float = 0.5) -> np.ndarray:
    """``image_bgr`` ``(H, W, 3)`` uint8 with ``amap`` ``(H', W')`` drawn over it as a JET heat map.

    Values at ``low`` are drawn yellow-green and at ``high`` (or above) red; values below ``low`` are left
    uncoloured so good regions stay readable."""
    h, w = image_bgr.shape[:2]
    m = np.asarray(amap, np.float32)
    if m.shape != (h, w):
        m = np.asarray(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)
    span = max(float(high) - float(low), 1e-12)
    norm = np.clip((m - low) / span, 0.0, 1.0)
    # JET's upper half (yellow at ``low`` .. red at ``high``) where the map is over ``low``
    heat = cv2.applyColorMap((127 + norm * 128).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * (m > low)).astype(np.float32)[..., None]
    return (image_bgr.astype(np.float32) * (1 - weight) + heat.astype(np.float32) * weight).astype(np.uint8)


def overlay_patch_maps(image_bgr: np.ndarray, patch_maps: Sequence[PatchMap], alpha: float = 0.5,
                       worst: float = 0.0) -> np.ndarray:
    """A copy of a frame with each crop's patch map drawn over the region the crop was cut from.

    Only patches above the crop's threshold are coloured (yellow just above it, red at 1.5 times it and
    beyond), so a flagged part shows where it is defective and a good part stays as it is. With ``worst``
    > 0 (evidence of a flagged part), patches within that fraction of the crop's worst patch are coloured
    too: a part is flagged on its median over many frames, and in the frame saved its worst patch may be
    just under the threshold."""
    out = np.array(image_bgr, copy=True)
    height, width = out.shape[:2]
    for pm in patch_maps:
        x1, y1, x2, y2 = pm.xyxy
        rw, rh = max(1, round(x2 - x1)), max(1, round(y2 - y1))
        full = cv2.resize(pm.grid, (rw, rh), interpolation=cv2.INTER_LINEAR)
        ox, oy = round(x1), round(y1)
        cx1, cy1, cx2, cy2 = max(0, ox), max(0, oy), min(width, ox + rw), min(height, oy + rh)
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        part = full[cy1 - oy:cy2 - oy, cx1 - ox:cx2 - ox]
        low = pm.threshold if pm.threshold > 0 and np.isfinite(pm.threshold) else float(full.max())
        if worst > 0:
            low = min(low, (1.0 - worst) * float(full.max()))
        out[cy1:cy2, cx1:cx2] = overlay(out[cy1:cy2, cx1:cx2], part, low, 1.5 * low, alpha)
    return out
