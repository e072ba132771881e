"""Pictures of tracker output: a timeline of which track id is alive in which frame."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt


def save_timeline_png(rows: npt.ArrayLike, path: str | os.PathLike[str], title: str = "",
                      dpi: int = 100) -> Path:
    """Plot track id against frame, one line per track, and save it as a PNG.

    A track's line is broken where the track has no box, so fragmentation and id switches show as gaps and
    as new lines starting where an old one stops.

    Args:
        rows: ``(N, >= 2)`` MOT rows ``frame, id, ...`` (e.g. :attr:`PeerRun.rows`, or ground truth).
        path: the ``.png`` to write; its directory is created if needed.
        title: figure title; the default names the track and row counts.
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        ValueError: ``rows`` is not an ``(N, >= 2)`` array.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never open a window
    import matplotlib.pyplot as plt

    arr = np.asarray(rows, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"rows must be an (N, >= 2) array of MOT rows (frame, id, ...), got shape {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames, ids = arr[:, 0], arr[:, 1]
    track_ids = np.unique(ids)
    fig, ax = plt.subplots(figsize=(10, max(3.0, min(12.0, 0.12 * len(track_ids) + 2))))
    try:
        for i, tid in enumerate(track_ids):
            f = np.unique(frames[ids == tid])
            # One segment per run of consecutive frames, each frame drawn as [f - 0.5, f + 0.5] so a track
            # seen in a single frame still shows.
            breaks = np.flatnonzero(np.diff(f) > 1)
            starts = f[np.concatenate([[0], breaks + 1])]
            ends = f[np.concatenate([breaks, [len(f) - 1]])]
            ax.hlines(np.full(len(starts), tid), starts - 0.5, ends + 0.5, colors=f"C{i % 10}", linewidth=2)
        ax.set_xlabel("frame")
        ax.set_ylabel("track id")
        ax.set_title(title or f"{len(track_ids)} tracks, {len(arr)} boxes")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
