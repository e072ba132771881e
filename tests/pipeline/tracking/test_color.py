"""Colour descriptors of boxes, and their place in the tracker's appearance vectors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import TrackerConfig
from pipeline.tracking.appearance import tracking_embeddings, with_color
from pipeline.tracking.color import color_dim, color_histograms
from pipeline.tracking.matching import cosine_distance_matrix
from pipeline.tracking.tracker import Tracker
from pipeline.types import Detections, Embeddings, TrackState

RED, BLUE, GREEN, GREY = (0, 0, 200), (200, 0, 0), (0, 200, 0), (128, 128, 128)  # BGR


def canvas(h: int = 120, w: int = 200) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def person(img: np.ndarray, x: int, top: tuple[int, int, int], bottom: tuple[int, int, int],
           y: int = 10, w: int = 20, h: int = 80) -> list[float]:
    """Paint a two-colour figure (upper and lower half) and return its xyxy box."""
    img[y:y + h // 2, x:x + w] = top
    img[y + h // 2:y + h, x:x + w] = bottom
    return [x, y, x + w, y + h]


def dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosine_distance_matrix(a[None], b[None])[0, 0])


def test_descriptors_are_unit_vectors_that_tell_colours_apart_wherever_the_box_is() -> None:
    img = canvas()
    boxes = [person(img, 10, RED, BLUE), person(img, 60, RED, BLUE), person(img, 110, GREEN, GREEN)]
    h = color_histograms(img, boxes)
    assert h.shape == (3, color_dim()) and h.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0, atol=1e-6)
    assert dist(h[0], h[1]) < 1e-6  # same clothes, another place
    assert dist(h[0], h[2]) > 0.9  # no colour in common


def test_stripes_keep_what_is_worn_above_and_below() -> None:
    img = canvas()
    a = person(img, 10, RED, BLUE)
    b = person(img, 60, BLUE, RED)
    assert dist(*color_histograms(img, [a, b])) > 0.9
    assert dist(*color_histograms(img, [a, b], stripes=1)) < 1e-6  # one histogram: the same colours


def test_the_inset_leaves_out_the_background_at_the_sides_of_the_box() -> None:
    img = canvas()
    tight = person(img, 10, RED, RED, w=20)
    img[:, 100:140] = GREEN
    img[10:90, 108:132] = RED  # a red figure 24 px wide in a box 40 px wide on green
    loose = [100, 10, 140, 90]
    assert dist(*color_histograms(img, [tight, loose])) < 0.02
    assert dist(*color_histograms(img, [tight, loose], inset=(0.0, 0.1))) > 0.2


def test_boxes_are_clipped_to_the_image_and_boxes_outside_it_have_no_colour() -> None:
    img = canvas()
    inside = person(img, 0, RED, BLUE)
    h = color_histograms(img, [inside, [-10, 10, 20, 90], [300, 10, 320, 90]])
    assert dist(h[0], h[1]) < 0.05
    assert not h[2].any()
    assert color_histograms(img, np.zeros((0, 4))).shape == (0, color_dim())


def test_bad_images_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) BGR"):
        color_histograms(np.zeros((10, 10), np.uint8), [[0, 0, 5, 5]])
    with pytest.raises(ValueError, match="stripes"):
        color_histograms(canvas(), [[0, 0, 5, 5]], stripes=0)
    with pytest.raises(ValueError, match="inset"):
        color_histograms(canvas(), [[0, 0, 5, 5]], inset=(0.5, 0.1))


def test_joined_vectors_give_the_weighted_sum_of_the_two_distances() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(4, 6)).astype(np.float32)
    c = np.abs(rng.normal(size=(4, 5))).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    for w in (0.0, 0.3, 1.0):
        joined = with_color(Embeddings(e), c, w).vectors
        np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1.0, atol=1e-6)
        expected = (1 - w) * cosine_distance_matrix(e, e) + w * cosine_distance_matrix(c, c)
        np.testing.assert_allclose(cosine_distance_matrix(joined, joined), expected, atol=1e-5)


def test_rows_without_an_embedding_stay_empty_and_bad_inputs_are_refused() -> None:
    e = np.array([[1, 0, 0], [0, 0, 0]], np.float32)
    c = np.array([[1, 0], [0, 1]], np.float32)
    joined = with_color(Embeddings(e), c, 0.5).vectors
    assert joined.shape == (2, 5) and joined[0].any() and not joined[1].any()
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        with_color(Embeddings(e), c, 1.5)
    with pytest.raises(ValueError, match="one row per embedding"):
        with_color(Embeddings(e), c[:1], 0.5)
    with pytest.raises(ValueError, match="frame image"):
        tracking_embeddings(Embeddings(e), e, e, "crop", color_weight=0.5)


def test_colour_keeps_two_look_alike_shapes_apart_where_motion_cannot_tell() -> None:
    """Two figures with the same embedding walk towards each other and swap sides in one step (a crossing
    seen at a low frame rate): by position alone each track takes the nearer box, the other figure; with
    colour each keeps its own."""
    ids: dict[float, list[tuple[int, tuple[int, int, int]]]] = {}
    for weight in (0.0, 0.5):
        tracker = Tracker(TrackerConfig(min_hits=1, min_iou=0.0, max_mahalanobis=0.0, max_cost=2.0,
                                        max_cosine_distance=2.0))
        seen = []
        for t, (xr, xb) in enumerate([(40, 100), (56, 84), (84, 56)]):
            img = canvas()
            boxes = [person(img, xr, RED, RED, w=30), person(img, xb, BLUE, BLUE, w=30)]
            d = Detections(np.array(boxes, np.float32), np.ones(2), -np.ones(2))
            same = Embeddings(np.ones((2, 4), np.float32))
            vec = tracking_embeddings(same, d.xyxy, d.xyxy, "crop", image=img, color_weight=weight)
            out = tracker.update(d, vec, t / 7.0)
            seen.append({o.detection_index: o.track_id for o in out.observations if o.state is TrackState.CONFIRMED})
        ids[weight] = [(s[0], RED) for s in seen] + [(s[1], BLUE) for s in seen]
    with_colour = ids[0.5]
    assert len({tid for tid, c in with_colour if c == RED}) == 1  # the red figure kept one id
    assert len({tid for tid, c in with_colour if c == BLUE}) == 1
    assert len({tid for tid, c in ids[0.0] if c == RED}) == 2  # by motion alone it took the blue one's
