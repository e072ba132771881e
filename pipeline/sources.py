"""Frame sources: video files, image folders, cameras and network streams as ``Iterator[Frame]``.

:func:`open_source` picks the source from the URI:

* ``"0"``, ``"1"``, ... -> a local camera (live);
* ``rtsp://``, ``rtmp://``, ``http://``, ``https://`` -> a network stream (live);
* an existing directory -> its images in natural order (``img2`` before ``img10``);
* anything else -> a video file.

File sources (video, image folder) are lossless: every decoded frame is yielded, in order. Live sources
read on a background thread into a bounded queue; when the consumer falls behind, the oldest queued frame
is discarded and counted in ``dropped``, so the consumer always works on recent frames. A live source that
stops delivering is released and reopened with exponential backoff.

Every source is single-pass (iterating again continues where the last loop stopped) and must be closed
with :meth:`FrameSource.close`.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.config import SourceConfig
from pipeline.redact import redact_url
from pipeline.types import Frame, UInt8Array

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
NETWORK_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")
DEFAULT_FPS = 25.0
# Network streams: give up on a connect or a read after this long, so a dead stream is reopened.
NETWORK_TIMEOUT_MS = 10_000
# How long close() waits for the reader thread; a thread stuck inside a device call is a daemon and
# releases its capture when that call returns.
CLOSE_TIMEOUT_S = 1.0


class SourceError(Exception):
    """A source cannot be opened or read. ``str()`` is one line naming the source, the problem and the fix."""


class FrameSource(Protocol):
    """What the pipeline reads frames from.

    Attributes:
        name: human-readable name for logs and errors: the path, ``"camera 0"`` or the URL (password hidden).
        is_live: True for cameras and network streams (frames may be dropped), False for files.
        fps: nominal frames per second; 0.0 when unknown.
        frames_read: frames decoded from the device or file so far.
        dropped: frames discarded because the consumer fell behind (live sources only; 0 for files).
        reconnects: successful reopenings after the source stopped delivering.
        pending: frames read and queued but not yet yielded (live sources; 0 for files).
        total_frames: frames the source will yield when known in advance (a file's declared length, capped by
            ``max_frames``), else 0.
    """

    name: str
    is_live: bool
    fps: float
    frames_read: int
    dropped: int
    reconnects: int
    total_frames: int

    @property
    def pending(self) -> int: ...  # read-only: a live source computes it from its queue

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class CaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` a live source uses."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, npt.NDArray[Any] | None]: ...

    def release(self) -> None: ...

    def get(self, propId: int) -> float: ...


def to_bgr(image: npt.NDArray[Any], where: str) -> UInt8Array:
    """Convert a decoded image to 3-channel BGR uint8.

    Args:
        image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA; uint8, or uint16
            (scaled by 1/256, i.e. by dtype, never by content).
        where: what the image is, for the error message.

    Returns:
        ``(H, W, 3)`` uint8 BGR.

    Raises:
        SourceError: for any other shape or dtype.
    """
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise SourceError(f"{where}: unsupported pixel type {image.dtype}; convert it to 8-bit images")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise SourceError(f"{where}: unsupported image shape {image.shape}; expected grey, BGR or BGRA")


def folder_images(folder: Path) -> list[Path]:
    """The images of ``folder`` (``IMAGE_EXTENSIONS``) in natural filename order, as an image-folder source reads
    them.

    Raises:
        SourceError: the folder cannot be listed or holds no image.
    """
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise SourceError(f"{folder}: cannot list the folder ({exc.strerror}); check its permissions") from None
    files = [f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise SourceError(f"{folder}: folder has no images ({' '.join(IMAGE_EXTENSIONS)}); "
                          f"put frames there or pass a video file")
    return sorted(files, key=lambda f: _natural_key(f.name))


def _natural_key(name: str) -> tuple[list[tuple[int, int, str]], str]:
    """Sort key that orders embedded numbers by value: ``img2`` < ``img10``; ties broken by the name."""
    parts = [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
             for part in re.split(r"(\d+)", name) if part]
    return parts, name


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


class VideoFileSource:
    """Every frame of a video file, in decoding order.

    Timestamps are the media position (``CAP_PROP_POS_MSEC``) when the container reports one, else
    ``index / fps``.

    Raises:
        SourceError: from the constructor when the file is missing or yields no frame.
    """

    is_live = False
    pending = 0

    def __init__(self, path: str | os.PathLike[str], cfg: SourceConfig) -> None:
        self.name = str(path)
        self.frames_read = 0
        self.dropped = 0
        self.reconnects = 0
        self._max_frames = cfg.max_frames
        p = Path(path)
        if not p.exists():
            raise SourceError(f"{self.name}: video file not found; check the path, or pass a camera index "
                              f"(e.g. 0), an rtsp:// URL or a folder of images")
        if not os.access(p, os.R_OK):
            raise SourceError(f"{self.name}: permission denied; make the file readable by this user")
        self._cap: cv2.VideoCapture | None = cv2.VideoCapture(str(p))
        first = self._decode() if self._cap.isOpened() else None
        if first is None:
            self.close()
            raise SourceError(f"{self.name}: not a readable video (OpenCV cannot open it or decodes no "
                              f"frame; the file may be truncated or corrupt); check it with "
                              f"`ffprobe {shlex.quote(self.name)}`")
        self._pending: npt.NDArray[Any] | None = first
        cap_fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = cap_fps if _positive(cap_fps) else (cfg.fps_hint or DEFAULT_FPS)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._declared = int(count) if _positive(count) else 0
        self.total_frames = min(self._declared, cfg.max_frames) if cfg.max_frames else self._declared

    def _decode(self) -> npt.NDArray[Any] | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok or image is None or image.size == 0:
            return None
        return image

    def __iter__(self) -> Iterator[Frame]:
        while self._cap is not None:
            if self._max_frames and self.frames_read >= self._max_frames:
                self.close()
                return
            image = self._pending if self._pending is not None else self._decode()
            self._pending = None
            if image is None:
                if self._declared and self.frames_read < self._declared:
                    logger.warning("%s: ended after %d of the %d frames its header declares; the file may be "
                                   "truncated (check it with `ffprobe %s`)", self.name, self.frames_read,
                                   self._declared, shlex.quote(self.name))
                self.close()
                return
            index = self.frames_read
            pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
            timestamp = pos_ms / 1000.0 if index > 0 and _positive(pos_ms) else index / self.fps
            self.frames_read += 1
            yield Frame(index, timestamp, to_bgr(image, f"{self.name} frame {index}"))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None


class ImageFolderSource:
    """The images of a folder, in natural filename order, at ``index / fps`` seconds.

    Raises:
        SourceError: from the constructor when the folder has no images; from iteration when an image
            cannot be decoded.
    """

    is_live = False
    pending = 0

    def __init__(self, folder: str | os.PathLike[str], cfg: SourceConfig) -> None:
        self.name = str(folder)
        self.frames_read = 0
        self.dropped = 0
        self.reconnects = 0
        self.fps = cfg.fps_hint or DEFAULT_FPS
        self._max_frames = cfg.max_frames
        self.paths: list[Path] = folder_images(Path(folder))
        self.total_frames = min(len(self.paths), cfg.max_frames) if cfg.max_frames else len(self.paths)
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        while not self._closed and self.frames_read < len(self.paths):
            if self._max_frames and self.frames_read >= self._max_frames:
                return
            path = self.paths[self.frames_read]
            try:
                # imdecode on the bytes rather than imread(path): works for any path encoding.
                image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
            except (OSError, cv2.error) as exc:
                raise SourceError(f"{path}: cannot read image ({exc}); fix or remove the file") from None
            if image is None or image.size == 0:
                raise SourceError(f"{path}: not a readable image; fix or remove the file")
            index = self.frames_read
            self.frames_read += 1
            yield Frame(index, index / self.fps, to_bgr(image, str(path)))

    def close(self) -> None:
        self._closed = True


class LiveSource:
    """A camera or stream read on a daemon thread into a bounded queue that drops the oldest frame.

    Reading starts when the source is built. ``frames_read == frames yielded + dropped + pending`` holds
    whenever the reader is not in the middle of pushing a frame (always, once it has stopped).

    When the device cannot be opened or stops delivering, the capture is released and reopened after
    ``cfg.reconnect_initial_s`` seconds, doubling up to ``cfg.reconnect_max_s``. An attempt fails when
    opening fails or the first read after opening fails. After ``cfg.reconnect_attempts`` consecutive
    failed attempts (0: never give up), iteration drains the queue and then raises :class:`SourceError`.

    Args:
        name: for logs and errors, e.g. ``"camera 0"``.
        open_capture: returns a new capture each call; may raise, which counts as a failed attempt.
        cfg: queue size, backoff, attempts, ``max_frames`` (frames read from the device, dropped ones
            included), ``fps_hint`` (used when the device reports no fps).
    """

    is_live = True
    total_frames = 0

    def __init__(self, name: str, open_capture: Callable[[], CaptureLike], cfg: SourceConfig) -> None:
        self.name = name
        self.fps = cfg.fps_hint
        self.frames_read = 0
        self.dropped = 0
        self.reconnects = 0
        self._open_capture = open_capture
        self._cfg = cfg
        self._queue: collections.deque[Frame] = collections.deque(maxlen=cfg.queue_size)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"source-{name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Frames read and queued but not yet yielded."""
        with self._cond:
            return len(self._queue)

    @property
    def is_reading(self) -> bool:
        """True while the reader thread runs."""
        return self._thread.is_alive()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._done or self._stop.is_set())
                if self._stop.is_set():
                    return
                if not self._queue:
                    if self._error is not None:
                        raise SourceError(self._error)
                    return
                frame = self._queue.popleft()
            yield frame

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_TIMEOUT_S)
            if self._thread.is_alive():
                logger.warning("%s: reader still blocked in the device after %.1f s; it will release the "
                               "device when that call returns", self.name, CLOSE_TIMEOUT_S)

    def _push(self, image: npt.NDArray[Any]) -> None:
        bgr = to_bgr(image, f"{self.name} frame {self.frames_read}")
        now = time.time()
        with self._cond:
            frame = Frame(self.frames_read, now, bgr)
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1  # deque(maxlen) discards the oldest on append
            self._queue.append(frame)
            self.frames_read += 1
            self._cond.notify_all()

    def _try_open(self) -> CaptureLike | None:
        try:
            cap = self._open_capture()
        except Exception as exc:
            logger.warning("%s: opening failed: %s", self.name, exc)
            return None
        if cap.isOpened():
            fps = cap.get(cv2.CAP_PROP_FPS)
            if _positive(fps):
                self.fps = fps
            return cap
        self._release(cap)
        return None

    def _read(self, cap: CaptureLike) -> npt.NDArray[Any] | None:
        try:
            ok, image = cap.read()
        except Exception as exc:
            logger.warning("%s: read failed: %s", self.name, exc)
            return None
        if not ok or image is None or image.size == 0:
            return None
        return image

    def _release(self, cap: CaptureLike) -> None:
        try:
            cap.release()
        except Exception as exc:
            logger.debug("%s: release failed: %s", self.name, exc)

    def _give_up(self, attempts: int, ever_delivered: bool) -> None:
        if ever_delivered:
            problem = f"stopped delivering frames and {attempts} consecutive attempts to reopen it failed"
        else:
            problem = f"could not be opened or read ({attempts} attempts)"
        self._error = (f"{self.name}: {problem}; check that the camera is connected or the stream is "
                       f"reachable (e.g. `ffprobe URL`), or set [source] reconnect_attempts = 0 to retry "
                       f"forever")
        logger.error("%s", self._error)

    def _run(self) -> None:
        cfg = self._cfg
        initial = min(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        delay = initial
        failures = 0  # consecutive failed attempts
        lost = False  # frames were delivered, then the source stopped: the next frame is a reconnect
        cap: CaptureLike | None = None
        delivered_on_cap = False  # the current capture has produced a frame
        try:
            while not self._stop.is_set():
                if cap is None:
                    cap = self._try_open()
                    delivered_on_cap = False
                image = self._read(cap) if cap is not None else None
                if image is not None:
                    if lost:
                        with self._cond:
                            self.reconnects += 1
                        logger.info("%s: reconnected, delivering frames again (reconnect %d)",
                                    self.name, self.reconnects)
                    elif failures:
                        logger.info("%s: opened after %d failed attempt(s)", self.name, failures)
                    failures, delay, lost, delivered_on_cap = 0, initial, False, True
                    self._push(image)
                    if cfg.max_frames and self.frames_read >= cfg.max_frames:
                        return
                    continue
                if cap is not None:
                    self._release(cap)
                    cap = None
                if delivered_on_cap:
                    # The trigger for a reconnect, not a failed attempt: attempts count from here.
                    lost, delivered_on_cap = True, False
                    logger.warning("%s: stopped delivering after frame %d; reopening in %.2f s",
                                   self.name, self.frames_read - 1, delay)
                else:
                    failures += 1
                    if cfg.reconnect_attempts and failures >= cfg.reconnect_attempts:
                        self._give_up(failures, self.frames_read > 0)
                        return
                    limit = f"/{cfg.reconnect_attempts}" if cfg.reconnect_attempts else ""
                    logger.warning("%s: cannot open or read (attempt %d%s); retrying in %.2f s",
                                   self.name, failures, limit, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2.0, cfg.reconnect_max_s)
        except Exception as exc:
            self._error = f"{self.name}: reader stopped: {exc}"
            logger.exception("%s: reader stopped", self.name)
        finally:
            if cap is not None:
                self._release(cap)
            with self._cond:
                self._done = True
                self._cond.notify_all()


def _open_camera(index: int) -> CaptureLike:
    return cv2.VideoCapture(index)


def _open_stream(uri: str) -> CaptureLike:
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
              NETWORK_TIMEOUT_MS]
    # FFmpeg by name: with CAP_ANY, OpenCV also tries its image-sequence reader on a URL holding "%" (a
    # percent-encoded password) and prints the whole URL, password included, to stderr when that fails.
    return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)


def open_source(uri: str, cfg: SourceConfig) -> FrameSource:
    """Open the frame source ``uri`` names.

    Args:
        uri: a camera index (``"0"``), an ``rtsp://``/``rtmp://``/``http(s)://`` URL, a folder of images
            or a video file.
        cfg: the ``[source]`` section.

    Returns:
        A started source; the caller must :meth:`~FrameSource.close` it.

    Raises:
        SourceError: when a file source is missing, empty or unreadable. Live sources never raise here:
            they retry in the background and raise from iteration once they give up.
    """
    uri = uri.strip()
    if not uri:
        raise SourceError("no source given: set [source] uri to a video file, an image folder, a camera "
                          "index (e.g. 0) or an rtsp:// URL")
    if uri.isdigit():
        index = int(uri)
        return LiveSource(f"camera {index}", lambda: _open_camera(index), cfg)
    if uri.lower().startswith(NETWORK_SCHEMES):
        return LiveSource(redact_url(uri), lambda: _open_stream(uri), cfg)
    if Path(uri).is_dir():
        return ImageFolderSource(uri, cfg)
    return VideoFileSource(uri, cfg)
