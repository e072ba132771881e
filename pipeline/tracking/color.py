"""Colour descriptors of detection boxes (pure functions): the tracker's second appearance cue.

The encoder's embedding of a crop describes shape and texture, and in a small, low-resolution crop of a person
mostly the background around them. What tells two nearby people apart is often simply what they wear: a
colour histogram of the box, the classic cue of pedestrian trackers (Comaniciu et al. 2003's mean-shift
tracker; Ess et al. 2008; the colour models of the PETS benchmarks' trackers).

Per box, an HSV histogram of the box's inner region (the outer part of the box's width is mostly background, the
top and bottom rows are head and feet), in ``stripes`` horizontal bands from top to bottom (upper and lower body
for people), each normalised to sum 1. The descriptor is the square root of the concatenated band histograms,
scaled to unit L2 norm: the cosine similarity of two such vectors is the mean Bhattacharyya coefficient of
their bands, so ``1 - cosine`` is a proper distance between colour distributions that the tracker treats like
any embedding distance.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.types import FloatArray

# Hue, saturation and value bins: hue carries most of the identity, value least (it changes with shade).
DEFAULT_BINS = (8, 4, 4)
# Fraction of the box's width left out at each side, and of its height at the top and at the bottom.
DEFAULT_INSET = (0.2, 0.1)


def color_dim(bins: tuple[int, int, int] = DEFAULT_BINS, stripes: int = 2) -> int:
    """Length of one descriptor."""
    return int(np.prod(bins)) * stripes


def color_histograms(image: npt.NDArray[np.uint8], boxes: npt.ArrayLike, bins: tuple[int, int, int] = DEFAULT_BINS,
                     stripes: int = 2, inset: tuple[float, float] = DEFAULT_INSET) -> FloatArray:
    """``(N, color_dim)`` float32 unit-norm colour descriptors of ``(N, 4)`` xyxy ``boxes`` in a BGR ``image``.

    Boxes are clipped to the image. A box whose inner region has no pixel uses its whole clipped area; a box
    with no pixel inside the image gets an all-zero row (no colour known).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) BGR, got shape {image.shape}")
    if stripes < 1 or min(bins) < 1:
        raise ValueError(f"stripes and bins must be >= 1, got {stripes} and {bins}")
    if not all(0.0 <= f < 0.5 for f in inset):
        raise ValueError(f"inset fractions must be in [0, 0.5), got {inset}")
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.zeros((len(b), color_dim(bins, stripes)), np.float32)
    if not len(b):
        return out
    height, width = image.shape[:2]
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    x1 = np.clip(np.floor(b[:, 0]), 0, width).astype(int)
    y1 = np.clip(np.floor(b[:, 1]), 0, height).astype(int)
    x2 = np.clip(np.ceil(b[:, 2]), 0, width).astype(int)
    y2 = np.clip(np.ceil(b[:, 3]), 0, height).astype(int)
    ranges = [0, 180, 0, 256, 0, 256]
    size = int(np.prod(bins))
    for i in range(len(b)):
        if x2[i] <= x1[i] or y2[i] <= y1[i]:
            continue
        dx = int(inset[0] * (x2[i] - x1[i]))
        dy = int(inset[1] * (y2[i] - y1[i]))
        roi = hsv[y1[i] + dy:y2[i] - dy, x1[i] + dx:x2[i] - dx]
        if roi.size == 0:
            roi = hsv[y1[i]:y2[i], x1[i]:x2[i]]
        edges = np.linspace(0, len(roi), stripes + 1).round().astype(int)
        for s in range(stripes):
            band = roi[edges[s]:edges[s + 1]]
            if band.size == 0:
                continue
            hist = cv2.calcHist([np.ascontiguousarray(band)], [0, 1, 2], None, list(bins), ranges).ravel()
            out[i, s * size:(s + 1) * size] = np.sqrt(hist / max(float(hist.sum()), 1.0))
        norm = float(np.linalg.norm(out[i]))
        if norm > 0:
            out[i] /= norm
    return out
