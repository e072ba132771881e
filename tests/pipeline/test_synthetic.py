from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from pipeline.synthetic import (
    DEFECTS,
    KINDS,
    PartSprite,
    ProductionLineScene,
    SceneConfig,
    render_part,
)
from pipeline.tracking.matching import iou_matrix
from pipeline.types import Frame

BELT = (58.0, 60.0, 63.0)


@pytest.fixture(scope="module")
def scene() -> ProductionLineScene:
    return ProductionLineScene(SceneConfig())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(iou_matrix(a[None], b[None])[0, 0])


def _on_belt(sprite: PartSprite) -> np.ndarray:
    return sprite.over(np.full(sprite.bgr.shape, BELT, np.float32))


# ------------------------------------------------------------------------------------------- records


def test_frames_are_records_of_the_configured_size() -> None:
    cfg = SceneConfig(num_frames=12, width=320, height=200, fps=25.0)
    sc = ProductionLineScene(cfg)
    frames = list(sc)
    assert len(sc) == 12 and len(frames) == 12
    for i, f in enumerate(frames):
        assert isinstance(f, Frame)
        assert f.index == i and f.timestamp == pytest.approx(i / 25.0)
        assert f.image.shape == (200, 320, 3) and f.image.dtype == np.uint8


def test_same_seed_gives_identical_frames_and_parts() -> None:
    cfg = SceneConfig(num_frames=120, seed=7)
    a, b = ProductionLineScene(cfg), ProductionLineScene(cfg)
    assert a.parts == b.parts
    first = [f.image for f in a]
    again = [f.image for f in a]  # iterating twice replays the same video
    other = [f.image for f in b]
    for x, y, z in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    np.testing.assert_array_equal(a.render(77).image, first[77])


def test_different_seed_gives_a_different_scene() -> None:
    a = ProductionLineScene(SceneConfig(num_frames=100, seed=1))
    b = ProductionLineScene(SceneConfig(num_frames=100, seed=2))
    assert a.parts != b.parts
    diff = np.abs(a.render(80).image.astype(np.int16) - b.render(80).image.astype(np.int16))
    assert diff.mean() > 2.0


def test_consecutive_frames_differ_by_sensor_noise_only_on_empty_belt() -> None:
    sc = ProductionLineScene(SceneConfig(num_frames=3, seed=3))
    assert all(not sc.boxes_at(i) for i in range(3))  # the belt starts empty
    f0, f1 = (sc.render(i).image.astype(np.float32) for i in (0, 1))
    d = f1 - f0
    assert 1.5 < float(d.std()) < 4.5  # two frames of sigma-2 noise
    assert abs(float(d.mean())) < 0.04 * float(f0.mean())  # flicker within a few percent


# ---------------------------------------------------------------------------------------- truth


def test_no_defects_when_defect_rate_is_zero() -> None:
    sc = ProductionLineScene(SceneConfig(defect_rate=0.0, seed=11))
    assert sc.parts and all(p.defect is None for p in sc.parts)
    assert all(not sc.sprite(p.part_id).defect_mask.any() for p in sc.parts)


def test_default_scene_has_every_defect_type_and_kind(scene: ProductionLineScene) -> None:
    parts = scene.parts
    assert len(parts) >= 10
    assert {p.defect for p in parts if p.defect} == set(DEFECTS)
    assert {p.kind for p in parts} == set(KINDS)
    assert 0.2 <= sum(p.defect is not None for p in parts) / len(parts) <= 0.45
    assert [p.part_id for p in parts] == list(range(1, len(parts) + 1))
    for p in parts:
        assert scene.sprite(p.part_id).defect_mask.any() == (p.defect is not None)


def test_boxes_agree_with_part_truth(scene: ProductionLineScene) -> None:
    cfg = scene.cfg
    by_id = {p.part_id: p for p in scene.parts}
    seen: dict[int, list[int]] = {pid: [] for pid in by_id}
    visible_counts = []
    for t in range(len(scene)):
        boxes = scene.boxes_at(t)
        for _, box in boxes:
            assert box.dtype == np.float32 and box.shape == (4,)
            assert 0 <= box[0] < box[2] <= cfg.width and 0 <= box[1] < box[3] <= cfg.height
        for (_, a), (_, b) in itertools.combinations(boxes, 2):
            assert _iou(a, b) == 0.0  # parts never overlap
        half = scene.boxes_at(t, min_visible=0.5)
        for pid, _ in half:
            seen[pid].append(t)
        visible_counts.append(len(half))
    for pid, frames in seen.items():
        p = by_id[pid]
        assert frames == list(range(p.first_frame, p.last_frame + 1)), pid
    assert 2.5 <= np.mean(visible_counts[100:]) <= 5.5


def test_boxes_move_with_the_belt(scene: ProductionLineScene) -> None:
    p = next(p for p in scene.parts if p.last_frame - p.first_frame > 100 and p.defect is None)
    t = p.first_frame + 40
    a = dict(scene.boxes_at(t))[p.part_id]
    b = dict(scene.boxes_at(t + 10))[p.part_id]
    np.testing.assert_allclose(b - a, [40.0, 0.0, 40.0, 0.0], atol=1.0)


def test_part_at_finds_the_part_under_a_box(scene: ProductionLineScene) -> None:
    t = 150
    boxes = scene.boxes_at(t)
    assert boxes
    for pid, box in boxes:
        assert scene.part_at(t, box) == pid
        assert scene.part_at(t, box + np.array([3, 2, 5, 4], np.float32)) == pid
    assert scene.part_at(t, np.array([0, 0, 4, 4], np.float32)) is None


def test_out_of_range_frame_index_raises(scene: ProductionLineScene) -> None:
    for bad in (-1, len(scene)):
        with pytest.raises(IndexError):
            scene.render(bad)
        with pytest.raises(IndexError):
            scene.boxes_at(bad)


# --------------------------------------------------------------------------------------- drawing


@pytest.mark.parametrize(("kind", "defect"), list(itertools.product(KINDS, DEFECTS)))
def test_defect_is_visibly_drawn_and_local(kind: str, defect: str) -> None:
    for seed in (1, 2):
        good, bad = render_part(kind, defect, seed)
        assert good.bgr.shape == bad.bgr.shape and good.alpha.shape == bad.alpha.shape
        region = bad.defect_mask
        assert region.sum() >= 25, "defect too small to see"
        diff = np.abs(_on_belt(bad) - _on_belt(good)).mean(axis=2)
        assert diff[region].mean() > 20.0
        around = cv2.dilate(region.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        assert diff[~around].max() < 1.0  # the rest of the part is untouched
        lost = 1.0 - (bad.alpha > 0.5).sum() / (good.alpha > 0.5).sum()
        if defect == "missing":
            assert 0.12 <= lost <= 0.28
        elif defect == "hole":
            assert 0.005 <= lost <= 0.1
        else:
            assert lost == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_good_parts_vary_a_little(kind: str) -> None:
    a, _ = render_part(kind, None, 1)
    b, _ = render_part(kind, None, 2)
    again, _ = render_part(kind, None, 1)
    np.testing.assert_array_equal(a.bgr, again.bgr)
    assert 55 <= max(a.alpha.shape) <= 100
    ha, wa = a.alpha.shape
    hb, wb = b.alpha.shape
    assert abs(ha - hb) <= 12 and abs(wa - wb) <= 12
    h, w = min(ha, hb), min(wa, wb)
    assert not np.array_equal(a.bgr[:h, :w], b.bgr[:h, :w])
    mean_a = a.bgr[a.alpha > 0.5].mean(axis=0)
    mean_b = b.bgr[b.alpha > 0.5].mean(axis=0)
    assert np.abs(mean_a - mean_b).max() < 0.15 * mean_a.max()


# ----------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({}, None),
        ({"lanes": 1, "width": 320, "height": 240, "num_frames": 50}, None),
        ({"height": 720, "width": 1280, "num_frames": 30, "prefill": True}, None),
        ({"kinds": ("gear",), "defects": ("hole",)}, None),
        ({"kinds": ("bolt",)}, "kinds"),
        ({"kinds": ()}, "kinds"),
        ({"defects": ("dent",)}, "defects"),
        ({"defects": (), "defect_rate": 0.2}, "defects"),
        ({"defect_rate": 1.5}, "defect_rate"),
        ({"speed_px": 0.0}, "speed_px"),
        ({"lanes": 3}, "lanes"),
        ({"fps": 0.0}, "fps"),
        ({"width": 10}, "width"),
    ],
)
def test_config_options(overrides: dict[str, object], error: str | None) -> None:
    if error is not None:
        with pytest.raises(ValueError, match=error):
            SceneConfig(**overrides)  # type: ignore[arg-type]
        return
    cfg = SceneConfig(**overrides)  # type: ignore[arg-type]
    if cfg.num_frames > 100:
        return
    sc = ProductionLineScene(cfg)
    assert {p.kind for p in sc.parts} <= set(cfg.kinds)
    assert {p.defect for p in sc.parts if p.defect} <= set(cfg.defects)
    f = sc.render(len(sc) - 1)
    assert f.image.shape == (cfg.height, cfg.width, 3)
    for _, box in sc.boxes_at(len(sc) - 1):
        assert 0 <= box[0] < box[2] <= cfg.width and 0 <= box[1] < box[3] <= cfg.height
    if cfg.prefill:
        assert sc.boxes_at(0, min_visible=0.5)


# ------------------------------------------------------------------------------ detection, speed


def _foreground_boxes(mask: np.ndarray) -> list[np.ndarray]:
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for c in contours:
        if cv2.contourArea(c) >= 400:
            x, y, w, h = cv2.boundingRect(c)
            boxes.append(np.array([x, y, x + w, y + h], np.float32))
    return boxes


def test_background_subtraction_finds_the_parts(scene: ProductionLineScene) -> None:
    mog = cv2.createBackgroundSubtractorMOG2(history=300, varThreshold=32, detectShadows=False)
    found = total = spurious = 0
    for t in range(101):
        fg = mog.apply(scene.render(t).image)
        if t < 30:
            continue
        dets = _foreground_boxes(fg)
        for _, box in scene.boxes_at(t, min_visible=1.0):
            total += 1
            found += max((_iou(d, box) for d in dets), default=0.0) > 0.5
        truths = [box for _, box in scene.boxes_at(t)]
        spurious += sum(max((_iou(d, b) for b in truths), default=0.0) < 0.3 for d in dets)
    assert total >= 50
    assert found >= 0.9 * total
    assert spurious <= 0.05 * total
