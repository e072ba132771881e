"""Shared fixtures: the built-in encoder exported once per session, the shared real data, a tiny class-folder
data set for training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Callable[..., Path]:
    """``shared_data("conveyor_video", "cutted.avi")``: a path under ../shared/data, or skip with the reason."""

    def find(*parts: str) -> Path:
        path = SHARED_DATA.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"real data not found at {path} (the shared data folder sits beside the repository)")
        return path

    return find


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


@pytest.fixture(scope="session")
def pretrained_onnx(encoder_cache: Path) -> Path:
    """The built-in encoder (ImageNet EfficientNet-Lite0, stage 5, GeM, 128 px) exported to ONNX."""
    from encoders.export import ensure_pretrained_onnx

    return ensure_pretrained_onnx(encoder_cache, stage=5, pooling="gem", input_size=128)


SHAPES = ("circle", "square", "triangle", "cross", "bar", "ring")


def _draw_shape(shape: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One white ``shape`` on black, uint8 ``(size, size)``, with a random centre offset and radius."""
    img = np.zeros((size, size), np.uint8)
    cx, cy = (int(v) for v in size // 2 + rng.integers(-3, 4, size=2))
    r = int(rng.integers(size // 4, size // 3 + 1))
    if shape == "circle":
        cv2.circle(img, (cx, cy), r, 255, -1)
    elif shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), 255, -1)
    elif shape == "triangle":
        cv2.fillPoly(img, [np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)], 255)
    elif shape == "cross":
        cv2.line(img, (cx - r, cy), (cx + r, cy), 255, 3)
        cv2.line(img, (cx, cy - r), (cx, cy + r), 255, 3)
    elif shape == "bar":
        cv2.rectangle(img, (cx - r, cy - 2), (cx + r, cy + 2), 255, -1)
    else:
        cv2.circle(img, (cx, cy), r, 255, 2)
    return img


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny folder of classes: 6 shapes (one class each) x 6 grey 28 px PNGs, ``root/<shape>/<i>.png``."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        (root / shape).mkdir()
        for i in range(6):
            assert cv2.imwrite(str(root / shape / f"{i}.png"), _draw_shape(shape, rng, 28))
    return root


def person_crop(identity: int, camera: int, rng: np.random.Generator, size: tuple[int, int] = (32, 16)) -> np.ndarray:
    """A tiny synthetic 'person' BGR ``(H, W, 3)``: shirt and trousers in the identity's two colours, lit by the
    camera, with noise. Identities differ by colour; cameras change the brightness."""
    h, w = size
    palette = np.random.default_rng(identity).integers(30, 226, size=(2, 3))
    img = np.empty((h, w, 3), np.float32)
    img[: h // 2] = palette[0]
    img[h // 2:] = palette[1]
    img *= 0.8 + 0.1 * (camera % 4)
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def market_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Market-1501 style folder: 24 identities x 3 cameras x 2 images, ``PPPP_cCs1_FFFFFF_00.png``, plus a
    junk (-1) and a distractor (0000) image that readers must skip."""
    root = tmp_path_factory.mktemp("market")
    rng = np.random.default_rng(0)
    frame = 0
    for pid in range(1, 25):
        for cam in (1, 2, 3):
            for _ in range(2):
                frame += 1
                assert cv2.imwrite(str(root / f"{pid:04d}_c{cam}s1_{frame:06d}_00.png"), person_crop(pid, cam, rng))
    assert cv2.imwrite(str(root / "-1_c1s1_000999_00.png"), person_crop(999, 1, rng))
    assert cv2.imwrite(str(root / "0000_c2s1_000998_00.png"), person_crop(998, 2, rng))
    return root


@pytest.fixture(scope="session")
def reid_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained person re-identification encoder (ImageNet EfficientNet-Lite0 to stage 2) exported at
    64 x 32: the shape and contract of `siamstream train --recipe reid` + `export`, for wiring tests."""
    from encoders.export import export_onnx
    from encoders.reid_train import ReidTrainConfig, build_reid_model

    model = build_reid_model(ReidTrainConfig(stage=2, height=64, width=32)).eval()
    path = tmp_path_factory.mktemp("reid-model") / "reid.onnx"
    export_onnx(model, path, (64, 32), backbone="test:reid", extra_metadata={"siamstream.task": "reid"})
    return path
