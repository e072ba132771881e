"""Detection by background subtraction (OpenCV MOG2) for fixed cameras."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.types import Detections, Frame


class BackgroundSubtractionDetector:
    """Foreground blobs of a fixed camera as boxes.

    MOG2 foreground mask -> morphological open (removes noise) and close (fills parts) -> external
    contours -> boxes filtered by area and side. Confidence is the fraction of foreground pixels in the box.
    The first ``warmup_frames`` frames only train the background model and return no detections.
    """

    def __init__(self, history: int = 300, var_threshold: float = 32.0, learning_rate: float = 0.0005,
                 warmup_frames: int = 5, min_area: int = 400, max_area_fraction: float = 0.5,
                 min_side: int = 12, open_kernel: int = 7, close_kernel: int = 15) -> None:
        if history < 1 or var_threshold <= 0 or min_area < 1:
            raise ValueError("history and min_area must be >= 1, var_threshold > 0")
        self.history = history
        self.var_threshold = var_threshold
        self.learning_rate = learning_rate
        self.warmup_frames = warmup_frames
        self.min_area = min_area
        self.max_area_fraction = max_area_fraction
        self.min_side = min_side
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_kernel, open_kernel))
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_kernel, close_kernel))
        self.reset()

    def reset(self) -> None:
        self._mog = cv2.createBackgroundSubtractorMOG2(history=self.history, varThreshold=self.var_threshold,
                                                       detectShadows=False)
        self._seen = 0

    def foreground(self, frame: Frame) -> np.ndarray:
        """Cleaned binary foreground mask ``(H, W)`` uint8 {0, 255}."""
        mask = self._mog.apply(frame.image, learningRate=self.learning_rate)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close)

    def detect(self, frame: Frame) -> Detections:
        mask = self.foreground(frame)
        self._seen += 1
        if self._seen <= self.warmup_frames:
            return Detections.empty()
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        max_area = self.max_area_fraction * frame.height * frame.width
        boxes = []
        for x, y, w, h, area in stats[1:n]:
            if area < self.min_area or w * h > max_area or min(w, h) < self.min_side:
                continue
            boxes.append((x, y, x + w, y + h))
        if not boxes:
            return Detections.empty()
        # Background subtraction has no detection score: every blob that passes the filters is a detection,
        # with confidence 1. (Its fill ratio is no score: a washer, a bracket or a part with a hole fills
        # little of its box, and the tracker's score thresholds would drop exactly those.)
        return Detections(np.asarray(boxes, np.float32), np.ones(len(boxes), np.float32),
                          np.full(len(boxes), -1, np.int64))
