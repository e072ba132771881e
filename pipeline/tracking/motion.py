"""Camera-motion compensation (CMC): the 2x3 affine warp that maps the previous frame onto the current one.

A moving or shaking camera moves every box; the tracker applies this warp to the Kalman states of all tracks
before association (BoT-SORT's GMC). Methods:

- ``none``: identity (fixed cameras).
- ``sparse``: corners (``cv2.goodFeaturesToTrack``) of the previous frame followed by pyramidal Lucas-Kanade
  optical flow (``cv2.calcOpticalFlowPyrLK``) and a RANSAC similarity fit (``cv2.estimateAffinePartial2D``).
  Corners inside detection boxes are left out, so moving objects do not pull the estimate.
- ``ecc``: ``cv2.findTransformECC`` with a Euclidean (rotation + translation) model; slower, no keypoints.

Frames are downscaled by ``downscale`` before estimation; the returned warp is in full-resolution pixels.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

CMC_METHODS = ("none", "sparse", "ecc")
Warp = npt.NDArray[np.float64]


def identity_warp() -> Warp:
    """The ``(2, 3)`` float64 warp that moves nothing."""
    return np.eye(2, 3, dtype=np.float64)


def to_gray(image: np.ndarray, downscale: float = 1.0) -> np.ndarray:
    """``(H, W, 3)`` BGR or ``(H, W)`` uint8 -> ``(H / downscale, W / downscale)`` uint8 grey."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if img.ndim != 2:
        raise ValueError(f"camera motion: image must be (H, W) or (H, W, 3), got {np.asarray(image).shape}")
    if downscale > 1.0:
        h, w = img.shape
        img = cv2.resize(img, (max(1, round(w / downscale)), max(1, round(h / downscale))),
                         interpolation=cv2.INTER_AREA)
    return img


def feature_mask(shape: tuple[int, int], exclude_xyxy: npt.ArrayLike | None = None, scale: float = 1.0,
                 border: float = 0.02) -> np.ndarray:
    """``(H, W)`` uint8 mask, 255 where corners may be taken: inside a ``border`` margin (fraction of each
    side) and outside every box of ``exclude_xyxy`` (``(N, 4)`` full-resolution xyxy, divided by ``scale``)."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    by, bx = int(border * h), int(border * w)
    mask[by:h - by, bx:w - bx] = 255
    if exclude_xyxy is not None:
        boxes = np.asarray(exclude_xyxy, np.float64).reshape(-1, 4) / scale
        for x1, y1, x2, y2 in boxes:
            mask[max(0, int(y1)):max(0, int(np.ceil(y2))), max(0, int(x1)):max(0, int(np.ceil(x2)))] = 0
    return mask


def detect_corners(gray: np.ndarray, mask: np.ndarray | None = None, max_corners: int = 1000) -> np.ndarray:
    """``(K, 1, 2)`` float32 corners of a grey image (BoT-SORT's parameters), ``(0, 1, 2)`` when none."""
    pts = cv2.goodFeaturesToTrack(gray, maxCorners=max_corners, qualityLevel=0.01, minDistance=1, blockSize=3,
                                  mask=mask, useHarrisDetector=False, k=0.04)
    return np.zeros((0, 1, 2), np.float32) if pts is None else pts.astype(np.float32)


def estimate_sparse(prev_gray: np.ndarray, gray: np.ndarray, prev_corners: np.ndarray,
                    min_matches: int = 10) -> Warp | None:
    """Similarity warp prev -> current from corners of ``prev_gray`` tracked into ``gray`` by LK flow.

    Returns:
        ``(2, 3)`` float64 in the images' pixel coordinates, or None when too few corners were tracked or
        the fit failed.
    """
    if len(prev_corners) < min_matches:
        return None
    nxt, status, _ = cv2.calcOpticalFlowPyrLK(prev_gray, gray, prev_corners, None)
    if nxt is None or status is None:
        return None
    ok = status.reshape(-1).astype(bool)
    if int(ok.sum()) < min_matches:
        return None
    affine, inliers = cv2.estimateAffinePartial2D(prev_corners[ok], nxt[ok], method=cv2.RANSAC)
    if affine is None or inliers is None or int(inliers.sum()) < min_matches:
        return None
    return np.asarray(affine, np.float64)


def estimate_ecc(prev_gray: np.ndarray, gray: np.ndarray, iterations: int = 100, eps: float = 1e-5,
                 min_side: int = 100) -> Warp | None:
    """Euclidean warp prev -> current maximising the ECC criterion, coarse to fine over an image pyramid
    (ECC alone converges only for shifts of a few pixels). None when no level converges."""
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps)
    pyramid = [(prev_gray, gray)]
    while min(pyramid[-1][0].shape) >= 2 * min_side and len(pyramid) < 5:
        pyramid.append((cv2.pyrDown(pyramid[-1][0]), cv2.pyrDown(pyramid[-1][1])))
    affine = np.eye(2, 3, dtype=np.float32)
    converged = False
    for level, (a, b) in enumerate(reversed(pyramid)):
        if level:
            affine[:, 2] *= 2  # one level finer: translation in twice as many pixels
        try:
            _, affine = cv2.findTransformECC(a, b, affine, cv2.MOTION_EUCLIDEAN, criteria,  # type: ignore[call-overload]
                                                None, 5)
            converged = True
        except cv2.error as exc:
            log.debug("ECC camera motion did not converge at pyramid level %d: %s", level, exc)
    return np.asarray(affine, np.float64) if converged else None


def upscale_warp(affine: Warp, downscale: float) -> Warp:
    """A warp estimated on images shrunk by ``downscale`` -> the same warp in full-resolution pixels."""
    out = np.asarray(affine, np.float64).copy()
    out[:, 2] *= max(downscale, 1.0)
    return out


class CameraMotion:
    """Estimates the camera's motion frame to frame. ``estimate()`` once per frame, in order; ``reset()`` to reuse.

    Args:
        method: one of :data:`CMC_METHODS`.
        downscale: frames are shrunk by this factor (>= 1) before estimation.
    """

    def __init__(self, method: str = "sparse", downscale: float = 2.0) -> None:
        if method not in CMC_METHODS:
            raise ValueError(f"camera motion method must be one of {', '.join(CMC_METHODS)}, got {method!r}")
        if not downscale >= 1.0:
            raise ValueError(f"camera motion downscale must be >= 1, got {downscale}")
        self.method = method
        self.downscale = float(downscale)
        self.reset()

    def reset(self) -> None:
        self._prev: np.ndarray | None = None
        self._prev_corners = np.zeros((0, 1, 2), np.float32)

    def estimate(self, image: np.ndarray, exclude_xyxy: npt.ArrayLike | None = None) -> Warp:
        """Warp from the previous frame given to ``image`` (identity for the first frame, after a size change,
        or when estimation fails).

        Args:
            image: ``(H, W, 3)`` uint8 BGR or ``(H, W)`` grey frame.
            exclude_xyxy: ``(N, 4)`` boxes of moving objects in ``image`` (full resolution); no corners are
                taken inside them.

        Returns:
            ``(2, 3)`` float64 affine in full-resolution pixels: a point ``p`` of the previous frame is at
            ``A[:, :2] @ p + A[:, 2]`` in this one.
        """
        if self.method == "none":
            return identity_warp()
        gray = to_gray(image, self.downscale)
        prev, prev_corners = self._prev, self._prev_corners
        self._prev = gray
        if self.method == "sparse":
            self._prev_corners = detect_corners(gray, feature_mask(gray.shape, exclude_xyxy, self.downscale))
        if prev is None or prev.shape != gray.shape:
            return identity_warp()
        affine = estimate_sparse(prev, gray, prev_corners) if self.method == "sparse" else estimate_ecc(prev, gray)
        if affine is None:
            log.debug("camera motion (%s): estimation failed; assuming a still camera for this frame", self.method)
            return identity_warp()
        return upscale_warp(affine, self.downscale)
