"""The vectors the tracker compares: the whole crop's embedding, or the patch features inside the box."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tracking.appearance import box_cell_weights, box_pooled, check_region, tracking_embeddings
from pipeline.types import Embeddings

REGION = np.array([[0.0, 0.0, 4.0, 4.0]], np.float32)  # a 4x4 px crop region: on a 2x2 grid, cells of 2x2 px


@pytest.mark.parametrize(("box", "weights"), [
    ([0, 0, 4, 4], [1, 1, 1, 1]),  # the whole region
    ([0, 0, 2, 4], [1, 0, 1, 0]),  # the left column of cells
    ([1, 0, 3, 4], [0.5, 0.5, 0.5, 0.5]),  # half of every cell
    ([0, 0, 1, 1], [0.25, 0, 0, 0]),  # a quarter of the top-left cell
    ([-5, -5, 10, 10], [1, 1, 1, 1]),  # larger than the region: every cell whole, no more
    ([10, 10, 12, 12], [1, 1, 1, 1]),  # outside the region: the whole region rather than nothing
])
def test_cell_weights_are_the_covered_fraction_of_each_cell(box: list[float], weights: list[float]) -> None:
    got = box_cell_weights(REGION, np.array([box], np.float32), (2, 2))
    assert got.shape == (1, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], weights, atol=1e-6)


def test_cell_weights_of_a_person_in_a_square_crop() -> None:
    # A 20x46 px box in the square region the crop code cuts around it (side 46 * 1.1): on the 8x8 grid only the
    # middle columns count, and every row does (the top and bottom ones in part).
    box = np.array([[100.0, 50.0, 120.0, 96.0]], np.float32)
    side = 46 * 1.1
    region = np.array([[110 - side / 2, 73 - side / 2, 110 + side / 2, 73 + side / 2]], np.float32)
    w = box_cell_weights(region, box, (8, 8)).reshape(8, 8)
    assert (w[:, :2] == 0).all() and (w[:, 6:] == 0).all()  # background columns left out
    assert (w[1:7, 3:5] == 1).all() and (w[[0, 7], 3:5] > 0.5).all()  # the box's middle columns
    assert w.sum() == pytest.approx(64 * (20 * 46) / side**2, rel=1e-5)  # the box's area in cells


def test_cell_weights_on_a_grid_of_two_rows_and_three_columns() -> None:
    region = np.array([[0.0, 0.0, 6.0, 4.0]], np.float32)  # cells of 2x2 px, row-major: (0,0) (0,1) (0,2) (1,0) ...
    np.testing.assert_allclose(box_cell_weights(region, np.array([[2, 0, 4, 4]], np.float32), (2, 3))[0],
                               [0, 1, 0, 0, 1, 0])  # the middle column
    np.testing.assert_allclose(box_cell_weights(region, np.array([[0, 2, 6, 4]], np.float32), (2, 3))[0],
                               [0, 0, 0, 1, 1, 1])  # the bottom row


def test_cell_weights_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="one region per box"):
        box_cell_weights(REGION, np.zeros((2, 4), np.float32), (2, 2))
    with pytest.raises(ValueError, match="grid"):
        box_cell_weights(REGION, REGION, (0, 2))


def _left_right(n: int = 1) -> Embeddings:
    """A 2x2 grid whose left cells hold e0 and right cells e1 (3 channels)."""
    patches = np.zeros((n, 4, 3), np.float32)
    patches[:, [0, 2], 0] = 2.0
    patches[:, [1, 3], 1] = 2.0
    return Embeddings(np.ones((n, 5), np.float32) / np.sqrt(5), patches, (2, 2))


def test_box_pooling_describes_what_is_inside_the_box() -> None:
    emb = _left_right(3)
    boxes = np.array([[0, 0, 2, 4], [2, 0, 4, 4], [1, 0, 4, 4]], np.float32)
    out = box_pooled(emb, np.repeat(REGION, 3, axis=0), boxes)
    assert out.patches is None and out.vectors.shape == (3, 3)
    np.testing.assert_allclose(out.vectors[0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out.vectors[1], [0, 1, 0], atol=1e-6)
    # covers half of the left cells and all of the right ones: 1 : 2
    np.testing.assert_allclose(out.vectors[2], np.array([1, 2, 0]) / np.sqrt(5), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-6)


def test_box_pooling_uses_the_whole_pixels_cut_and_leaves_out_what_is_beyond_the_frame() -> None:
    emb = _left_right()
    # the crop was cut from floor(0.4) = 0 to ceil(3.6) = 4: the grid spans 0..4, so 0..2 is the left column
    left = box_pooled(emb, np.array([[0.4, 0.4, 3.6, 3.6]], np.float32), np.array([[0, 0, 2, 4]], np.float32))
    np.testing.assert_allclose(left.vectors[0], [1, 0, 0], atol=1e-6)
    # a box reaching past the frame's right edge at x = 2: the right column is replicated border, not the object
    edge = np.array([[0, 0, 4, 4]], np.float32)
    np.testing.assert_allclose(box_pooled(emb, REGION, edge, frame_size=(2, 10)).vectors[0], [1, 0, 0], atol=1e-6)
    assert box_pooled(emb, REGION, edge).vectors[0, 1] > 0.5  # without the frame size both columns count


def test_box_pooling_keeps_crops_that_were_not_embedded_empty() -> None:
    emb = _left_right(2)
    vectors = emb.vectors.copy()
    vectors[1] = 0.0  # the tracker's mark of a detection without an embedding
    out = box_pooled(Embeddings(vectors, emb.patches, emb.grid), np.repeat(REGION, 2, axis=0),
                     np.repeat(REGION, 2, axis=0))
    assert np.linalg.norm(out.vectors[0]) == pytest.approx(1.0) and not out.vectors[1].any()


def test_box_pooling_of_no_crops_and_of_an_encoder_without_patches() -> None:
    empty = Embeddings(np.zeros((0, 5), np.float32), np.zeros((0, 4, 3), np.float32), (2, 2))
    assert box_pooled(empty, np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)).vectors.shape == (0, 3)
    with pytest.raises(ValueError, match="patches"):
        box_pooled(Embeddings(np.ones((1, 5), np.float32)), REGION, REGION)


def test_tracking_embeddings_by_region() -> None:
    emb = _left_right()
    assert tracking_embeddings(emb, REGION, REGION, "crop") is emb
    assert tracking_embeddings(emb, REGION, REGION, "box").dim == 3
    with pytest.raises(ValueError, match="crop, box"):
        tracking_embeddings(emb, REGION, REGION, "mask")


def test_box_region_needs_a_patch_output() -> None:
    check_region("crop", (0, 0))
    check_region("box", (8, 8))
    with pytest.raises(ValueError, match=r'appearance_region = "crop".*patch_stage > 0'):
        check_region("box", (0, 0))
    with pytest.raises(ValueError, match="crop, box"):
        check_region("boxes", (8, 8))
