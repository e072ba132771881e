from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lab.evaluation.mot_plots import save_timeline_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_timeline_png_is_written(tmp_path: Path) -> None:
    rows = np.array([[1, 1, 0, 0, 5, 5], [2, 1, 0, 0, 5, 5], [4, 1, 0, 0, 5, 5],  # gap at frame 3
                     [2, 7, 9, 9, 5, 5], [3, 7, 9, 9, 5, 5]], np.float64)
    path = save_timeline_png(rows, tmp_path / "plots" / "timeline.png", title="two tracks")
    assert path == tmp_path / "plots" / "timeline.png"
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_empty_rows_still_give_a_png(tmp_path: Path) -> None:
    path = save_timeline_png(np.zeros((0, 6)), tmp_path / "empty.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_rows_must_be_two_dimensional(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(N, >= 2\) array of MOT rows"):
        save_timeline_png(np.arange(5), tmp_path / "bad.png")
