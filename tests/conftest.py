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
