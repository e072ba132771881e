"""Typed records passed between pipeline stages.

Every record checks its own shapes and dtypes when it is built, so a stage that hands over a wrong
array fails at the hop where the mistake was made, with a message saying expected vs actual.
Boxes are always ``xyxy`` pixel coordinates (x1, y1, x2, y2), float32, x2 > x1 and y2 > y1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
UInt8Array = npt.NDArray[np.uint8]


class RecordShapeError(ValueError):
    """A record was built from arrays of the wrong shape or dtype."""


def _check(cond: bool, record: str, what: str, expected: str, actual: object) -> None:
    if not cond:
        raise RecordShapeError(f"{record}: {what} must be {expected}, got {actual}")


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based position in the source (for files: the decoded frame number).
        timestamp: capture time in seconds. For files, the media position (frame index / fps);
            for live sources, wall-clock time (``time.time()``) when the frame was read.
        image: ``(H, W, 3)`` uint8 BGR (OpenCV order).
    """

    index: int
    timestamp: float
    image: UInt8Array

    def __post_init__(self) -> None:
        img = self.image
        _check(isinstance(img, np.ndarray), "Frame", "image", "a numpy array", type(img).__name__)
        _check(img.dtype == np.uint8, "Frame", "image dtype", "uint8", img.dtype)
        _check(img.ndim == 3 and img.shape[2] == 3, "Frame", "image shape", "(H, W, 3)", img.shape)
        _check(img.shape[0] > 0 and img.shape[1] > 0, "Frame", "image size", "non-empty", img.shape)
        _check(self.index >= 0, "Frame", "index", ">= 0", self.index)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def _as_boxes(boxes: object, record: str) -> FloatArray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    _check(arr.ndim == 2 and arr.shape[1] == 4, record, "xyxy shape", "(N, 4)", arr.shape)
    _check(bool(np.all(np.isfinite(arr))), record, "xyxy values", "finite", "NaN or inf")
    if len(arr):
        _check(bool(np.all(arr[:, 2] > arr[:, 0]) and np.all(arr[:, 3] > arr[:, 1])), record,
               "xyxy boxes", "x2 > x1 and y2 > y1", arr[(arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])])
    return arr


@dataclass(frozen=True)
class Detections:
    """Objects found in one frame.

    Attributes:
        xyxy: ``(N, 4)`` float32 boxes in pixels.
        confidence: ``(N,)`` float32 in [0, 1].
        class_id: ``(N,)`` int64; -1 when the detector has no classes.
    """

    xyxy: FloatArray
    confidence: FloatArray
    class_id: IntArray

    def __post_init__(self) -> None:
        xyxy = _as_boxes(self.xyxy, "Detections")
        conf = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        cls = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        n = len(xyxy)
        _check(conf.shape == (n,), "Detections", "confidence shape", f"({n},)", conf.shape)
        _check(cls.shape == (n,), "Detections", "class_id shape", f"({n},)", cls.shape)
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(self, "class_id", cls)

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def select(self, keep: npt.NDArray[np.bool_] | IntArray) -> Detections:
        return Detections(self.xyxy[keep], self.confidence[keep], self.class_id[keep])


@dataclass(frozen=True)
class CropBatch:
    """Crops of one frame, resized for the encoder, one per detection.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 RGB, all the encoder's input size.
        xyxy: ``(N, 4)`` float32: the region of the frame each crop was cut from.
    """

    images: UInt8Array
    xyxy: FloatArray

    def __post_init__(self) -> None:
        imgs = self.images
        _check(imgs.dtype == np.uint8, "CropBatch", "images dtype", "uint8", imgs.dtype)
        _check(imgs.ndim == 4 and imgs.shape[3] == 3, "CropBatch", "images shape", "(N, H, W, 3)", imgs.shape)
        xyxy = _as_boxes(self.xyxy, "CropBatch")
        _check(len(xyxy) == len(imgs), "CropBatch", "xyxy rows", f"{len(imgs)} (one per crop)", len(xyxy))
        object.__setattr__(self, "xyxy", xyxy)

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Embeddings:
    """Encoder output for a batch of crops.

    Attributes:
        vectors: ``(N, D)`` float32 L2-normalised embeddings, one row per crop.
        patches: ``(N, P, C)`` float32 local features (P patches per crop, row-major over the ``grid``),
            or None when the encoder has no patch output.
        grid: ``(h, w)`` of the patch grid, ``h * w == P``; ``(0, 0)`` without patches.
    """

    vectors: FloatArray
    patches: FloatArray | None = None
    grid: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        v = np.asarray(self.vectors, dtype=np.float32)
        _check(v.ndim == 2 and v.shape[1] > 0, "Embeddings", "vectors shape", "(N, D) with D > 0", v.shape)
        _check(bool(np.all(np.isfinite(v))), "Embeddings", "vectors", "finite", "NaN or inf")
        object.__setattr__(self, "vectors", v)
        if self.patches is not None:
            p = np.asarray(self.patches, dtype=np.float32)
            h, w = self.grid
            _check(p.ndim == 3 and p.shape[0] == len(v) and p.shape[1] == h * w and p.shape[2] > 0,
                   "Embeddings", "patches shape", f"({len(v)}, {h * w}, C) for a {h}x{w} grid", p.shape)
            _check(bool(np.all(np.isfinite(p))), "Embeddings", "patches", "finite", "NaN or inf")
            object.__setattr__(self, "patches", p)

    def select(self, keep: npt.NDArray[np.bool_] | IntArray) -> Embeddings:
        return Embeddings(self.vectors[keep], None if self.patches is None else self.patches[keep], self.grid)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


class TrackState(str, Enum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    LOST = "lost"
    REMOVED = "removed"


class Verdict(str, Enum):
    PENDING = "pending"  # not enough frames scored yet
    GOOD = "good"
    DEFECT = "defect"
    UNSCORED = "unscored"  # no bank: anomaly stage off


@dataclass(frozen=True)
class TrackObservation:
    """One track as seen in one frame, after the tracker and the anomaly stage.

    Attributes:
        track_id: unique per tracker instance, starting at 1.
        xyxy: ``(4,)`` float32 box in this frame.
        state: lifecycle state.
        detection_index: row of the frame's Detections this track matched, or -1 if not seen.
        score: this frame's anomaly score (k-NN distance), NaN when unscored.
        track_score: the aggregate score over the frames seen so far, NaN when unscored.
        verdict: the part's verdict so far.
    """

    track_id: int
    xyxy: FloatArray
    state: TrackState
    detection_index: int
    score: float = float("nan")
    track_score: float = float("nan")
    verdict: Verdict = Verdict.UNSCORED

    def __post_init__(self) -> None:
        box = np.asarray(self.xyxy, dtype=np.float32).reshape(-1)
        _check(box.shape == (4,), "TrackObservation", "xyxy shape", "(4,)", box.shape)
        x1, y1, x2, y2 = box.tolist()  # one box: plain floats check faster than array reductions
        _check(all(map(math.isfinite, (x1, y1, x2, y2))), "TrackObservation", "xyxy values", "finite", "NaN or inf")
        _check(x2 > x1 and y2 > y1, "TrackObservation", "xyxy box", "x2 > x1 and y2 > y1", box)
        _check(self.track_id >= 1, "TrackObservation", "track_id", ">= 1", self.track_id)
        object.__setattr__(self, "xyxy", box)


@dataclass(frozen=True)
class AnomalyEvent:
    """One flagged part: emitted once per track, when its verdict becomes DEFECT."""

    stream: str
    track_id: int
    frame_index: int
    timestamp: float
    score: float
    threshold: float
    frames_scored: int
    xyxy: tuple[float, float, float, float]
    evidence: str = ""  # path of the saved crop, "" when none was saved
    global_id: int | None = None  # the part's identity across cameras, when [gallery] is on and it has one yet
    name: str | None = None  # the enrolled name its identity matched

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "event": "part_flagged",
            "stream": self.stream,
            "track_id": self.track_id,
            "frame_index": self.frame_index,
            "timestamp": round(self.timestamp, 6),
            "score": round(self.score, 6),
            "threshold": round(self.threshold, 6),
            "frames_scored": self.frames_scored,
            "xyxy": [round(v, 2) for v in self.xyxy],
            "evidence": self.evidence,
        }
        if self.global_id is not None:
            out.update(global_id=self.global_id, name=self.name)
        return out


@dataclass(frozen=True)
class PatchMap:
    """A crop's patch anomaly scores: ``grid`` ``(h, w)`` float32 covering ``xyxy``, the frame region the
    crop was cut from (padded box), with the ``threshold`` they are judged against."""

    detection_index: int
    xyxy: tuple[float, float, float, float]
    grid: FloatArray
    threshold: float

    def __post_init__(self) -> None:
        g = np.asarray(self.grid, np.float32)
        _check(g.ndim == 2 and g.size > 0, "PatchMap", "grid shape", "(h, w)", g.shape)
        object.__setattr__(self, "grid", g)


@dataclass
class FrameResult:
    """Everything the pipeline produced for one frame: what sinks consume."""

    frame: Frame
    detections: Detections
    tracks: list[TrackObservation] = field(default_factory=list)
    events: list[AnomalyEvent] = field(default_factory=list)
    patch_maps: list[PatchMap] = field(default_factory=list)  # scored crops of a patch-level bank
