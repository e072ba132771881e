"""Decoding and detection in a reader thread: order, backpressure, errors and stopping."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.read_ahead import ReadAhead, read_in_turn
from pipeline.types import Detections, Frame


def _frames(n: int, read: list[int] | None = None, fail_at: int = -1) -> Iterator[Frame]:
    for i in range(n):
        if i == fail_at:
            raise OSError(f"frame {i} is corrupt")
        if read is not None:
            read.append(i)
        yield Frame(i, i / 25.0, np.zeros((8, 8, 3), np.uint8))


def _detect(frame: Frame) -> Detections:
    return Detections(np.array([[0, 0, 4, 4]], np.float32) + frame.index, np.ones(1, np.float32), np.full(1, -1))


def test_frames_come_in_order_with_their_own_detections() -> None:
    reads: list[float] = []
    ahead = ReadAhead(_frames(50), _detect, 3, reads.append)
    try:
        items = list(ahead)
    finally:
        assert ahead.close()
    assert [it.frame.index for it in items] == list(range(50))
    assert all(it.detections is not None and it.detections.xyxy[0, 0] == it.frame.index for it in items)
    assert len(reads) == 50  # every frame's read timed (not the read that finds the end)


def test_a_full_queue_makes_the_reader_wait() -> None:
    read: list[int] = []
    ahead = ReadAhead(_frames(100, read), _detect, 2, lambda _s: None)
    try:
        first = next(ahead)
        time.sleep(0.3)
        # taken 1, queued 2, one more read and waiting to be queued: no further
        assert first.frame.index == 0 and len(read) <= 4
    finally:
        assert ahead.close()


def test_an_error_of_the_source_is_raised_where_its_frame_would_be_taken() -> None:
    ahead = ReadAhead(_frames(10, fail_at=6), _detect, 2, lambda _s: None)
    got = []
    with pytest.raises(OSError, match="frame 6 is corrupt"):
        for item in ahead:
            got.append(item.frame.index)
    assert got == [0, 1, 2, 3, 4, 5]
    assert ahead.close()


def test_stop_hands_out_every_frame_already_read_then_ends() -> None:
    read: list[int] = []
    ahead = ReadAhead(_frames(1000, read), _detect, 4, lambda _s: None)
    taken = [next(ahead).frame.index]
    time.sleep(0.2)
    ahead.stop()
    taken += [item.frame.index for item in ahead]
    assert ahead.close()
    assert taken == read  # nothing read is lost, nothing unread is handed out
    assert len(read) < 1000


def test_close_ends_a_reader_waiting_on_a_full_queue() -> None:
    ahead = ReadAhead(_frames(1000), _detect, 1, lambda _s: None)
    next(ahead)
    assert ahead.close(timeout_s=5.0)
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_reading_in_turn_leaves_detection_to_the_step() -> None:
    items = list(read_in_turn(_frames(5), lambda _s: None))
    assert [it.frame.index for it in items] == [0, 1, 2, 3, 4]
    assert all(it.detections is None for it in items)


def test_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        ReadAhead(_frames(1), _detect, 0, lambda _s: None)
