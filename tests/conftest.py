"""Shared fixtures: the built-in encoder exported once per session, and the shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the shared data folder sits beside the repository)")
    return path


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


@pytest.fixture(scope="session")
def pretrained_onnx(encoder_cache: Path) -> Path:
    """The built-in encoder (ImageNet EfficientNet-Lite0, stage 5, GeM, 128 px) exported to ONNX."""
    from encoders.export import ensure_pretrained_onnx

    return ensure_pretrained_onnx(encoder_cache, stage=5, pooling="gem", input_size=128)
