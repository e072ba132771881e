"""Cut detections out of a frame at an encoder's input size: square, context-padded crops (parts), or the boxes
themselves (people, for a re-identification model)."""

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
    """One RGB crop per detection, ``(N, H, W, 3)`` uint8 with ``(H, W) = size``, cut from a square region
    centred on the box (:func:`square_boxes`).

    Regions that leave the frame are filled by replicating the border, so parts entering the view keep
    their aspect ratio instead of being stretched.
    """
    regions = square_boxes(detections.xyxy, padding) if len(detections) else np.zeros((0, 4), np.float32)
    return cut_regions(frame, regions, size)


def box_crop_batch(frame: Frame, detections: Detections, size: tuple[int, int]) -> CropBatch:
    """One RGB crop per detection box itself, resized to ``size`` ``(H, W)`` whatever the box's aspect: what a
    person re-identification model is trained on (Market-1501's crops are boxes resized to 128 x 64). A box
    that leaves the frame is filled by replicating the border."""
    regions = np.asarray(detections.xyxy, np.float32).reshape(-1, 4)
    return cut_regions(frame, regions, size)


def cut_regions(frame: Frame, regions: np.ndarray, size: tuple[int, int]) -> CropBatch:
    """The ``(N, 4)`` xyxy ``regions`` of ``frame`` resized to ``size`` ``(H, W)``, RGB; outside the frame the
    border is replicated."""
    h, w = size
    out = np.empty((len(regions), h, w, 3), np.uint8)
    img = frame.image
    for i, (x1, y1, x2, y2) in enumerate(regions):
        xi1, yi1 = int(np.floor(x1)), int(np.floor(y1))
        xi2, yi2 = max(int(np.ceil(x2)), xi1 + 1), max(int(np.ceil(y2)), yi1 + 1)
        top, left = max(0, -yi1), max(0, -xi1)
        bottom, right = max(0, yi2 - frame.height), max(0, xi2 - frame.width)
        patch = img[max(0, min(yi1, frame.height - 1)):min(frame.height, yi2),
                    max(0, min(xi1, frame.width - 1)):min(frame.width, xi2)]
        if top or left or bottom or right:
            patch = np.asarray(cv2.copyMakeBorder(patch, top, bottom, left, right, cv2.BORDER_REPLICATE), np.uint8)
        interp = cv2.INTER_AREA if patch.shape[0] > h else cv2.INTER_LINEAR
        out[i] = np.asarray(cv2.cvtColor(cv2.resize(patch, (w, h), interpolation=interp), cv2.COLOR_BGR2RGB))
    return CropBatch(out, regions)
