"""Training data: class folders, pair / P x K / one-class triplet sampling, augmentation, synthetic defects."""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from encoders.data import (
    DEFECT_KINDS,
    MIN_DEFECT_CONTRAST,
    Augment,
    AugmentConfig,
    BalancedPairSampler,
    ImageFolderClasses,
    OneClassTripletSampler,
    PKBatchSampler,
    from_zip,
    load_folder_images,
    small_defect,
    synthetic_defect,
    to_tensor,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the shared data folder sits beside the repository)")
    return path


def write_png(path: Path, value: int | tuple[int, int, int] = 128, size: tuple[int, int] = (12, 10)) -> None:
    """A flat image, ``size`` = (H, W); ``value`` is grey or an RGB triple."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, tuple):
        img = np.empty((*size, 3), np.uint8)
        img[:] = value[::-1]  # OpenCV writes BGR
    else:
        img = np.full(size, value, np.uint8)
    assert cv2.imwrite(str(path), img)


def smooth_image(h: int = 64, w: int = 64, channels: int = 3) -> np.ndarray:
    """Low-frequency pattern: a pixel shift of a few pixels moves values by well under 40 grey levels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = 128 + 60 * np.sin(xx / 10) + 40 * np.cos(yy / 13)
    img = np.stack([g, 255 - g, g * 0.5 + 60], axis=-1) if channels == 3 else g[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Class folders


def test_folder_of_classes_labels_classes_and_load(tmp_path: Path) -> None:
    write_png(tmp_path / "b" / "1.png")
    write_png(tmp_path / "b" / "2.png")
    write_png(tmp_path / "a" / "x.png", value=(255, 0, 0))
    write_png(tmp_path / "a" / "y.PNG")
    write_png(tmp_path / "a" / "z.png")
    (tmp_path / "README").write_text("not a class")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    write_png(tmp_path / ".hidden" / "1.png")

    grey = ImageFolderClasses(tmp_path, grayscale=True, size=16)
    assert grey.classes == ["a", "b"]
    assert grey.labels.dtype == np.int64 and grey.labels.tolist() == [0, 0, 0, 1, 1]
    assert [p.name for p in grey.paths] == ["x.png", "y.PNG", "z.png", "1.png", "2.png"]
    img = grey.load(3)
    assert img.shape == (16, 16, 1) and img.dtype == np.uint8 and (img == 128).all()

    colour = ImageFolderClasses(tmp_path, grayscale=False, size=8)
    red = colour.load(0)
    assert red.shape == (8, 8, 3) and red[0, 0].tolist() == [255, 0, 0]  # RGB order, not BGR
    assert colour.load_batch([0, 4]).shape == (2, 8, 8, 3)


def test_folder_of_classes_depth_two_like_omniglot(tmp_path: Path) -> None:
    layout = [("Alpha", "character01", 2), ("Alpha", "character02", 3), ("Beta", "character01", 2)]
    for alphabet, character, n in layout:
        for i in range(n):
            write_png(tmp_path / alphabet / character / f"{i}.png")
    ds = ImageFolderClasses(tmp_path, grayscale=True, size=8, depth=2)
    assert ds.classes == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    # depth=1 makes the alphabets the classes, with the nested images inside.
    by_alphabet = ImageFolderClasses(tmp_path, grayscale=True, size=8, depth=1)
    assert by_alphabet.classes == ["Alpha", "Beta"] and by_alphabet.labels.tolist() == [0] * 5 + [1] * 2


@pytest.mark.parametrize(
    ("layout", "root_name", "message"),
    [
        ({}, "missing", "does not exist"),
        ({}, ".", "no class directories"),
        ({"cat": 2, "lonely_dog": 1}, ".", "'lonely_dog'"),
        ({"cat": 2, "empty": 0}, ".", "'empty'"),
    ],
)
def test_folder_of_classes_errors(tmp_path: Path, layout: dict[str, int], root_name: str, message: str) -> None:
    for name, n in layout.items():
        (tmp_path / name).mkdir()
        for i in range(n):
            write_png(tmp_path / name / f"{i}.png")
    with pytest.raises(ValueError, match=message):
        ImageFolderClasses(tmp_path / root_name, grayscale=True, size=8)


def test_from_zip_extracts_once_and_returns_the_top_folder(tmp_path: Path) -> None:
    _, png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ["set/A/c1/0.png", "set/A/c1/1.png", "set/B/c1/0.png", "set/B/c1/1.png"]:
            zf.writestr(name, png.tobytes())
    folder = from_zip(archive, tmp_path / "out")
    assert folder == tmp_path / "out" / "set"
    assert ImageFolderClasses(folder, grayscale=True, size=4, depth=2).classes == ["A/c1", "B/c1"]
    (folder / "A" / "c1" / "1.png").unlink()
    assert from_zip(archive, tmp_path / "out") == folder
    assert not (folder / "A" / "c1" / "1.png").exists()  # not extracted a second time

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        from_zip(evil, tmp_path / "evil_out")
    with pytest.raises(ValueError, match="zip archive not found"):
        from_zip(tmp_path / "absent.zip", tmp_path / "x")
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a zip archive"):
        from_zip(fake, tmp_path / "y")


# ---------------------------------------------------------------------------------------------------------------
# Samplers

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # class 3 has one image: never in a same-class pair


def test_balanced_pairs_are_exactly_half_same_and_flag_is_correct() -> None:
    sampler = BalancedPairSampler(LABELS, pairs_per_epoch=200, seed=1)
    pairs = list(sampler)
    assert len(pairs) == len(sampler) == 200
    assert sum(same for _, _, same in pairs) == 100
    for i, j, same in pairs:
        assert i != j
        assert same == (LABELS[i] == LABELS[j])
    assert all(LABELS[i] != 3 for i, _, same in pairs if same)
    # Same-class pairs draw classes uniformly: each of the 3 pairable classes appears.
    assert {int(LABELS[i]) for i, _, same in pairs if same} == {0, 1, 2}
    assert list(sampler) != pairs  # a new epoch
    sampler.reset()
    assert list(sampler) == pairs
    assert list(BalancedPairSampler(LABELS, 200, seed=1)) == pairs


@pytest.mark.parametrize(
    ("labels", "pairs", "message"),
    [
        (np.zeros(5, int), 10, "at least 2 classes"),
        (np.array([0, 1, 2]), 10, "at least 2 images"),
        (LABELS, 7, "even"),
        (np.zeros((2, 2), int), 10, "1-D integer"),
    ],
)
def test_balanced_pairs_reject_bad_options(labels: np.ndarray, pairs: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BalancedPairSampler(labels, pairs, seed=0)


def test_pk_batches_have_p_classes_of_k_items() -> None:
    sampler = PKBatchSampler(LABELS, p=3, k=3, batches_per_epoch=50, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 50
    for batch in batches:
        assert len(batch) == 9
        counts = Counter(int(LABELS[i]) for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {3}
        for c in (0, 2):  # classes with >= 3 images are sampled without replacement
            assert len({i for i in batch if LABELS[i] == c}) in (0, 3)
    assert {int(LABELS[i]) for batch in batches for i in batch} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="number of classes"):
        PKBatchSampler(LABELS, p=5, k=2, batches_per_epoch=1)


# ---------------------------------------------------------------------------------------------------------------
# Augmentation


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_keeps_shape_dtype_and_is_deterministic(channels: int) -> None:
    img = smooth_image(40, 56, channels)
    aug = Augment(AugmentConfig(blur_p=0.5, hflip=True))
    outs = [aug(img, np.random.default_rng(7)) for _ in range(2)]
    assert outs[0].shape == img.shape and outs[0].dtype == np.uint8
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], aug(img, np.random.default_rng(8)))
    assert not np.array_equal(outs[0], img)


@pytest.mark.parametrize("channels", [1, 3])
def test_identity_config_returns_the_input(channels: int) -> None:
    img = np.random.default_rng(0).integers(0, 256, (20, 30, channels), dtype=np.uint8)
    out = Augment(AugmentConfig.identity())(img, np.random.default_rng(0))
    np.testing.assert_array_equal(out, img)


def test_hflip_only_mirrors() -> None:
    img = smooth_image(16, 24)
    aug = Augment(replace(AugmentConfig.identity(), hflip=True))
    outs = [aug(img, np.random.default_rng(s)) for s in range(10)]
    assert all(np.array_equal(o, img) or np.array_equal(o, img[:, ::-1]) for o in outs)
    assert any(np.array_equal(o, img[:, ::-1]) for o in outs)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"border": "wrap"}, "constant"), ({"scale": (1.2, 1.0)}, "scale"), ({"blur_p": 1.5}, "blur_p")],
)
def test_augment_config_rejects_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**options)  # type: ignore[arg-type]


def test_augment_rejects_non_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Augment()(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------------
# Synthetic defects and one-class triplets


def changed_outside_mask(img: np.ndarray, out: np.ndarray, mask: np.ndarray) -> int:
    """Pixels that changed more than one pixel away from the mask."""
    band = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    changed = np.abs(out.astype(np.int16) - img.astype(np.int16)).max(axis=2) > 0
    return int((changed & (band == 0)).sum())


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize(
    "image",
    [smooth_image(64, 64, 3), smooth_image(48, 80, 1), np.full((40, 40, 1), 255, np.uint8),
     np.zeros((32, 48, 3), np.uint8)],
    ids=["smooth-rgb", "smooth-grey", "white-grey", "black-rgb"],
)
def test_synthetic_defect_changes_pixels_only_inside_its_mask(kind: str, image: np.ndarray) -> None:
    for seed in range(5):
        out, mask = synthetic_defect(image, np.random.default_rng(seed), kind)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 255}
        assert changed_outside_mask(image, out, mask) == 0
        diff = np.abs(out.astype(np.float32) - image).max(axis=2)
        assert diff[mask > 0].mean() >= MIN_DEFECT_CONTRAST


def test_synthetic_defect_is_deterministic_and_checks_kind() -> None:
    img = smooth_image()
    a = synthetic_defect(img, np.random.default_rng(3))
    b = synthetic_defect(img, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="cutpaste"):
        synthetic_defect(img, np.random.default_rng(0), "crack")


MILD = AugmentConfig(rotation_deg=5.0, scale=(0.97, 1.03), translate=0.02, shear_deg=2.0, brightness=0.05,
                     contrast=0.05, saturation=0.05, hue=0.0, blur_p=0.0)


def test_one_class_triplets_negative_differs_more_than_positive() -> None:
    img = smooth_image()
    sampler = OneClassTripletSampler([img], Augment(MILD), triplets_per_epoch=20, seed=0)
    triplets = list(sampler)
    assert len(triplets) == len(sampler) == 20

    def big_change(x: np.ndarray, anchor: np.ndarray) -> float:
        # A mild augmentation of this smooth image moves no pixel by 40 levels; a defect does.
        return float((np.abs(x.astype(np.int16) - anchor).max(axis=2) > 40).mean())

    pos = [big_change(p, a) for a, p, _ in triplets]
    neg = [big_change(n, a) for a, _, n in triplets]
    for a, p, n in triplets:
        assert a.shape == p.shape == n.shape == img.shape and n.dtype == np.uint8
    assert np.mean(neg) > np.mean(pos) + 0.005
    assert sum(n > p for n, p in zip(neg, pos, strict=True)) >= 18


def test_one_class_triplets_other_image_negative() -> None:
    images = [np.full((16, 16, 3), v, np.uint8) for v in (10, 120, 240)]
    sampler = OneClassTripletSampler(images, Augment(AugmentConfig.identity()), triplets_per_epoch=9, seed=0,
                                     p_other=1.0)
    seen = []
    for anchor, positive, negative in sampler:
        np.testing.assert_array_equal(anchor, positive)
        assert not np.array_equal(negative, anchor)
        assert any(np.array_equal(negative, im) for im in images)
        seen.append(int(anchor[0, 0, 0]))
    assert Counter(seen) == {10: 3, 120: 3, 240: 3}  # every source once per pass
    with pytest.raises(ValueError, match="at least 2 images"):
        OneClassTripletSampler(images[:1], Augment(), 4, p_other=0.5)


# ---------------------------------------------------------------------------------------------------------------
# Tensors


def test_to_tensor_scales_by_dtype_and_replicates_grey() -> None:
    x = to_tensor(np.full((2, 5, 4, 1), 51, np.uint8))
    assert x.dtype == torch.float32 and x.shape == (2, 3, 5, 4)
    torch.testing.assert_close(x, torch.full((2, 3, 5, 4), 0.2))
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 0, 51
    y = to_tensor(rgb)
    assert y[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    torch.testing.assert_close(to_tensor(np.full((1, 1, 1, 3), 65535, np.uint16)), torch.ones(1, 3, 1, 1))
    # A dark uint8 image stays dark: no rescaling by the pixel values.
    torch.testing.assert_close(to_tensor(np.full((1, 2, 2, 1), 3, np.uint8)).max(), torch.tensor(3 / 255))


@pytest.mark.parametrize(
    ("batch", "message"),
    [(np.zeros((2, 2, 3), np.uint8), "shape"), (np.zeros((1, 2, 2, 4), np.uint8), "shape"),
     (np.zeros((1, 2, 2, 3), np.float32), "unsigned integer")],
)
def test_to_tensor_rejects_bad_input(batch: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_tensor(batch)


# ---------------------------------------------------------------------------------------------------------------
# Real data


@pytest.mark.data
def test_omniglot_small1_has_five_alphabets_of_twenty_drawings(tmp_path: Path) -> None:
    folder = from_zip(shared("omniglot", "images_background_small1.zip"), tmp_path)
    ds = ImageFolderClasses(folder, grayscale=True, size=105, depth=2)
    assert len({c.split("/")[0] for c in ds.classes}) == 5
    assert set(np.bincount(ds.labels).tolist()) == {20}
    assert len(ds) == 20 * len(ds.classes) == 2720
    img = ds.load(0)
    assert img.shape == (105, 105, 1) and img.dtype == np.uint8 and img.min() < 50 and img.max() > 200


@pytest.mark.data
def test_att_faces_training_has_37_subjects_of_10() -> None:
    ds = ImageFolderClasses(shared("att_faces", "training"), grayscale=True, size=64)
    assert len(ds.classes) == 37 and set(np.bincount(ds.labels).tolist()) == {10}
    assert "s5" not in ds.classes  # a test subject
    batch = next(iter(PKBatchSampler(ds.labels, p=4, k=2, batches_per_epoch=1, seed=0)))
    x = to_tensor(ds.load_batch(batch))
    assert x.shape == (8, 3, 64, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


@pytest.mark.data
def test_defects_and_triplets_on_real_tire_images() -> None:
    folder = shared("mvtec3d_tire", "train", "good", "rgb")
    images = load_folder_images(folder, grayscale=False, size=96)[:6]
    assert images[0].shape == (96, 96, 3)
    rng = np.random.default_rng(0)
    for kind in DEFECT_KINDS:
        out, mask = synthetic_defect(images[0], rng, kind)
        assert (mask > 0).any() and changed_outside_mask(images[0], out, mask) == 0
    sampler = OneClassTripletSampler(images, Augment(), triplets_per_epoch=6, seed=0, p_other=0.3)
    assert all(n.shape == (96, 96, 3) for _, _, n in sampler)


def test_merge_class_folders_unites_classes_by_name(tmp_path: Path) -> None:
    from encoders.data import ImageFolderClasses, merge_class_folders

    for root, classes in (("a", {"x": 3, "y": 2}), ("b", {"x": 4, "z": 2})):
        for name, n in classes.items():
            (tmp_path / root / name).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(tmp_path / root / name / f"{i}.png"), np.full((4, 4), 10 * i, np.uint8))
    a = ImageFolderClasses(tmp_path / "a", grayscale=True, size=4)
    b = ImageFolderClasses(tmp_path / "b", grayscale=True, size=4)
    merged = merge_class_folders([a, b])
    assert merged.classes == ["x", "y", "z"]
    # x: files 0..2 from a, file 3 only in b (0..2 of b repeat a's names and are taken once)
    assert np.bincount(merged.labels).tolist() == [4, 2, 2]
    x_files = [p for p, lab in zip(merged.paths, merged.labels, strict=True) if lab == 0]
    assert [p.parent.parent.name for p in x_files] == ["a", "a", "a", "b"]
    assert merged.load_batch([0, 3]).shape == (2, 4, 4, 1)
    with pytest.raises(ValueError, match="cannot merge"):
        merge_class_folders([a, ImageFolderClasses(tmp_path / "b", grayscale=False, size=4)])


def test_glyph_augmentation_fills_with_white_and_keeps_ink() -> None:
    from encoders.data import Augment, AugmentConfig

    img = np.full((32, 32, 1), 255, np.uint8)
    cv2.line(img, (8, 16), (24, 16), 0, 2)
    out = Augment(AugmentConfig.glyph())(img, np.random.default_rng(3))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[0, 0, 0] == 255 and out[-1, -1, 0] == 255  # the outside is paper, not a reflection
    assert out.min() < 60  # the stroke is still there, as dark as before (no brightness jitter)


@pytest.mark.parametrize("kind", ["cutpaste", "scratch", "hole", "stain"])
def test_small_defect_stays_inside_its_window_and_mask(kind: str) -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(60, 120, size=(96, 128, 3)).astype(np.uint8)
    bad, mask = small_defect(img, rng, kind, window_fraction=0.25)
    assert bad.shape == img.shape and bad.dtype == np.uint8 and mask.dtype == bool
    changed = (bad != img).any(axis=2)
    assert changed.any() and not (changed & ~mask).any()  # nothing outside the mask changes
    ys, xs = np.nonzero(mask)
    assert ys.max() - ys.min() < 24 and xs.max() - xs.min() < 32  # inside a window of a quarter of each side
    assert mask.mean() < 0.0625


def test_small_defect_rejects_bad_windows() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="window_fraction"):
        small_defect(img, np.random.default_rng(0), window_fraction=0.0)
    with pytest.raises(ValueError, match="too small"):
        small_defect(np.zeros((6, 6, 3), np.uint8), np.random.default_rng(0))
