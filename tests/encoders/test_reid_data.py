"""Re-identification data: the standard layouts, merging, the identity split, sampling and augmentation."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from encoders.reid_data import (
    MARKET_NAME,
    CrossCameraPKSampler,
    ReidAugment,
    ReidDataError,
    detect_layout,
    load_reid_image,
    merge_reid,
    read_reid_folder,
    split_by_identity,
    write_market_layout,
)
from tests.conftest import person_crop


def test_market_layout_skips_junk_and_distractors(market_folder: Path) -> None:
    data = read_reid_folder(market_folder, source="m")
    assert detect_layout(market_folder) == "market"
    assert len(data) == 24 * 3 * 2
    assert len(data.identity_names) == 24 and data.identity_names[0] == "m/0001"
    assert sorted(set(data.cameras.tolist())) == [1, 2, 3]
    assert not any(i.endswith(("/-1", "/0000")) for i in data.identities)


def test_market_root_reads_bounding_box_train(tmp_path: Path, market_folder: Path) -> None:
    (tmp_path / "Market").mkdir()
    (tmp_path / "Market" / "bounding_box_train").symlink_to(market_folder)
    data = read_reid_folder(tmp_path / "Market")
    assert len(data) == 144 and data.identities[0].startswith("Market/")


def _write(path: Path, identity: int, camera: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), person_crop(identity, camera, np.random.default_rng(0)))


def test_cuhk03_slots_give_the_camera(tmp_path: Path) -> None:
    for pid in range(3):
        for slot in (0, 1, 5, 9):
            _write(tmp_path / "c" / f"{pid:04d}_{slot:02d}.jpg", pid, slot)
    data = read_reid_folder(tmp_path / "c")
    assert detect_layout(tmp_path / "c") == "cuhk03"
    cams = {(p.name, int(c)) for p, c in zip(data.paths, data.cameras, strict=True)}
    assert ("0000_01.jpg", 0) in cams and ("0000_05.jpg", 1) in cams and ("0002_09.jpg", 1) in cams


def test_a_data_set_as_distributed_is_read_from_its_one_subfolder_of_crops(tmp_path: Path) -> None:
    """CUHK03 comes as ROOT/images/PPPP_KK.jpg: ROOT is read as CUHK03, not as one identity called "images"."""
    for pid in range(3):
        for slot in (0, 6):
            _write(tmp_path / "cuhk03" / "images" / f"{pid:04d}_{slot:02d}.jpg", pid, slot)
    (tmp_path / "cuhk03" / "README.txt").write_text("about the data")
    assert detect_layout(tmp_path / "cuhk03") == "cuhk03"
    data = read_reid_folder(tmp_path / "cuhk03")
    assert sorted(set(data.identities)) == ["cuhk03/0000", "cuhk03/0001", "cuhk03/0002"]
    assert sorted(data.cameras.tolist()) == [0, 0, 0, 1, 1, 1]
    # two identity folders stay identity folders, even when one of them is called "images"
    for who in ("images", "bob"):
        for i in range(2):
            _write(tmp_path / "people" / who / f"{i}.png", i, 0)
    assert detect_layout(tmp_path / "people") == "folders"


def test_identity_folders_read_a_camera_from_the_name(tmp_path: Path) -> None:
    _write(tmp_path / "f" / "alice" / "x_c2_1.png", 1, 2)
    _write(tmp_path / "f" / "alice" / "cam3_frame9.png", 1, 3)
    _write(tmp_path / "f" / "bob" / "a.png", 2, 0)
    _write(tmp_path / "f" / "bob" / "b.png", 2, 0)
    data = read_reid_folder(tmp_path / "f")
    got = {(i, int(c)) for i, c in zip(data.identities, data.cameras, strict=True)}
    assert got == {("f/alice", 2), ("f/alice", 3), ("f/bob", 0)}


@pytest.mark.parametrize("names, message", [
    ((), "no images"),
    (("0001_c1s1_000001_00.jpg", "photo.jpg"), "neither Market-1501"),
    (("0001_00.jpg", "0002_00.jpg"), "none has two images"),
])
def test_unusable_folders_are_named(tmp_path: Path, names: tuple[str, ...], message: str) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    for n in names:
        _write(folder / n, 1, 1)
    with pytest.raises(ReidDataError, match=message):
        read_reid_folder(folder)


def test_merge_keeps_identities_apart_and_renumbers_cameras(market_folder: Path, tmp_path: Path) -> None:
    for slot in (0, 5):
        _write(tmp_path / "cuhk" / f"0001_{slot:02d}.jpg", 1, slot)
    a = read_reid_folder(market_folder, source="market")
    b = read_reid_folder(tmp_path / "cuhk", source="cuhk")
    merged = merge_reid([a, b])
    assert "market/0001" in merged.identities and "cuhk/0001" in merged.identities
    cuhk_cams = set(merged.cameras[[i.startswith("cuhk/") for i in merged.identities]].tolist())
    assert cuhk_cams == {4, 5}  # after market's cameras 0..3
    with pytest.raises(ReidDataError, match="in two of the data sets"):
        merge_reid([a, a])


def test_split_holds_out_whole_identities_with_a_query_per_camera(market_folder: Path) -> None:
    data = read_reid_folder(market_folder, source="m")
    split = split_by_identity(data, 5, seed=3)
    held = set(split.validation_identities)
    assert len(held) == 5
    assert not held & set(split.train.identities)
    assert set(split.gallery.identities) == held
    assert len(split.query) == 5 * 3  # one per (identity, camera)
    pairs = list(zip(split.query.identities, split.query.cameras.tolist(), strict=True))
    assert len(set(pairs)) == len(pairs)
    assert len(split.train) + len(split.query) + len(split.gallery) == len(data)
    assert split_by_identity(data, 5, seed=3).validation_identities == split.validation_identities
    assert split_by_identity(data, 5, seed=4).validation_identities != split.validation_identities
    with pytest.raises(ReidDataError, match="cannot hold out 25"):
        split_by_identity(data, 25)


def test_market_layout_written_for_eval_parses_back(market_folder: Path, tmp_path: Path) -> None:
    split = split_by_identity(read_reid_folder(market_folder, source="m"), 4, seed=0)
    out = write_market_layout(split, tmp_path / "val")
    query = sorted(p.name for p in (out / "query").iterdir())
    gallery = sorted(p.name for p in (out / "bounding_box_test").iterdir())
    assert len(query) == len(split.query) and len(gallery) == len(split.gallery)
    assert all(MARKET_NAME.match(n) for n in query + gallery)
    assert {int(re.match(r"(\d+)_", n).group(1)) for n in query} == {1, 2, 3, 4}  # type: ignore[union-attr]
    img = load_reid_image(out / "query" / query[0], (64, 32))
    assert img.shape == (64, 32, 3) and img.dtype == np.uint8


def test_market_layout_keeps_each_images_recording_sequence(tmp_path: Path) -> None:
    from lab.evaluation.reid_eval import read_market_folder

    src, rng = tmp_path / "src", np.random.default_rng(0)
    src.mkdir()
    for pid in range(1, 5):
        for cam, seq in ((1, 3), (2, 5)):
            for frame in range(2):
                assert cv2.imwrite(str(src / f"{pid:04d}_c{cam}s{seq}_{100 * pid + frame:06d}_00.png"),
                                   person_crop(pid, cam, rng))
    out = write_market_layout(split_by_identity(read_reid_folder(src, source="m"), 4, seed=0), tmp_path / "val")
    for side in ("query", "bounding_box_test"):
        folder = read_market_folder(out / side)
        assert set(zip(folder.cams.tolist(), folder.seqs.tolist(), strict=True)) == {(1, 3), (2, 5)}


def test_cross_camera_sampler_mixes_cameras() -> None:
    labels = np.repeat(np.arange(6), 6)
    cameras = np.tile([0, 0, 0, 1, 1, 2], 6)
    sampler = CrossCameraPKSampler(labels, cameras, p=3, k=3, batches=5, seed=0)
    for batch in sampler:
        assert len(batch) == 9
        for j in range(3):
            group = batch[3 * j:3 * j + 3]
            assert len({int(labels[i]) for i in group}) == 1
            assert len({int(cameras[i]) for i in group}) == 3  # one image from each of its three cameras
    with pytest.raises(ValueError, match="k must be >= 2"):
        CrossCameraPKSampler(labels, cameras, p=3, k=1, batches=1)


def test_augment_is_seeded_and_keeps_the_shape() -> None:
    batch = np.random.default_rng(0).integers(0, 256, size=(8, 32, 16, 3), dtype=np.uint8)
    aug = ReidAugment(pad=4, jitter=0.2, erase_p=1.0)
    a = aug(batch, np.random.default_rng(1))
    b = aug(batch, np.random.default_rng(1))
    assert a.shape == batch.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, batch)
    plain = ReidAugment(pad=0, jitter=0.0, erase_p=0.0)(batch, np.random.default_rng(5))
    for got, img in zip(plain, batch, strict=True):  # only flips are left
        assert np.array_equal(got, img) or np.array_equal(got, img[:, ::-1])


@pytest.mark.data
def test_shared_reid_sets_read_as_documented(shared_data) -> None:  # type: ignore[no-untyped-def]
    market = read_reid_folder(shared_data("reid", "market1501_train"))
    assert len(market) == 12936 and len(market.identity_names) == 751
    assert sorted(set(market.cameras.tolist())) == [1, 2, 3, 4, 5, 6]
    cuhk = read_reid_folder(shared_data("reid", "cuhk03_detected", "images"), source="cuhk03")
    assert len(cuhk) == 14097 and len(cuhk.identity_names) == 1467
    assert int((cuhk.cameras == 0).sum()) == 6918
