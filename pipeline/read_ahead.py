"""Decoding and detection ahead of the rest of the frame step, in a thread of their own.

Video decoding and detection (OpenCV, ONNX Runtime) release the GIL, so a reader thread keeps them busy while the
run's thread crops, embeds, tracks, scores and writes the previous frames. Frames wait in a bounded queue:

- a full queue makes the reader wait, so a file loses nothing (backpressure); a live source keeps dropping its
  oldest frames in its own queue, as without the reader (:class:`pipeline.sources.LiveSource`);
- an error of the source or the detector is raised in the run's thread, where the frame would have been taken;
- :meth:`ReadAhead.stop` ends reading after the frame being read: every frame already read is still handed out,
  so the run processes all it read before it flushes.

Per stream, frames stay in order and the detector sees them in turn: the outcome is the same as reading in turn.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline.types import Detections, Frame


@dataclass(frozen=True)
class ReadFrame:
    """A frame read (and, ahead, detected) for the rest of the step.

    Attributes:
        frame: the frame.
        detections: the detector's output, or ``None`` when detection is left to the frame step.
        decoded_at: ``time.perf_counter()`` when it was decoded (its latency for a file starts there).
    """

    frame: Frame
    detections: Detections | None
    decoded_at: float


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()
_POLL_S = 0.1


def read_in_turn(frames: Iterator[Frame], observe_read: Callable[[float], None]) -> Iterator[ReadFrame]:
    """Frames read in the caller's thread, detection left to the frame step (``[source] read_ahead = 0``)."""
    while True:
        start = time.perf_counter()
        frame = next(frames, None)
        now = time.perf_counter()
        if frame is None:
            return
        observe_read(now - start)  # per frame read (the read that finds the end is not one)
        yield ReadFrame(frame, None, now)


class ReadAhead:
    """Reads ``frames`` and runs ``detect`` on each in a daemon thread, up to ``depth`` frames ahead.

    Iterate it for :class:`ReadFrame` items in order; call :meth:`close` when done (always: it ends the thread).
    """

    def __init__(self, frames: Iterator[Frame], detect: Callable[[Frame], Detections], depth: int,
                 observe_read: Callable[[float], None], name: str = "read-ahead") -> None:
        if depth < 1:
            raise ValueError(f"ReadAhead: depth must be >= 1, got {depth}")
        self._frames = frames
        self._detect = detect
        self._observe_read = observe_read
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()  # read no further frame
        self._closed = threading.Event()  # nobody takes frames any more: give up waiting on the queue
        self._done = False
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            while not self._stopping.is_set():
                start = time.perf_counter()
                frame = next(self._frames, None)
                now = time.perf_counter()
                if frame is None:
                    break
                self._observe_read(now - start)
                if not self._put(ReadFrame(frame, self._detect(frame), now)):
                    return
        except BaseException as exc:  # handed to the run's thread, raised there
            self._put(_Failed(exc))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[ReadFrame]:
        return self

    def __next__(self) -> ReadFrame:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            raise item.error
        assert isinstance(item, ReadFrame)
        return item

    def stop(self) -> None:
        """Read no further frame; the frames already read are still handed out, then iteration ends."""
        self._stopping.set()

    def close(self, timeout_s: float = 5.0) -> bool:
        """Stop reading, drop what is queued and wait up to ``timeout_s`` for the thread; ``True`` when it ended
        (a source blocked in a read ends when the source is closed)."""
        self._stopping.set()
        self._closed.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
