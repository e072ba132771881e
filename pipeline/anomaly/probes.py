"""Synthetic defects for measuring a recipe on good images only: painted on the object, not on the background.

``anomaly fit`` scores each candidate recipe by how well it finds these on held-out good images. They are kept apart
from the defects the trunk adaptation trains on (:mod:`encoders.data`: cut-paste, scratch, hole and stain, flat
colours), so an adapted candidate is not scored on what it was taught:

- ``crack``: a thin, jagged, sometimes branching line about twice the defect extent long (the surface's own texture
  darkened along it, or lit on a dark surface);
- ``spot``: an irregular blob whose brightness is scaled up or down, texture kept (a dent, a burn, a discolouring);
- ``smear``: an elongated soft region where the texture is wiped out and tinted (grease, a smudge);
- ``chip``: material missing at the object's edge, the background showing through.

Where the object is comes from the good images themselves (:func:`foreground_mask`: what differs from an image's
border in colour or texture, cut to where most images agree, :func:`object_masks`); when no estimate is plausible
(under 3% or over 97% of the image, e.g. a texture filling the frame) defects are painted anywhere. A defect's
extent is ``size`` times the object's shorter side (drawn in 0.5x..1.5x of it), so the defects scale with the
part, not with the picture around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["PROBE_KINDS", "ProbeSet", "foreground_mask", "object_masks", "paint_probe", "probe_set"]

PROBE_KINDS: tuple[str, ...] = ("crack", "spot", "smear", "chip")
MIN_CONTRAST = 12.0  # mean grey-level change inside a defect's mask; fainter draws are redrawn
_TRIES = 12


def foreground_mask(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: where the object is in ``img`` ``(H, W, 3)`` uint8, estimated from the image alone.

    A pixel is foreground when its (smoothed) Lab colour is farther from the border's median colour than nearly
    all border pixels are, or its local texture is much stronger than the border's; then holes are closed, specks
    opened away, and only components at least a quarter of the largest are kept. The border band is assumed to
    be background, as it is for parts photographed on a table, a belt or a fixture."""
    h, w = img.shape[:2]
    side = min(h, w)
    lab = cv2.cvtColor(cv2.GaussianBlur(img, (0, 0), max(1.0, side / 100)), cv2.COLOR_RGB2LAB).astype(np.float32)
    b = max(2, round(0.04 * side))
    band = np.zeros((h, w), bool)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True
    centre = np.median(lab[band], axis=0)
    dist = np.linalg.norm(lab - centre, axis=2)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    k = max(3, round(side / 40)) | 1
    mean = cv2.blur(grey, (k, k))
    spread = np.sqrt(np.maximum(cv2.blur(grey * grey, (k, k)) - mean * mean, 0.0))
    colour_edge = float(np.percentile(dist[band], 99)) + 1e-3
    texture_edge = 3.0 * float(np.median(spread[band])) + 1e-3
    mask = ((dist > colour_edge) | (spread > texture_edge)).astype(np.uint8)
    ks = max(3, round(side / 20)) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ks, ks))
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel), cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= 0.25 * areas.max())
    return np.isin(labels, keep)


def object_masks(images: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Each image's object mask and how many were found. Parts seen in one pose agree with one another: where at
    least half of the images' estimates agree forms a consensus, and each image's mask is cut to it (a shadow or
    a speck that one image mistakes for the part drops out). An implausible estimate (under 3% or over 97% of
    the image) falls back to the consensus, or to the whole image."""
    masks = [foreground_mask(im) for im in images]
    plausible = [0.03 <= float(m.mean()) <= 0.97 for m in masks]
    found = [m for m, ok in zip(masks, plausible, strict=True) if ok]
    consensus = np.mean(found, axis=0) >= 0.5 if found else None
    if consensus is not None and not 0.03 <= float(consensus.mean()) <= 0.97:
        consensus = None
    out = []
    for m, ok in zip(masks, plausible, strict=True):
        cut = m & consensus if ok and consensus is not None else m
        if ok and float(cut.mean()) >= 0.03:
            out.append(cut)
        elif consensus is not None:
            out.append(consensus)
        else:
            out.append(np.ones(m.shape, bool))
    return out, sum(plausible)


def _extent(fg: np.ndarray, size: float, rng: np.random.Generator) -> float:
    ys, xs = np.nonzero(fg)
    side = min(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    return max(4.0, float(side) * size * float(rng.uniform(0.5, 1.5)))


def _point_in(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(region)
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


def _crack(img: np.ndarray, fg: np.ndarray, rng: np.random.Generator, extent: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = fg.shape
    shape = np.zeros((h, w), np.uint8)
    thickness = max(1, round(min(h, w) / 300))
    branches = 1 + int(rng.random() < 0.5)
    start = _point_in(fg, rng)
    for _ in range(branches):
        x, y = float(start[0]), float(start[1])
        heading = rng.uniform(0, 2 * math.pi)
        step = max(1.5, extent / 12)
        pts = [(x, y)]
        while math.dist(pts[0], pts[-1]) < extent and len(pts) < 64:
            heading += rng.uniform(-0.9, 0.9)
            x, y = x + step * math.cos(heading), y + step * math.sin(heading)
            pts.append((min(max(x, 0), w - 1), min(max(y, 0), h - 1)))
        cv2.polylines(shape, [np.rint(np.array(pts)).astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
    alpha = shape.astype(np.float32) / 255.0
    src = img.astype(np.float32)
    if float(src[shape > 0].mean()) > 60.0:  # a dark fissure on a lit surface
        return src * rng.uniform(0.15, 0.45), alpha
    return src + rng.uniform(40.0, 80.0), alpha  # on a dark one, its lit edges show


def _blob(h: int, w: int, centre: tuple[int, int], extent: float, rng: np.random.Generator,
          aspect: float = 1.0) -> np.ndarray:
    shape = np.zeros((h, w), np.uint8)
    angle = float(rng.uniform(0, 180))
    for j in range(int(rng.integers(2, 5))):
        jitter = rng.uniform(-0.3, 0.3, size=2) * extent if j else np.zeros(2)
        c = (int(np.clip(centre[0] + jitter[0], 0, w - 1)), int(np.clip(centre[1] + jitter[1], 0, h - 1)))
        a = max(1, round(extent / 2 * rng.uniform(0.5, 1.0) * math.sqrt(aspect)))
        b = max(1, round(extent / 2 * rng.uniform(0.5, 1.0) / math.sqrt(aspect)))
        cv2.ellipse(shape, c, (a, b), angle + float(rng.uniform(-20, 20)), 0, 360, 1, -1)
    return shape


def _soft(shape: np.ndarray, extent: float) -> np.ndarray:
    """0..1 opacity: 1 inside, ramping down over the outer fifth of the blob, 0 outside it."""
    dist = cv2.distanceTransform(shape, cv2.DIST_L2, 3)
    return np.clip(dist / max(1.0, 0.2 * extent), 0.0, 1.0).astype(np.float32)


def _spot(img: np.ndarray, fg: np.ndarray, rng: np.random.Generator, extent: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = fg.shape
    shape = _blob(h, w, _point_in(fg, rng), extent, rng)
    src = img.astype(np.float32)
    darker = rng.random() < 0.5
    gain = rng.uniform(0.3, 0.6) if darker else rng.uniform(1.6, 2.4)
    target = src * gain + (0.0 if darker else rng.uniform(15.0, 40.0))
    return target, _soft(shape, extent)


def _smear(img: np.ndarray, fg: np.ndarray, rng: np.random.Generator, extent: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = fg.shape
    shape = _blob(h, w, _point_in(fg, rng), extent, rng, aspect=float(rng.uniform(3.0, 5.0)))
    src = img.astype(np.float32)
    wiped = cv2.GaussianBlur(src, (0, 0), max(1.0, extent / 4))
    tint = rng.uniform(-1.0, 1.0, size=3).astype(np.float32) * rng.uniform(10.0, 30.0)
    return wiped + tint, _soft(shape, extent) * float(rng.uniform(0.7, 1.0))


def _chip(img: np.ndarray, fg: np.ndarray, rng: np.random.Generator, extent: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = fg.shape
    edge = fg & ~cv2.erode(fg.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    where = edge if edge.any() else fg
    shape = _blob(h, w, _point_in(where, rng), extent, rng)
    background = ~fg
    src = img.astype(np.float32)
    if background.any() and not background.all():
        colour = np.median(src[background], axis=0)
        noise = float(np.std(src[background] - colour))
    else:  # no background to show: a dark cavity
        colour, noise = src[shape > 0].mean(axis=0) * 0.2, 3.0
    target = colour + rng.normal(0.0, max(noise, 1.0), size=src.shape).astype(np.float32)
    return target, shape.astype(np.float32)


_PAINTERS = {"crack": _crack, "spot": _spot, "smear": _smear, "chip": _chip}


def paint_probe(img: np.ndarray, fg: np.ndarray, rng: np.random.Generator, kind: str,
                size: float) -> tuple[np.ndarray, np.ndarray]:
    """One ``kind`` defect of extent ``size`` x the object's shorter side, on ``img`` ``(H, W, 3)`` uint8 inside
    the object ``fg`` ``(H, W)`` bool (cut to it): ``(defective copy, bool mask)``. Nothing outside the mask
    changes; the pixels inside move by at least :data:`MIN_CONTRAST` grey levels on average (redrawn until they do)."""
    if kind not in _PAINTERS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    if not 0 < size <= 1:
        raise ValueError(f"size must be in (0, 1] (a fraction of the object's shorter side), got {size}")
    if not fg.any():
        raise ValueError("the object mask is empty")
    src = img.astype(np.float32)
    for _ in range(_TRIES):
        target, alpha = _PAINTERS[kind](img, fg, rng, _extent(fg, size, rng))
        alpha = np.clip(alpha, 0.0, 1.0) * fg  # on the object only
        a = alpha[..., None]
        out = np.clip(np.rint(src * (1.0 - a) + target * a), 0, 255).astype(np.uint8)
        mask = (alpha > 0.05) & np.any(out != img, axis=2)
        if mask.any() and float(np.abs(out.astype(np.float32) - src)[mask].mean()) >= MIN_CONTRAST:
            out[~mask] = img[~mask]
            return out, mask
    raise ValueError(f"could not paint a visible {kind!r} defect of size {size} on this image in {_TRIES} tries; "
                     f"a larger size may be needed")


def _paint_some(img: np.ndarray, fg: np.ndarray, rng: np.random.Generator, j: int,
                size: float) -> tuple[str, np.ndarray, np.ndarray]:
    """The ``j``-th kind in turn, or the next one where it cannot be seen on this image (a chip where the part
    and its background have one colour)."""
    for step in range(len(PROBE_KINDS)):
        kind = PROBE_KINDS[(j + step) % len(PROBE_KINDS)]
        try:
            return (kind, *paint_probe(img, fg, rng, kind, size))
        except ValueError:
            continue
    raise ValueError(f"no probe defect of size {size} is visible on this image (a flat, featureless image?); "
                     f"a larger size may be needed")


@dataclass(frozen=True)
class ProbeSet:
    """Good images and copies of them with one probe defect each, all at one size."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    masks: np.ndarray  # (N, H, W) bool
    kinds: tuple[str, ...]  # "good" or the defect kind, per image
    objects_found: int  # good images whose object was found (the rest were painted anywhere)

    @property
    def is_anomaly(self) -> np.ndarray:
        return np.array([k != "good" for k in self.kinds])


def probe_set(images: list[np.ndarray], per_image: int = 4, size: float = 0.08, seed: int = 0) -> ProbeSet:
    """Each good image as it is plus ``per_image`` copies with one probe defect each (:data:`PROBE_KINDS` in
    turn, the next kind where one cannot be seen). ``images`` must share one size (resize them first)."""
    if not images:
        raise ValueError("no good images to paint on")
    if len({im.shape for im in images}) != 1:
        raise ValueError("the images differ in size; resize them to one size first")
    rng = np.random.default_rng(seed)
    out, masks, kinds = [], [], []
    regions, found = object_masks(images)
    for img, fg in zip(images, regions, strict=True):
        out.append(img)
        masks.append(np.zeros(img.shape[:2], bool))
        kinds.append("good")
        for j in range(per_image):
            kind, bad, mask = _paint_some(img, fg, rng, j, size)
            out.append(bad)
            masks.append(mask)
            kinds.append(kind)
    return ProbeSet(np.stack(out), np.stack(masks), tuple(kinds), found)
