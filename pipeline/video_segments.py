"""The annotated video as a series of short files, as recorders write it: a hard kill loses one segment at most.

An MP4 keeps its index at the end, so a process killed while writing one (SIGKILL, the OOM killer, a power cut)
leaves a file nothing can play. :class:`SegmentedVideoSink` closes a file every ``segment_frames`` frames, so
every segment but the one being written is complete and playable, and appends one line per closed segment to
``segments.jsonl`` (file, first and last frame index, frame count, first and last timestamp), flushed to disk.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import IO

from pipeline.sinks import PREVIOUS_SUFFIX, AnnotatedVideoSink, SinkError, check_writable_dir
from pipeline.types import FrameResult

INDEX = "segments.jsonl"


class SegmentedVideoSink:
    """Annotated frames into ``folder/000000.mp4``, ``folder/000001.mp4``, ... of ``segment_frames`` frames each.

    Args:
        folder: the segments' folder (created; the segments and the index of an earlier run there are moved to
            ``<folder>.prev/``, replacing what an older run left there, so a run that fails loses nothing, as
            ``tracks.txt`` is kept in ``tracks.txt.prev``).
        fps: frame rate stored in each file.
        segment_frames: frames per segment, >= 1.
        fourcc, suffix: codec and file extension of each segment (``"mp4v"`` and ``".mp4"``).

    Raises:
        ValueError: ``segment_frames`` < 1 (and what :class:`AnnotatedVideoSink` raises).
        SinkError: the folder or the index cannot be written.
    """

    def __init__(self, folder: Path, fps: float, segment_frames: int, fourcc: str = "mp4v",
                 suffix: str = ".mp4") -> None:
        if segment_frames < 1:
            raise ValueError(f"SegmentedVideoSink: segment_frames must be >= 1, got {segment_frames}")
        self.folder = Path(folder)
        check_writable_dir(self.folder)
        self.fps = fps
        self.segment_frames = segment_frames
        self.fourcc = fourcc
        self.suffix = suffix
        self.segments_closed = 0
        self.frames_written = 0
        self._current: AnnotatedVideoSink | None = None
        self._first: tuple[int, float] = (0, 0.0)
        self._last: tuple[int, float] = (0, 0.0)
        self._keep_previous()
        index = self.folder / INDEX
        try:
            self._index: IO[str] | None = index.open("w", encoding="utf-8")
        except OSError as exc:
            raise SinkError(index, f"cannot create the segment index ({exc.strerror or exc})",
                            "choose another output directory or fix its permissions") from None

    def _keep_previous(self) -> None:
        earlier = [p for p in self.folder.iterdir()
                   if p.is_file() and (re.fullmatch(r"\d{6}\.(mp4|avi|mkv)", p.name) or p.name == INDEX)]
        if not earlier or all(p.stat().st_size == 0 for p in earlier):
            for p in earlier:
                p.unlink()
            return
        prev = self.folder.with_name(self.folder.name + PREVIOUS_SUFFIX)
        try:
            if prev.is_dir():
                for old in prev.iterdir():
                    if old.is_file():
                        old.unlink()
            prev.mkdir(exist_ok=True)
            for p in earlier:
                os.replace(p, prev / p.name)
        except OSError as exc:
            raise SinkError(prev, f"cannot move the previous run's segments aside ({exc.strerror or exc})",
                            "choose another output directory or fix its permissions") from None

    @property
    def path(self) -> Path:
        """The segment being written (or the next one)."""
        return self.folder / f"{self.segments_closed:06d}{self.suffix}"

    def write(self, result: FrameResult) -> None:
        if self._current is None:
            self._current = AnnotatedVideoSink(self.path, self.fps, self.fourcc)
            self._first = (result.frame.index, result.frame.timestamp)
        self._current.write(result)
        self._last = (result.frame.index, result.frame.timestamp)
        self.frames_written += 1
        if self._current.frames_written >= self.segment_frames:
            self._close_segment()

    def _close_segment(self) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        path = current.path
        frames = current.frames_written
        current.close()
        self.segments_closed += 1
        if frames == 0 or self._index is None:
            return
        line = json.dumps({"file": path.name, "first_frame": self._first[0], "last_frame": self._last[0],
                           "frames": frames, "first_timestamp": round(self._first[1], 6),
                           "last_timestamp": round(self._last[1], 6)}) + "\n"
        try:
            self._index.write(line)
            self._index.flush()
            os.fsync(self._index.fileno())
        except OSError as exc:
            raise SinkError(self.folder / INDEX, f"cannot write the segment index ({exc.strerror or exc})",
                            "free space on that disk or choose another output directory") from None

    def close(self) -> None:
        """Finish the segment being written and the index. Idempotent."""
        try:
            self._close_segment()
        finally:
            if self._index is not None:
                index, self._index = self._index, None
                index.close()
