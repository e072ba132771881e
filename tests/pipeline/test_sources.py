"""Frame sources on real files: small MJPG videos and PNG folders written per test, decoded by OpenCV.

Live sources are driven by :class:`FileCapture`, a thin wrapper around a real ``cv2.VideoCapture`` whose
reads can be made to fail, standing in for a camera that drops out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from pipeline.config import SourceConfig
from pipeline.sources import (
    CaptureLike,
    ImageFolderSource,
    LiveSource,
    SourceError,
    VideoFileSource,
    open_source,
    to_bgr,
)
from pipeline.types import Frame

N_FRAMES = 40
STEP = 6  # frame i is filled with i * STEP; MJPEG round-trips a flat frame to within a few levels
FPS = 20.0
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_video(path: Path, n: int = N_FRAMES, size: tuple[int, int] = (64, 48)) -> Path:
    """An MJPG .avi of ``n`` flat frames, ``size`` = (width, height), frame i filled with ``i * STEP``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), i * STEP, np.uint8))
    writer.release()
    return path


def value_of(frame: Frame) -> int:
    """The frame number a flat test frame encodes."""
    return round(float(frame.image.mean()) / STEP)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi")


class FileCapture:
    """A real ``cv2.VideoCapture`` on a video file (or an unopened one when ``path`` is None).

    Args:
        path: the video to decode; None gives a capture that never opens.
        fail_after: after this many frames every read fails, like a camera that was unplugged.
        read_delay_s: sleep before each read, like a camera's frame interval.
    """

    def __init__(self, path: Path | None, fail_after: int | None = None, read_delay_s: float = 0.0) -> None:
        self._cap = cv2.VideoCapture(str(path)) if path is not None else cv2.VideoCapture()
        self._fail_after = fail_after
        self._read_delay_s = read_delay_s
        self.frames = 0
        self.released = False

    def isOpened(self) -> bool:
        return self._cap.isOpened()

    def read(self) -> tuple[bool, npt.NDArray[Any] | None]:
        if self._fail_after is not None and self.frames >= self._fail_after:
            return False, None
        if self._read_delay_s:
            time.sleep(self._read_delay_s)
        ok, image = self._cap.read()
        self.frames += int(ok)
        return ok, image

    def release(self) -> None:
        self.released = True
        self._cap.release()

    def get(self, propId: int) -> float:
        return self._cap.get(propId)


class Factory:
    """Hands out the captures ``make(call_number)`` builds and remembers them; ``make`` may raise."""

    def __init__(self, make: Callable[[int], CaptureLike]) -> None:
        self._make = make
        self.calls = 0
        self.made: list[CaptureLike] = []

    def __call__(self) -> CaptureLike:
        self.calls += 1
        cap = self._make(self.calls - 1)
        self.made.append(cap)
        return cap


def live_cfg(**changes: Any) -> SourceConfig:
    values: dict[str, Any] = {"reconnect_initial_s": 0.01, "reconnect_max_s": 0.1, "queue_size": 64}
    values.update(changes)
    return SourceConfig(**values)


def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# ---------------------------------------------------------------- video files


def test_video_file_yields_every_frame_in_order(video: Path) -> None:
    src = open_source(str(video), SourceConfig())
    assert isinstance(src, VideoFileSource)
    frames = list(src)
    src.close()

    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert [value_of(f) for f in frames] == list(range(N_FRAMES))
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    stamps = np.array([f.timestamp for f in frames])
    assert stamps[0] == 0.0
    assert np.all(np.diff(stamps) > 0)
    np.testing.assert_allclose(stamps, np.arange(N_FRAMES) / FPS, atol=1e-6)
    assert (src.name, src.is_live, src.fps) == (str(video), False, FPS)
    assert (src.frames_read, src.dropped, src.reconnects) == (N_FRAMES, 0, 0)


def test_video_file_max_frames(video: Path) -> None:
    src = open_source(str(video), SourceConfig(max_frames=7))
    frames = list(src)
    assert [f.index for f in frames] == list(range(7))
    assert src.frames_read == 7
    assert list(src) == []
    src.close()
    src.close()


def test_video_file_cut_mid_stream_yields_what_decodes_and_warns(video: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        src = open_source(str(cut), SourceConfig())
        frames = list(src)
    assert 0 < len(frames) < N_FRAMES
    assert [value_of(f) for f in frames] == list(range(len(frames)))
    assert any("truncated" in r.getMessage() and str(cut) in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- image folders


def test_folder_natural_order_grey_to_bgr_and_timestamps(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    names = ["img10.png", "img2.png", "img1.PNG", "img9.jpg", "img100.bmp"]
    order = sorted(names, key=lambda n: int(n[3:].split(".")[0]))
    for name in names:
        value = order.index(name) * 50
        shape = (12, 16) if name == "img2.png" else (12, 16, 3)  # img2 is a single-channel PNG
        image = np.full(shape, value, np.uint8)
        assert cv2.imwrite(str(folder / name), image)
    (folder / "notes.txt").write_text("not a frame")

    src = open_source(str(folder), SourceConfig(fps_hint=10.0))
    assert isinstance(src, ImageFolderSource)
    assert [p.name for p in src.paths] == ["img1.PNG", "img2.png", "img9.jpg", "img10.png", "img100.bmp"]
    frames = list(src)
    assert [round(float(f.image.mean()) / 50) for f in frames] == [0, 1, 2, 3, 4]
    assert all(f.image.shape == (12, 16, 3) for f in frames)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert (src.fps, src.frames_read, src.is_live) == (10.0, 5, False)


def test_folder_default_fps_and_max_frames(tmp_path: Path) -> None:
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.zeros((4, 4, 3), np.uint8))
    src = open_source(str(tmp_path), SourceConfig(max_frames=3))
    assert [f.timestamp for f in src] == pytest.approx([0.0, 1 / 25, 2 / 25])


def test_folder_unreadable_image_names_the_file(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a1.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a2.png").write_bytes(b"\x89PNG but not really")
    src = open_source(str(tmp_path), SourceConfig())
    it = iter(src)
    assert next(it).index == 0
    with pytest.raises(SourceError) as exc:
        next(it)
    assert str(tmp_path / "a2.png") in str(exc.value)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------- errors when opening


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nowhere" / "clip.avi"


def _empty_dir(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no frames here")
    return tmp_path / "empty"


def _text_avi(tmp_path: Path) -> Path:
    path = tmp_path / "x.avi"
    path.write_text("this is a text file, not a video\n" * 20)
    return path


def _header_only_avi(tmp_path: Path) -> Path:
    data = write_video(tmp_path / "full.avi").read_bytes()
    path = tmp_path / "truncated.avi"
    path.write_bytes(data[:400])
    return path


def _empty_avi(tmp_path: Path) -> Path:
    path = tmp_path / "zero.avi"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(("make", "expected"), [
    (_missing, "not found"),
    (_empty_dir, "has no images"),
    (_text_avi, "not a readable video"),
    (_header_only_avi, "not a readable video"),
    (_empty_avi, "not a readable video"),
])
def test_bad_file_sources_raise_one_line_naming_the_path(tmp_path: Path, make: Callable[[Path], Path],
                                                         expected: str) -> None:
    path = make(tmp_path)
    with pytest.raises(SourceError) as exc:
        open_source(str(path), SourceConfig())
    message = str(exc.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_empty_uri_says_what_to_set() -> None:
    with pytest.raises(SourceError, match=r"\[source\] uri"):
        open_source("  ", SourceConfig())


# ---------------------------------------------------------------- pixel conversion


@pytest.mark.parametrize(("image", "expected"), [
    (np.full((2, 3), 7, np.uint8), 7),
    (np.full((2, 3, 1), 7, np.uint8), 7),
    (np.full((2, 3, 3), 7, np.uint8), 7),
    (np.full((2, 3, 4), 7, np.uint8), 7),
    (np.full((2, 3, 3), 7 * 256 + 255, np.uint16), 7),
    (np.zeros((2, 3, 2), np.uint8), SourceError),
    (np.zeros((2, 3, 3), np.float32), SourceError),
])
def test_to_bgr(image: npt.NDArray[Any], expected: int | type[Exception]) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected, match="where"):
            to_bgr(image, "where")
        return
    out = to_bgr(image, "where")
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert np.all(out == expected)


# ---------------------------------------------------------------- live sources


def test_live_slow_consumer_drops_oldest_with_exact_accounting(video: Path) -> None:
    cfg = live_cfg(queue_size=4, max_frames=N_FRAMES)
    src = LiveSource("cam", Factory(lambda _: FileCapture(video)), cfg)
    # The consumer has not started yet; the reader stops at max_frames.
    wait_until(lambda: not src.is_reading)

    assert (src.frames_read, src.pending, src.dropped) == (N_FRAMES, 4, N_FRAMES - 4)
    it = iter(src)
    first = next(it)
    assert src.frames_read == 1 + src.dropped + src.pending
    rest = list(it)
    assert src.frames_read == 1 + len(rest) + src.dropped
    assert src.pending == 0
    # The newest frames survive; the consumer sees the gap in the indices.
    assert [f.index for f in [first, *rest]] == list(range(N_FRAMES - 4, N_FRAMES))
    assert [value_of(f) for f in [first, *rest]] == list(range(N_FRAMES - 4, N_FRAMES))
    assert (src.is_live, src.fps, src.reconnects) == (True, FPS, 0)
    src.close()


def test_live_paced_reader_and_slow_consumer(video: Path) -> None:
    start = time.time()
    src = LiveSource("cam", Factory(lambda _: FileCapture(video, read_delay_s=0.002)),
                     live_cfg(queue_size=2, max_frames=30))
    frames = []
    for frame in src:
        frames.append(frame)
        time.sleep(0.015)
    src.close()

    assert src.dropped > 0
    assert src.frames_read == 30 == len(frames) + src.dropped
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps)
    assert start <= stamps[0] and stamps[-1] <= time.time()


def test_live_reconnects_and_keeps_delivering(video: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 1st capture: 10 frames, then the link drops; the next two opens fail; the 4th works.
    def make(call: int) -> CaptureLike:
        if call == 0:
            return FileCapture(video, fail_after=10)
        return FileCapture(None) if call in (1, 2) else FileCapture(video)

    factory = Factory(make)
    with caplog.at_level(logging.INFO, logger="pipeline.sources"):
        src = LiveSource("cam", factory, live_cfg(max_frames=25, reconnect_attempts=5))
        frames = list(src)
    src.close()

    assert [f.index for f in frames] == list(range(25))
    assert [value_of(f) for f in frames] == list(range(10)) + list(range(15))
    assert (src.reconnects, src.dropped, src.frames_read) == (1, 0, 25)
    assert len(factory.made) == 4
    assert all(isinstance(c, FileCapture) and c.released for c in factory.made)
    levels = {r.levelno for r in caplog.records}
    assert {logging.WARNING, logging.INFO} <= levels


def test_live_first_open_retries_and_is_not_a_reconnect(video: Path) -> None:
    def make(call: int) -> CaptureLike:
        if call < 2:
            raise RuntimeError("device busy")
        return FileCapture(video)

    factory = Factory(make)
    src = LiveSource("cam", factory, live_cfg(max_frames=5, reconnect_attempts=3))
    assert [f.index for f in src] == list(range(5))
    assert (factory.calls, src.reconnects) == (3, 0)


@pytest.mark.parametrize("capture", ["never_opens", "opens_but_never_reads"])
def test_live_gives_up_after_reconnect_attempts(video: Path, capture: str) -> None:
    def make(_: int) -> CaptureLike:
        return FileCapture(None) if capture == "never_opens" else FileCapture(video, fail_after=0)

    factory = Factory(make)
    src = LiveSource("camera 3", factory, live_cfg(reconnect_attempts=2))
    with pytest.raises(SourceError) as exc:
        list(src)
    message = str(exc.value)
    assert message.startswith("camera 3: ") and "2 attempts" in message and "\n" not in message
    assert len(factory.made) == 2
    assert not src.is_reading
    src.close()


def test_live_error_comes_after_the_queued_frames(video: Path) -> None:
    def make(call: int) -> CaptureLike:
        return FileCapture(video, fail_after=3) if call == 0 else FileCapture(None)

    src = LiveSource("cam", Factory(make), live_cfg(reconnect_attempts=1))
    got = []
    with pytest.raises(SourceError, match="stopped delivering"):
        for frame in src:
            got.append(frame.index)
    assert got == [0, 1, 2]


def test_live_close_stops_the_thread_promptly() -> None:
    factory = Factory(lambda _: FileCapture(None))
    src = LiveSource("cam", factory, live_cfg(reconnect_initial_s=5.0, reconnect_max_s=10.0))
    consumed: list[Frame] = []
    consumer = threading.Thread(target=lambda: consumed.extend(src), daemon=True)
    consumer.start()
    wait_until(lambda: len(factory.made) >= 1)

    src.close()
    assert not src.is_reading
    consumer.join(1.0)
    assert not consumer.is_alive() and consumed == []
    src.close()
    assert list(src) == []


def test_open_source_live_dispatch_hides_passwords() -> None:
    cfg = live_cfg(reconnect_attempts=1)
    cam = open_source("7", cfg)
    stream = open_source("rtsp://admin:secret@127.0.0.1:9/live", cfg)
    try:
        assert isinstance(cam, LiveSource) and cam.is_live and cam.name == "camera 7"
        assert isinstance(stream, LiveSource) and stream.is_live
        assert stream.name == "rtsp://***@127.0.0.1:9/live"
        with pytest.raises(SourceError) as exc:
            list(stream)
        assert "secret" not in str(exc.value)
    finally:
        cam.close()
        stream.close()


# ---------------------------------------------------------------- real data


@pytest.mark.data
def test_conveyor_video_decodes_every_frame() -> None:
    path = DATA / "conveyor_video" / "cutted.avi"
    if not path.is_file():
        pytest.skip(f"{path} not present (shared data set not downloaded)")
    src = open_source(str(path), SourceConfig())
    count = 0
    last = -1.0
    for frame in src:
        assert frame.index == count and frame.image.shape == (480, 220, 3)
        assert frame.timestamp > last
        last = frame.timestamp
        count += 1
    src.close()
    assert count == 535 == src.frames_read
