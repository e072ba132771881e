"""MOTChallenge text files: precomputed detections (``det/det.txt``) and ground truth (``gt/gt.txt``).

Both files are comma-separated, one box per line, with 1-based frame numbers and ``tlwh`` pixel boxes:

* ``det.txt``: ``frame,-1,x,y,w,h,score[,...]``;
* ``gt.txt``: ``frame,id,x,y,w,h,conf[,class,visibility]`` or, in MOT15, ``frame,id,x,y,w,h,conf,X,Y,Z``;
  rows with ``conf == 0`` are to be ignored by evaluation.

A file is parsed once with numpy and checked when it is read; any problem raises :class:`MotFileError`
naming the file, the line, the problem and the fix. :class:`MotDetectionFile` serves a det file through the
:class:`~pipeline.detect.Detector` interface, so a tracker can be run on the published detections exactly as
on a live detector's output.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from pipeline.types import Detections, FloatArray, Frame

logger = logging.getLogger(__name__)

Float64Array = npt.NDArray[np.float64]

DET_MIN_COLUMNS = 7  # frame, id, x, y, w, h, score
GT_MIN_COLUMNS = 7  # frame, id, x, y, w, h, conf


class MotFileError(ValueError):
    """A MOTChallenge text file is missing or malformed.

    The message is one line: ``<path>[:<line>]: <problem>; <fix>``. The parts are kept as attributes.

    Attributes:
        path: the file.
        line: 1-based line number of the offending row, or None when the problem is the whole file.
        problem: what is wrong.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        self.fix = fix
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {problem}; {fix}")


def _read_lines(path: Path, kind: str) -> tuple[list[str], list[int]]:
    """The non-blank, non-comment lines of ``path`` and their 1-based line numbers."""
    if not path.is_file():
        raise MotFileError(path, None, f"{kind} file not found",
                           f"check the path (a MOTChallenge sequence keeps it in "
                           f"{'det/det.txt' if kind == 'detection' else 'gt/gt.txt'})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MotFileError(path, None, f"cannot read the {kind} file ({exc})",
                           "check that it is a readable UTF-8 text file") from None
    lines, numbers = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            lines.append(stripped.rstrip(","))
            numbers.append(number)
    return lines, numbers


def _first_bad_line(path: Path, lines: list[str], numbers: list[int], kind: str) -> MotFileError:
    """The error for the first line numpy could not parse (the slow path, only taken on failure)."""
    width = len(lines[0].split(","))
    for line, number in zip(lines, numbers, strict=True):
        fields = line.split(",")
        if len(fields) != width:
            return MotFileError(path, number, f"{len(fields)} comma-separated values where the first row has "
                                              f"{width}", f"give every {kind} row the same columns")
        for field in fields:
            try:
                float(field)
            except ValueError:
                return MotFileError(path, number, f"{field.strip()!r} is not a number",
                                    f"every value of a {kind} row must be numeric "
                                    f"(frame,id,x,y,w,h,score,...)")
    return MotFileError(path, None, f"numpy cannot parse the {kind} file", "check that it is comma-separated")


def read_mot_table(path: str | os.PathLike[str], kind: str,
                   min_columns: int) -> tuple[Float64Array, npt.NDArray[np.int64]]:
    """Parse and check a MOTChallenge text file.

    Args:
        path: the ``.txt`` file.
        kind: ``"detection"`` or ``"ground-truth"``, for messages.
        min_columns: fewest columns a row may have.

    Returns:
        ``(rows, line_numbers)``: ``(N, C)`` float64 rows in file order (``C >= min_columns``) and the
        ``(N,)`` 1-based line number of each row. An empty file gives ``(0, min_columns)`` rows.

    Raises:
        MotFileError: missing file, a row that is not numbers, rows of different lengths, too few columns,
            NaN or inf, a frame that is not an integer >= 1, or a negative width or height.
    """
    path = Path(path)
    lines, numbers = _read_lines(path, kind)
    if not lines:
        return np.zeros((0, min_columns), np.float64), np.zeros(0, np.int64)
    try:
        rows = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        raise _first_bad_line(path, lines, numbers, kind) from None
    line_no = np.asarray(numbers, np.int64)
    if rows.shape[1] < min_columns:
        raise MotFileError(path, numbers[0], f"{rows.shape[1]} columns, expected at least {min_columns} "
                                             f"(frame,id,x,y,w,h,{'score' if kind == 'detection' else 'conf'})",
                           "write rows in MOTChallenge format")

    def fail(mask: npt.NDArray[np.bool_], problem: str, fix: str) -> None:
        if np.any(mask):
            i = int(np.argmax(mask))
            raise MotFileError(path, int(line_no[i]), problem.format(row=rows[i]), fix)

    fail(~np.all(np.isfinite(rows), axis=1), "NaN or inf in the row", "write finite numbers only")
    frames = rows[:, 0]
    fail((frames < 1) | (frames != np.round(frames)), "frame {row[0]:g} is not an integer >= 1",
         "MOTChallenge frames count from 1 (frame 1 is the first image)")
    fail(rows[:, 4] < 0, "negative width {row[4]:g}", "boxes are x,y,w,h (top-left, width, height), w >= 0")
    fail(rows[:, 5] < 0, "negative height {row[5]:g}", "boxes are x,y,w,h (top-left, width, height), h >= 0")
    return rows, line_no


def read_mot_ground_truth(path: str | os.PathLike[str]) -> Float64Array:
    """Read a MOTChallenge ``gt.txt``.

    Args:
        path: the ``gt/gt.txt`` file.

    Returns:
        ``(N, C)`` float64 rows, ``C >= 7``: ``frame`` (1-based), ``id``, ``x, y, w, h`` (``tlwh`` pixels),
        ``conf`` (0 = ignore this box), then the file's remaining columns unchanged (MOT15: world ``X, Y, Z``;
        MOT16+: ``class, visibility``).

    Raises:
        MotFileError: see :func:`read_mot_table`; also an id that is not an integer >= 0.
    """
    rows, line_no = read_mot_table(path, "ground-truth", GT_MIN_COLUMNS)
    ids = rows[:, 1]
    bad = (ids < 0) | (ids != np.round(ids))
    if np.any(bad):
        i = int(np.argmax(bad))
        raise MotFileError(path, int(line_no[i]), f"track id {ids[i]:g} is not an integer >= 0",
                           "give every ground-truth box a non-negative integer id")
    return rows


def read_mot_detections(path: str | os.PathLike[str]) -> Float64Array:
    """Read a MOTChallenge ``det.txt``.

    Returns:
        ``(N, C)`` float64 rows, ``C >= 7``: ``frame`` (1-based), ``-1``, ``x, y, w, h`` (``tlwh`` pixels),
        ``score`` (detector units: often [0, 1], but some published files use other scales), then any
        remaining columns unchanged.

    Raises:
        MotFileError: see :func:`read_mot_table`.
    """
    rows, _ = read_mot_table(path, "detection", DET_MIN_COLUMNS)
    return rows


class MotFrameRows(NamedTuple):
    """One frame's rows of a det file.

    Attributes:
        tlwh: ``(N, 4)`` float32 boxes (top-left x, y, width, height) in pixels.
        score: ``(N,)`` float32 scores as written in the file (not clipped).
    """

    tlwh: FloatArray
    score: FloatArray


class MotDetectionFile:
    """Precomputed detections from a MOTChallenge ``det.txt``, served as a :class:`~pipeline.detect.Detector`.

    ``detect(frame)`` returns the rows of MOT frame ``frame.index + 1`` (MOT frames count from 1, pipeline
    frames from 0). Confidence is the file's score clipped to [0, 1]; the raw scores are kept in
    :meth:`frame_rows` (``scores_clipped`` tells whether any fell outside [0, 1]). Boxes with zero width or
    height cannot be ``xyxy`` boxes and are dropped when the file is read (counted in ``dropped_empty``).

    Args:
        path: the ``det/det.txt`` file.
        min_score: rows with a raw score below this are dropped when the file is read.

    Raises:
        MotFileError: missing or malformed file (see :func:`read_mot_table`).
    """

    def __init__(self, path: str | os.PathLike[str], min_score: float = 0.0) -> None:
        self.path = Path(path)
        self.min_score = float(min_score)
        rows = read_mot_detections(self.path)
        rows = rows[rows[:, 6] >= self.min_score]
        tlwh = rows[:, 2:6].astype(np.float32)
        # Checked in float32, where the xyxy box lives: a tiny w can vanish when added to x.
        x2 = tlwh[:, 0] + tlwh[:, 2]
        y2 = tlwh[:, 1] + tlwh[:, 3]
        empty = (x2 <= tlwh[:, 0]) | (y2 <= tlwh[:, 1])
        self.dropped_empty = int(np.count_nonzero(empty))
        if self.dropped_empty:
            logger.warning("%s: dropped %d boxes with zero width or height", self.path, self.dropped_empty)
        rows, tlwh = rows[~empty], tlwh[~empty]
        order = np.argsort(rows[:, 0], kind="stable")  # files are usually sorted; keep file order within a frame
        self._frames = rows[order, 0].astype(np.int64)
        self._tlwh = np.ascontiguousarray(tlwh[order])
        self._score = rows[order, 6].astype(np.float32)
        self.scores_clipped = bool(np.any((self._score < 0) | (self._score > 1)))
        if self.scores_clipped:
            logger.info("%s: scores outside [0, 1] (%.3g to %.3g); confidence is clipped, raw scores are kept",
                        self.path, float(self._score.min()), float(self._score.max()))

    def __len__(self) -> int:
        """Number of detections kept."""
        return len(self._frames)

    @property
    def last_frame(self) -> int:
        """The highest 1-based MOT frame with a detection; 0 for an empty file."""
        return int(self._frames[-1]) if len(self._frames) else 0

    def frame_rows(self, mot_frame: int) -> MotFrameRows:
        """The rows of 1-based MOT frame ``mot_frame``, in file order, with raw scores."""
        lo, hi = np.searchsorted(self._frames, [mot_frame, mot_frame + 1])
        return MotFrameRows(self._tlwh[lo:hi], self._score[lo:hi])

    def detect(self, frame: Frame) -> Detections:
        """The detections of MOT frame ``frame.index + 1`` (xyxy float32, clipped confidence, class -1)."""
        tlwh, score = self.frame_rows(frame.index + 1)
        xyxy = np.concatenate([tlwh[:, :2], tlwh[:, :2] + tlwh[:, 2:]], axis=1)
        return Detections(xyxy, np.clip(score, 0.0, 1.0), np.full(len(score), -1, np.int64))

    def reset(self) -> None:
        """Nothing to forget: the file is stateless."""
