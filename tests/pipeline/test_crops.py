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


def test_box_crops_are_the_boxes_at_the_model_shape() -> None:
    from pipeline.crops import box_crop_batch

    img = np.zeros((100, 100, 3), np.uint8)
    img[20:80, 40:60] = (0, 255, 0)  # a green 'person' 20 wide, 60 tall
    dets = Detections(np.array([[40, 20, 60, 80], [90, 50, 110, 90]]), np.ones(2), -np.ones(2))
    batch = box_crop_batch(Frame(0, 0.0, img), dets, (64, 32))
    assert batch.images.shape == (2, 64, 32, 3)
    assert (batch.images[0] == (0, 255, 0)).all()  # the box alone: no background around it
    np.testing.assert_allclose(batch.xyxy, dets.xyxy)
    assert (batch.images[1] == 0).all()  # beyond the right edge: the border (black) replicated
