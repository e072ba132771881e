"""Sinks: where each frame's results go once the pipeline is done with them.

Three file sinks, all behind the same two-method :class:`Sink` interface:

* :class:`AnnotatedVideoSink` draws boxes, labels and a header on each frame and writes a video.
* :class:`EventsJsonlSink` appends every :class:`~pipeline.types.AnomalyEvent` as one JSON line, flushed at
  once so a crash loses nothing.
* :class:`MotTxtSink` writes confirmed, matched tracks in MOTChallenge ``frame,id,x,y,w,h,conf,-1,-1,-1``
  format (1-based frames, ``tlwh`` boxes) for offline tracking evaluation.
* :class:`EvidenceSink` saves the image of every flagged part (beside its anomaly map) where its event points.

:class:`SinkGroup` fans one result out to several sinks and closes them all. Output problems (a directory
that cannot be created or written, a video codec that will not open, a disk that fills up mid-run) raise
:class:`SinkError`, whose message names the path, the problem and the fix.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

import cv2
import numpy as np

from pipeline.anomaly.maps import overlay_patch_maps
from pipeline.types import AnomalyEvent, FrameResult, TrackObservation, TrackState, UInt8Array, Verdict

if TYPE_CHECKING:
    from pipeline.identity import IdentityEvent

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]

# BGR, OpenCV order.
VERDICT_COLORS: dict[Verdict, Color] = {
    Verdict.DEFECT: (0, 0, 255),
    Verdict.GOOD: (0, 200, 0),
    Verdict.PENDING: (0, 215, 255),
    Verdict.UNSCORED: (255, 180, 0),
}
# Label text colour per verdict, picked for contrast against the filled label background.
_TEXT_COLORS: dict[Verdict, Color] = {
    Verdict.DEFECT: (255, 255, 255),
    Verdict.GOOD: (0, 0, 0),
    Verdict.PENDING: (0, 0, 0),
    Verdict.UNSCORED: (0, 0, 0),
}
UNMATCHED_COLOR: Color = (160, 160, 160)
_HEADER_BG: Color = (0, 0, 0)
_HEADER_FG: Color = (255, 255, 255)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.4
_FONT_THICKNESS = 1
_LABEL_PAD = 2

MOT_FLUSH_EVERY = 100


class SinkError(Exception):
    """An output could not be created or written.

    The message is one line: ``<path>: <problem>; <fix>``. The parts are kept as attributes so a caller can
    report them separately.

    Attributes:
        path: the file or directory concerned.
        problem: what went wrong.
        fix: what the user can do about it.
    """

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}")


class Sink(Protocol):
    """Consumes one :class:`FrameResult` per frame, in frame order."""

    def write(self, result: FrameResult) -> None:
        """Record one frame's results. Raises ``RuntimeError`` after :meth:`close`."""
        ...

    def close(self) -> None:
        """Flush and close. Idempotent: a second call does nothing."""
        ...


def check_writable_dir(path: Path) -> None:
    """Make sure ``path`` is a directory this process can create files in.

    Creates the directory (and its parents) if needed, then creates and deletes a temporary file in it.

    Raises:
        SinkError: the directory cannot be created (a parent is a regular file, no permission, ...) or
            a file cannot be created in it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SinkError(path, "output path exists and is not a directory",
                        "choose another output path or remove that file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except NotADirectoryError as exc:
        raise SinkError(path, "cannot create output directory: part of the path is a regular file",
                        "choose another output path") from exc
    except OSError as exc:
        raise SinkError(path, f"cannot create output directory ({_os_reason(exc)})",
                        "choose another output path or fix the permissions of its parent") from exc
    if not path.is_dir():
        raise SinkError(path, "output path is not a directory", "choose another output path")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path, prefix=".write-check-")
    except OSError as exc:
        raise SinkError(path, f"output directory is not writable ({_os_reason(exc)})",
                        "choose another output path or fix its permissions") from exc
    os.close(fd)
    try:
        os.unlink(tmp_name)
    except OSError:
        logger.warning("could not remove write-check file %s", tmp_name)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _write_error(path: Path, exc: OSError) -> SinkError:
    """An output that stopped accepting writes mid-run (disk full, file system gone read-only)."""
    return SinkError(path, f"cannot write ({_os_reason(exc)})",
                     "free space on that disk or choose another output directory")


PREVIOUS_SUFFIX = ".prev"


def keep_previous(path: Path) -> None:
    """Move a previous run's non-empty ``path`` aside to ``<path>.prev`` (replacing an older one) before this run
    writes its own: a run that then fails, on a camera that never connects or a corrupt frame, loses nothing."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
        os.replace(path, path.with_name(path.name + PREVIOUS_SUFFIX))
    except OSError as exc:
        raise SinkError(path, f"cannot move the previous run's file aside ({_os_reason(exc)})",
                        "choose another output directory or fix its permissions") from exc


def _open_text(path: Path, what: str) -> IO[str]:
    """Create ``path``'s directory and open ``path`` for writing, a previous run's content kept aside
    (:func:`keep_previous`)."""
    path = Path(path)
    check_writable_dir(path.parent)
    keep_previous(path)
    try:
        return path.open("w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise SinkError(path, f"cannot open {what} file for writing ({_os_reason(exc)})",
                        "choose another output path or fix its permissions") from exc


def _closed_error(sink: object, path: Path | None = None) -> RuntimeError:
    where = f" ({path})" if path is not None else ""
    return RuntimeError(f"{type(sink).__name__}{where} is closed: write() after close()")


# ---------------------------------------------------------------------------------------------------------
# Drawing


def _is_visible(obs: TrackObservation) -> bool:
    return obs.detection_index >= 0


def _label_text(obs: TrackObservation) -> str:
    parts = [f"#{obs.track_id}"]
    if not math.isnan(obs.track_score):
        parts.append(f"{obs.track_score:.3f}")
    if obs.verdict is Verdict.DEFECT:
        parts.append("DEFECT")
    return " ".join(parts)


def _header_text(result: FrameResult) -> str:
    """``frame N  tracks M  flagged K``: M tracks seen this frame, K of them with a DEFECT verdict."""
    visible = [obs for obs in result.tracks if _is_visible(obs)]
    flagged = sum(1 for obs in visible if obs.verdict is Verdict.DEFECT)
    return f"frame {result.frame.index}  tracks {len(visible)}  flagged {flagged}"


def _box_points(xyxy: np.ndarray, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    x1, y1, x2, y2 = (round(float(v)) for v in xyxy)
    x1 = min(max(x1, 0), width - 1)
    x2 = min(max(x2, 0), width - 1)
    y1 = min(max(y1, 0), height - 1)
    y2 = min(max(y2, 0), height - 1)
    return (x1, y1), (x2, y2)


def _put_label(image: UInt8Array, text: str, anchor: tuple[int, int], bg: Color, fg: Color,
               above: bool = True) -> None:
    """Draw ``text`` on a filled rectangle whose bottom-left (``above``) or top-left corner is ``anchor``.

    The rectangle is moved as needed to stay inside the image: below the anchor when there is no room
    above, and left when it would run past the right edge.
    """
    height, width = image.shape[:2]
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, _FONT_SCALE, _FONT_THICKNESS)
    box_w = text_w + 2 * _LABEL_PAD
    box_h = text_h + baseline + 2 * _LABEL_PAD
    left = min(max(anchor[0], 0), max(width - box_w, 0))
    top = anchor[1] - box_h if above else anchor[1]
    if top < 0:
        top = anchor[1]
    top = min(max(top, 0), max(height - box_h, 0))
    cv2.rectangle(image, (left, top), (left + box_w - 1, top + box_h - 1), bg, thickness=cv2.FILLED)
    origin = (left + _LABEL_PAD, top + _LABEL_PAD + text_h)
    cv2.putText(image, text, origin, _FONT, _FONT_SCALE, fg, _FONT_THICKNESS, cv2.LINE_AA)


def _draw_order(obs: TrackObservation) -> tuple[bool, bool]:
    # Confirmed over tentative, DEFECT over everything, so a flagged part's box is never hidden.
    return obs.verdict is Verdict.DEFECT, obs.state is TrackState.CONFIRMED


def draw_annotations(image: np.ndarray, result: FrameResult) -> UInt8Array:
    """Return a copy of ``image`` with ``result`` drawn on it; ``image`` itself is not modified.

    Drawn, bottom to top: the patch anomaly maps of scored crops (only what is over the threshold is
    coloured); detections that matched no track (thin grey boxes); every track seen this frame
    (``detection_index >= 0``) with a box coloured by verdict (:data:`VERDICT_COLORS`), 1 px when tentative
    and 2 px otherwise, and a label ``#<id> [<track score>] [DEFECT]``; a header ``frame N  tracks M
    flagged K`` at the top-left, where M counts tracks seen this frame and K those with a DEFECT verdict.
    Labels are clamped to stay inside the image.

    Args:
        image: ``(H, W, 3)`` uint8 BGR, normally ``result.frame.image``.
        result: the frame's detections and tracks.

    Returns:
        ``(H, W, 3)`` uint8 BGR annotated copy.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_annotations: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    out: UInt8Array = np.ascontiguousarray(image).copy()
    if result.patch_maps:  # under the boxes: where each scored part is over its threshold
        out = overlay_patch_maps(out, result.patch_maps)
    height, width = out.shape[:2]
    visible = [obs for obs in result.tracks if _is_visible(obs)]

    matched = {obs.detection_index for obs in visible}
    for row, xyxy in enumerate(result.detections.xyxy):
        if row not in matched:
            p1, p2 = _box_points(xyxy, width, height)
            cv2.rectangle(out, p1, p2, UNMATCHED_COLOR, 1)

    ordered = sorted(visible, key=_draw_order)
    for obs in ordered:
        thickness = 2 if obs.state is TrackState.CONFIRMED else 1
        p1, p2 = _box_points(obs.xyxy, width, height)
        cv2.rectangle(out, p1, p2, VERDICT_COLORS[obs.verdict], thickness)
    # Labels after all boxes so no box line crosses a label.
    for obs in ordered:
        p1, _ = _box_points(obs.xyxy, width, height)
        _put_label(out, _label_text(obs), p1, VERDICT_COLORS[obs.verdict], _TEXT_COLORS[obs.verdict])

    _put_label(out, _header_text(result), (0, 0), _HEADER_BG, _HEADER_FG, above=False)
    return out


# ---------------------------------------------------------------------------------------------------------
# Sinks


def video_space_needed(width: int, height: int, frames_written: int) -> int:
    """Bytes of free disk an :class:`AnnotatedVideoSink` wants before writing one more frame.

    Two uncompressed frames (an encoded frame is smaller), the container's index (MP4 keeps about 16 bytes
    per frame and writes it on close) and 1 MiB of slack for the other outputs on the same disk.
    """
    return 2 * width * height * 3 + 16 * (frames_written + 1) + (1 << 20)


class AnnotatedVideoSink:
    """Writes every frame, annotated by :func:`draw_annotations`, to a video file.

    The ``cv2.VideoWriter`` opens on the first frame, sized from that frame; a sink that never receives a
    frame creates no file. Later frames of a different size are resized to the first frame's size (a
    warning is logged once).

    OpenCV reports no write errors, so before each frame the sink checks the free space on the video's
    disk. It stops with :class:`SinkError` while there is still room for the container's index
    (:func:`video_space_needed`), so the video written so far stays playable once the sink is closed.

    Args:
        path: output video file; its directory is created if needed.
        fps: frame rate stored in the file, > 0.
        fourcc: four-character codec code. ``"mp4v"`` suits ``.mp4``; ``"MJPG"`` with ``.avi`` works
            with every OpenCV build.

    Raises:
        ValueError: ``fps`` is not a positive finite number or ``fourcc`` is not 4 characters.
        SinkError: the directory cannot be created or written (at construction), the video writer
            does not open (at the first :meth:`write`), or the disk is nearly full (at any :meth:`write`).
    """

    def __init__(self, path: Path, fps: float, fourcc: str = "mp4v") -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"AnnotatedVideoSink: fps must be a positive finite number, got {fps}")
        if len(fourcc) != 4:
            raise ValueError(f"AnnotatedVideoSink: fourcc must be 4 characters (e.g. 'mp4v', 'MJPG'), "
                             f"got {fourcc!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.fourcc = fourcc
        check_writable_dir(self.path.parent)
        if self.path.is_dir():
            raise SinkError(self.path, "the video's path is a directory", "remove it or choose another --out")
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the video, set by the first frame
        self._warned_resize = False
        self._closed = False
        self.frames_written = 0

    def _open(self, width: int, height: int) -> cv2.VideoWriter:
        keep_previous(self.path)
        code = cv2.VideoWriter.fourcc(*self.fourcc)
        writer = cv2.VideoWriter(str(self.path), code, self.fps, (width, height))
        if not writer.isOpened():
            writer.release()
            raise SinkError(self.path,
                            f"cv2.VideoWriter did not open with codec {self.fourcc!r} at {width}x{height}",
                            'try fourcc "MJPG" with a .avi file, or "mp4v" with a .mp4 file')
        return writer

    def write(self, result: FrameResult) -> None:
        """Annotate ``result.frame.image`` and append it to the video."""
        if self._closed:
            raise _closed_error(self, self.path)
        image: np.ndarray = draw_annotations(result.frame.image, result)
        height, width = image.shape[:2]
        video_w, video_h = self._size or (width, height)
        self._check_space(video_space_needed(video_w, video_h, self.frames_written))
        if self._writer is None:
            self._writer = self._open(width, height)
            self._size = (width, height)
        size = self._size
        if size is not None and size != (width, height):
            if not self._warned_resize:
                logger.warning("%s: frame %d is %dx%d but the video is %dx%d; resizing frames to fit",
                               self.path, result.frame.index, width, height, size[0], size[1])
                self._warned_resize = True
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames_written += 1

    def _check_space(self, needed: int) -> None:
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:  # no free-space figure (e.g. an unusual file system): rely on the writer
            return
        free = stat.f_bavail * stat.f_frsize
        if free < needed:
            raise SinkError(self.path, f"disk nearly full ({free // 1024} KiB free, {needed // 1024} KiB needed "
                            f"to go on writing the video)",
                            "free space on that disk or choose another output directory")

    def close(self) -> None:
        """Finish the video file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class _JsonLines:
    """A file of JSON lines this run owns: truncated when opened, appended in whole lines, flushed (and, when
    asked, fsynced) after each append, closed once."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = _open_text(self.path, what)

    def _check_open(self) -> None:
        if self._file is None:
            raise _closed_error(self, self.path)

    def _append(self, lines: str, fsync: bool) -> None:
        self._check_open()
        assert self._file is not None
        try:
            self._file.write(lines)
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise _write_error(self.path, exc) from exc

    def close(self) -> None:
        """Flush and close the file. Idempotent."""
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.close()
        except OSError as exc:
            raise _write_error(self.path, exc) from exc


class EventsJsonlSink(_JsonLines):
    """Writes each :class:`~pipeline.types.AnomalyEvent` as one JSON object per line.

    The file is truncated when the sink is built (it belongs to this run) and flushed to disk after every
    write that carries events, so a file read while the pipeline runs is complete up to the last event.

    Args:
        path: output ``.jsonl`` file; its directory is created if needed.

    Raises:
        SinkError: the file or its directory cannot be created.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, "events")
        self.events_written = 0

    def write(self, result: FrameResult) -> None:
        """Append one line per event in ``result.events``; nothing when there are none."""
        self._check_open()
        if not result.events:
            return
        self._append("".join(json.dumps(event.to_json()) + "\n" for event in result.events), fsync=True)
        self.events_written += len(result.events)


class MotTxtSink:
    """Writes tracks in MOTChallenge format: ``frame,id,x,y,w,h,conf,-1,-1,-1``, one line per track.

    Only tracks that are CONFIRMED and matched a detection this frame (``detection_index >= 0``) are
    written. ``frame`` is 1-based (``result.frame.index + 1``), ``x,y,w,h`` is the ``tlwh`` box with 2
    decimals, ``conf`` is the matched detection's confidence (``1`` when ``result.detections`` has no such
    row). The file is truncated when the sink is built, flushed every :data:`MOT_FLUSH_EVERY` frames and
    on :meth:`close`.

    Args:
        path: output ``.txt`` file; its directory is created if needed.

    Raises:
        SinkError: the file or its directory cannot be created.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = _open_text(self.path, "MOT")
        self._frames = 0

    @staticmethod
    def format_lines(result: FrameResult) -> list[str]:
        """The MOT lines (without newline) for one frame, in ``result.tracks`` order."""
        lines = []
        n_det = len(result.detections)
        for obs in result.tracks:
            if obs.state is not TrackState.CONFIRMED or obs.detection_index < 0:
                continue
            conf = float(result.detections.confidence[obs.detection_index]) if obs.detection_index < n_det \
                else 1.0
            x1, y1, x2, y2 = (float(v) for v in obs.xyxy)
            lines.append(f"{result.frame.index + 1},{obs.track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},"
                         f"{y2 - y1:.2f},{conf:.4g},-1,-1,-1")
        return lines

    def write(self, result: FrameResult) -> None:
        """Append this frame's lines."""
        if self._file is None:
            raise _closed_error(self, self.path)
        lines = self.format_lines(result)
        try:
            if lines:
                self._file.write("\n".join(lines) + "\n")
            self._frames += 1
            if self._frames % MOT_FLUSH_EVERY == 0:
                self._file.flush()
        except OSError as exc:
            raise _write_error(self.path, exc) from exc

    def close(self) -> None:
        """Flush and close the file. Idempotent."""
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.close()
        except OSError as exc:
            raise _write_error(self.path, exc) from exc


def evidence_image(result: FrameResult, event: AnomalyEvent) -> UInt8Array:
    """The flagged part of ``event`` in ``result``'s frame: with a patch map, the region the encoder saw and beside
    it the same region under its anomaly map (its worst 10% of patches coloured); else the box with some context."""
    index = {obs.track_id: obs.detection_index for obs in result.tracks}.get(event.track_id, -1)
    patch_map = next((m for m in result.patch_maps if index >= 0 and m.detection_index == index), None)
    image = result.frame.image
    x1, y1, x2, y2 = (round(float(v)) for v in (patch_map.xyxy if patch_map is not None else event.xyxy))
    pad = 0 if patch_map is not None else max(4, (x2 - x1) // 5)
    window = (slice(max(0, y1 - pad), max(0, y2 + pad)), slice(max(0, x1 - pad), max(0, x2 + pad)))
    crop = image[window]
    if patch_map is not None and crop.size:
        crop = np.hstack([crop, overlay_patch_maps(image, [patch_map], worst=0.1)[window]])
    return crop


SHEET_NAME = "sheet.png"
SHEET_PARTS = 24
_THUMB_H, _THUMB_MAX_W, _CAPTION_H, _SHEET_COLUMNS = 128, 288, 18, 4


def contact_sheet(tiles: Sequence[tuple[str, UInt8Array]], columns: int = _SHEET_COLUMNS) -> UInt8Array:
    """One image of ``tiles`` (caption, image), each scaled to :data:`_THUMB_H` px high (at most
    :data:`_THUMB_MAX_W` wide) over its caption, ``columns`` to a row."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    cells = []
    for caption, image in tiles:
        h, w = image.shape[:2]
        scale = min(_THUMB_H / max(h, 1), _THUMB_MAX_W / max(w, 1))
        thumb = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        cell = np.zeros((_THUMB_H + _CAPTION_H, _THUMB_MAX_W, 3), np.uint8)
        cell[:thumb.shape[0], :thumb.shape[1]] = thumb
        cv2.putText(cell, caption, (2, _THUMB_H + _CAPTION_H - 5), _FONT, _FONT_SCALE, _HEADER_FG, _FONT_THICKNESS,
                    cv2.LINE_AA)
        cells.append(cell)
    while len(cells) % columns and len(cells) > columns:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.hstack(cells[i:i + columns]) for i in range(0, len(cells), columns)]
    return np.vstack(rows)


class EvidenceSink:
    """Saves :func:`evidence_image` of every event to the path the event names (``event.evidence``), before the
    events file and the alert sinks see it (put it first among the sinks). A failed write is logged and the run
    goes on: the event keeps its path, and an alert goes without its image.

    On :meth:`close` the last ``sheet_parts`` flagged parts are laid out on one contact sheet,
    ``FOLDER/sheet.png`` (each part beside its anomaly map, captioned with its track, score and threshold).
    """

    def __init__(self, folder: Path, sheet_parts: int = SHEET_PARTS) -> None:
        self.folder = Path(folder)
        check_writable_dir(self.folder)
        self.saved = 0
        self._tiles: collections.deque[tuple[str, UInt8Array]] = collections.deque(maxlen=sheet_parts)

    @property
    def sheet_path(self) -> Path:
        return self.folder / SHEET_NAME

    def write(self, result: FrameResult) -> None:
        for event in result.events:
            crop = evidence_image(result, event)
            if crop.size and self._tiles.maxlen:
                self._tiles.append((f"track {event.track_id}  {event.score:.3g} > {event.threshold:.3g}", crop))
            if not event.evidence:
                continue
            try:
                ok = bool(crop.size) and cv2.imwrite(event.evidence, crop)
            except cv2.error:
                ok = False
            if ok:
                self.saved += 1
            else:
                logger.warning("could not save the evidence image %s (is the disk full?)", event.evidence)

    def close(self) -> None:
        tiles, self._tiles = list(self._tiles), collections.deque(maxlen=self._tiles.maxlen)
        if not tiles:
            return
        tmp = self.sheet_path.with_name(f".{SHEET_NAME}.tmp.png")
        try:
            if not cv2.imwrite(str(tmp), contact_sheet(tiles)):
                raise OSError("the PNG encoder failed")
            os.replace(tmp, self.sheet_path)
        except (OSError, cv2.error) as exc:
            tmp.unlink(missing_ok=True)
            logger.warning("could not save the contact sheet %s: %s", self.sheet_path, exc)


class IdentitiesJsonlSink(_JsonLines):
    """``identities.jsonl``: one line per track handed to the cross-camera gallery (its global id, its name when
    it matched an enrolled one, and where and when it was seen before). Lines are written as the gallery decides
    (:meth:`record`, given to :class:`pipeline.identity.IdentityStage`), flushed each time; :meth:`write` does
    nothing. :meth:`close`, after the last tracks of the stream are decided (and after the MOT sink closed), also
    writes ``tracks_global.txt`` beside ``tracks.txt``: its rows with the global id in place of the camera's track
    id (tracks too short for the gallery left out), a MOTChallenge file in which one person has one id on every
    camera."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "identities")
        self.written = 0
        self.global_ids: dict[int, int] = {}

    def record(self, event: IdentityEvent) -> None:
        self._append(event.to_json() + "\n", fsync=False)
        self.written += 1
        self.global_ids[event.track_id] = event.global_id

    def write(self, result: FrameResult) -> None:
        """Nothing per frame: identities are decided when tracks end."""

    def close(self) -> None:
        was_open = self._file is not None
        super().close()
        mot = self.path.parent / "tracks.txt"
        if was_open and mot.is_file():
            self._write_global(mot, self.path.parent / "tracks_global.txt")

    def _write_global(self, mot: Path, out: Path) -> None:
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            with open(mot, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
                for line in src:
                    frame, track, rest = line.split(",", 2)
                    gid = self.global_ids.get(int(track))
                    if gid is not None:
                        dst.write(f"{frame},{gid},{rest}")
            tmp.replace(out)
        except (OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            logger.warning("could not write %s from %s: %s", out, mot, exc)


class SinkGroup:
    """Several sinks behind one :class:`Sink`.

    :meth:`write` gives the result to every sink even when one raises, then re-raises the first error, so
    a failing video writer does not cost the events file its events. :meth:`close` likewise closes every
    sink and then re-raises the first error.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self._closed = False

    def write(self, result: FrameResult) -> None:
        """Write ``result`` to every sink, in order."""
        if self._closed:
            raise _closed_error(self)
        self._each(lambda sink: sink.write(result))

    def close(self) -> None:
        """Close every sink, in order. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._each(lambda sink: sink.close())

    def _each(self, call: Callable[[Sink], None]) -> None:
        first: Exception | None = None
        for sink in self.sinks:
            try:
                call(sink)
            except Exception as exc:
                if first is None:
                    first = exc
                else:
                    logger.error("%s failed as well: %s", type(sink).__name__, exc)
        if first is not None:
            raise first
