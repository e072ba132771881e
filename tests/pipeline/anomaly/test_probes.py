from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.anomaly.probes import MIN_CONTRAST, PROBE_KINDS, foreground_mask, object_masks, paint_probe, probe_set


def _disc(seed: int, centre: tuple[int, int] = (64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A textured grey disc on dark cloth, RGB, and where the disc is."""
    rng = np.random.default_rng(seed)
    img = rng.integers(10, 30, size=(128, 128, 3)).astype(np.uint8)
    truth = np.zeros((128, 128), np.uint8)
    cv2.circle(truth, centre, 40, 1, -1)
    surface = rng.integers(80, 140, size=(128, 128, 3)).astype(np.uint8)
    img[truth > 0] = surface[truth > 0]
    return img, truth > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_the_object_is_found_on_its_background() -> None:
    img, truth = _disc(0)
    assert _iou(foreground_mask(img), truth) > 0.85


def test_a_speck_one_image_mistakes_for_the_part_is_cut_by_the_others() -> None:
    images, truths = zip(*(_disc(s) for s in range(5)), strict=True)
    odd = images[0].copy()
    cv2.rectangle(odd, (2, 100), (20, 120), (200, 200, 200), -1)  # a bright label on the cloth of one image
    masks, found = object_masks([odd, *images[1:]])
    assert found == 5
    assert not masks[0][100:121, 2:21].any()
    assert all(_iou(m, t) > 0.85 for m, t in zip(masks, truths, strict=True))


def test_probe_defects_lie_on_the_object_and_change_nothing_else() -> None:
    images, truths = zip(*(_disc(s) for s in range(4)), strict=True)
    ps = probe_set(list(images), per_image=4, size=0.15, seed=3)
    assert ps.kinds[:5] == ("good", *PROBE_KINDS) and len(ps.kinds) == 20
    assert ps.objects_found == 4
    for i, kind in enumerate(ps.kinds):
        src = images[i // 5]
        mask = ps.masks[i]
        if kind == "good":
            assert not mask.any() and np.array_equal(ps.images[i], src)
            continue
        grown = cv2.dilate(truths[i // 5].astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert mask.any() and not (mask & ~grown).any(), kind  # on the part (as estimated: within 3 px of it)
        assert np.array_equal(ps.images[i][~mask], src[~mask]), kind
        change = np.abs(ps.images[i].astype(np.float32) - src.astype(np.float32))[mask].mean()
        assert change >= MIN_CONTRAST, kind
    again = probe_set(list(images), per_image=4, size=0.15, seed=3)
    assert np.array_equal(again.images, ps.images) and np.array_equal(again.masks, ps.masks)


def test_defects_scale_with_the_object_not_the_picture() -> None:
    img, truth = _disc(1)
    rng = np.random.default_rng(0)
    small = [paint_probe(img, truth, rng, "spot", 0.05)[1].sum() for _ in range(20)]
    large = [paint_probe(img, truth, rng, "spot", 0.2)[1].sum() for _ in range(20)]
    assert np.median(large) > 4 * np.median(small)


def test_a_frame_filling_texture_is_painted_anywhere() -> None:
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, size=(96, 96, 3)).astype(np.uint8)
    texture = cv2.GaussianBlur(texture, (0, 0), 1.5)
    ps = probe_set([texture, texture.copy()], per_image=2, size=0.1, seed=0)
    assert ps.objects_found == 0 and ps.is_anomaly.sum() == 4


@pytest.mark.parametrize(("kind", "size", "message"), [("dent", 0.1, "kind must be one of"),
                                                         ("spot", 0.0, "size must be in"),
                                                         ("spot", 1.5, "size must be in")])
def test_bad_arguments(kind: str, size: float, message: str) -> None:
    img, truth = _disc(0)
    with pytest.raises(ValueError, match=message):
        paint_probe(img, truth, np.random.default_rng(0), kind, size)
