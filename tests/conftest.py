"""Shared fixtures: the built-in encoder exported once per session, and the shared real data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
