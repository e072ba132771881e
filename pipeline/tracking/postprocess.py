"""Offline clean-up of finished tracks (MOT rows), for outputs written after the whole video was seen.

A live tracker must decide per frame; a track file written at the end of a run need not. Two standard steps of
offline multi-object tracking (ByteTrack and StrongSORT, for instance, report results with linear interpolation):

- :func:`keep_confirmed`: rows of tentative tracks are kept only when the track was confirmed later, so a
  confirmed track starts at its first detection instead of ``min_hits - 1`` frames late, and tracks that were
  never confirmed (false alarms) are dropped;
- :func:`interpolate_gaps`: a track that misses up to ``max_gap`` frames (an occlusion, a missed detection) gets
  boxes on the straight line between the two boxes around the gap.

Rows are MOTChallenge rows ``(frame, id, left, top, width, height, confidence)``, float64 ``(N, 7)``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.float64]


def _check(rows: Rows) -> Rows:
    arr = np.asarray(rows, np.float64)
    if arr.ndim != 2 or arr.shape[1] < 6:
        raise ValueError(f"rows must be (N, >= 6) MOT rows (frame, id, left, top, width, height, ...); got {arr.shape}")
    return arr


def keep_confirmed(rows: Rows, confirmed_ids: set[int] | frozenset[int]) -> Rows:
    """The rows whose track id is in ``confirmed_ids``, in their original order."""
    arr = _check(rows)
    keep = np.isin(arr[:, 1].astype(np.int64), np.fromiter(confirmed_ids, np.int64, len(confirmed_ids)))
    return arr[keep]


def interpolate_gaps(rows: Rows, max_gap: int) -> Rows:
    """``rows`` plus linearly interpolated rows for every gap of 1..``max_gap`` missing frames inside a track.

    Interpolated rows carry confidence -1 (MOT's "not a detection") in the 7th column when there is one. The
    result is sorted by (frame, id). ``max_gap`` = 0 returns the rows sorted, unchanged.
    """
    arr = _check(rows)
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    out = [arr]
    if max_gap and len(arr):
        order = np.lexsort((arr[:, 0], arr[:, 1]))  # by id, then frame
        s = arr[order]
        same = s[1:, 1] == s[:-1, 1]
        missing = s[1:, 0] - s[:-1, 0] - 1
        for i in np.nonzero(same & (missing >= 1) & (missing <= max_gap))[0]:
            a, b = s[i], s[i + 1]
            n = int(missing[i])
            t = (np.arange(1, n + 1) / (n + 1))[:, None]
            fill = np.repeat(a[None, :], n, axis=0)
            fill[:, 0] = a[0] + np.arange(1, n + 1)
            fill[:, 2:6] = a[2:6] + t * (b[2:6] - a[2:6])
            if arr.shape[1] >= 7:
                fill[:, 6] = -1.0
            out.append(fill)
    merged = np.concatenate(out)
    return merged[np.lexsort((merged[:, 1], merged[:, 0]))]
