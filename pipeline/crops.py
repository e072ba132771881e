"""Cut detections out of a frame as square, context-padded crops at the encoder's input size."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.types import CropBatch, Detections, Frame


def square_boxes(xyxy: np.ndarray, padding: float) -> np.ndarray:
    """Square regions centred on each box, side = longest side * (1 + padding). ``(N, 4)`` xyxy float32."""
    cx = (xyxy[:, 0] + xyxy[:, 2]) / 2
    cy = (xyxy[:, 1] + xyxy[:, 3]) / 2
    side = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]) * (1.0 + padding)
    half = np.maximum(side, 2.0) / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1).astype(np.float32)


def crop_batch(frame: Frame, detections: Detections, size: tuple[int, int], padding: float = 0.1) -> CropBatch:
    """One RGB crop per detection, ``(N, H, W, 3)`` uint8 with ``(H, W) = size``.

    Regions that leave the frame are filled by replicating the border, so parts entering the view keep
    their aspect ratio instead of being stretched.
    """
    h, w = size
    regions = square_boxes(detections.xyxy, padding) if len(detections) else np.zeros((0, 4), np.float32)
    out = np.empty((len(regions), h, w, 3), np.uint8)
    img = frame.image
    for i, (x1, y1, x2, y2) in enumerate(regions):
        xi1, yi1, xi2, yi2 = int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2))
        top, left = max(0, -yi1), max(0, -xi1)
        bottom, right = max(0, yi2 - frame.height), max(0, xi2 - frame.width)
        patch = img[max(0, yi1):min(frame.height, yi2), max(0, xi1):min(frame.width, xi2)]
        if top or left or bottom or right:
            patch = np.asarray(cv2.copyMakeBorder(patch, top, bottom, left, right, cv2.BORDER_REPLICATE), np.uint8)
        interp = cv2.INTER_AREA if patch.shape[0] > h else cv2.INTER_LINEAR
        out[i] = np.asarray(cv2.cvtColor(cv2.resize(patch, (w, h), interpolation=interp), cv2.COLOR_BGR2RGB))
    return CropBatch(out, regions)
