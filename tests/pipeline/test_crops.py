from __future__ import annotations

import numpy as np

from pipeline.crops import crop_batch, square_boxes
from pipeline.types import Detections, Frame


def test_square_boxes_by_hand() -> None:
    out = square_boxes(np.array([[10, 20, 30, 60]], np.float32), padding=0.5)
    # centre (20, 40), longest side 40 -> 60
    np.testing.assert_allclose(out, [[-10, 10, 50, 70]])


def test_crops_are_rgb_at_encoder_size_and_edge_replicated() -> None:
    img = np.zeros((50, 80, 3), np.uint8)
    img[:, :, 2] = 200  # red in BGR
    img[10:20, 10:20] = (255, 0, 0)  # a blue square
    dets = Detections(np.array([[10, 10, 20, 20], [70, 40, 80, 50]]), np.ones(2), -np.ones(2))
    batch = crop_batch(Frame(0, 0.0, img), dets, (32, 32), padding=0.0)
    assert batch.images.shape == (2, 32, 32, 3)
    assert tuple(batch.images[0, 16, 16]) == (0, 0, 255)  # blue in RGB
    # The second box touches the right/bottom edges: padding beyond the frame replicates, so all red.
    assert tuple(batch.images[1, 16, 16]) == (200, 0, 0)
    assert len(crop_batch(Frame(0, 0.0, img), Detections.empty(), (32, 32))) == 0
