from __future__ import annotations

import numpy as np

from pipeline.detect.background import BackgroundSubtractionDetector
from pipeline.tracking.matching import iou_matrix
from pipeline.types import Frame


def scene(i: int, rng: np.random.Generator) -> tuple[Frame, list[list[int]]]:
    """Grey noisy belt, two parts moving right 3 px per frame."""
    img = (110 + rng.normal(0, 2, (120, 200, 3))).clip(0, 255).astype(np.uint8)
    boxes = [[10 + 3 * i, 20, 40 + 3 * i, 50], [5 + 3 * i, 70, 45 + 3 * i, 100]]
    img[20:50, 10 + 3 * i:40 + 3 * i] = (40, 40, 200)
    img[70:100, 5 + 3 * i:45 + 3 * i] = (220, 220, 220)
    return Frame(i, i / 20, img), boxes


def test_finds_moving_parts_after_warmup() -> None:
    rng = np.random.default_rng(0)
    det = BackgroundSubtractionDetector(warmup_frames=3, min_area=100)
    bg = BackgroundSubtractionDetector(warmup_frames=3, min_area=100)
    for i in range(5):  # learn the empty belt first
        empty = Frame(i, i / 20, (110 + rng.normal(0, 2, (120, 200, 3))).clip(0, 255).astype(np.uint8))
        assert len(det.detect(empty)) == 0
    hits = 0
    for i in range(20):
        frame, truth = scene(i, rng)
        d = det.detect(frame)
        if len(d) == 2:
            iou = iou_matrix(np.array(truth, np.float32), d.xyxy)
            hits += int((iou.max(axis=1) > 0.7).all())
        assert np.all(d.confidence == 1.0)  # no score from background subtraction: every blob counts
    assert hits >= 18
    assert len(bg.detect(scene(0, rng)[0])) == 0  # warm-up frames give nothing


def test_reset_forgets_background() -> None:
    rng = np.random.default_rng(1)
    det = BackgroundSubtractionDetector(warmup_frames=0, min_area=100)
    for i in range(3):
        det.detect(scene(i, rng)[0])
    det.reset()
    # A fresh background model: the warm-up starts again and the frames already seen are forgotten.
    rng2 = np.random.default_rng(1)
    fresh = BackgroundSubtractionDetector(warmup_frames=2, min_area=100)
    det.warmup_frames = 2
    for i in range(6):
        frame = scene(i, rng2)[0]
        a, b = det.detect(frame), fresh.detect(frame)
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
    assert det._seen == 6
