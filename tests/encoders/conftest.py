"""Fixtures shared by the encoder tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoders.reid_train import train_reid
from tests.reid_runs import TINY_REID


@pytest.fixture(scope="session")
def tiny_run(market_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished :data:`TINY_REID` run on the tiny Market folder; tests only read it."""
    out = tmp_path_factory.mktemp("reid") / "run"
    train_reid([market_folder], out, TINY_REID)
    return out
