"""The tracker's state: tracks, their lifecycle and association of each frame's detections.

Appearance + motion tracking in the manner of ByteTrack / BoT-SORT / StrongSORT:

- Motion: each track carries a constant-velocity Kalman filter on ``(cx, cy, w, h)`` (:mod:`.kalman`), stepped
  by the elapsed capture time, optionally corrected for camera motion (:mod:`.motion`).
- Appearance: each track keeps an exponential moving average of its embeddings and its last ``gallery_size``
  embeddings; the appearance distance is to the average (``appearance = "ema"``) or the nearest stored
  embedding (``"gallery"``).
- Association, per frame (all passes optimal assignment, never across class ids):

  1. confirmed and lost tracks vs high-score detections (``confidence >= high_score``), fused cost of
     appearance and ``1 - IoU`` (``fusion``), gated by squared Mahalanobis distance (``max_mahalanobis``),
     appearance (``max_cosine_distance``) and overlap with the predicted box (``min_iou``);
     Lost tracks only match detections within ``max_height_ratio`` of their last box's height;
  2. re-identification: lost tracks still unmatched vs high-score detections still unmatched, by appearance
     alone (``reid_max_cosine_distance``), with no Kalman gate, only a loose speed limit (``reid_max_speed``),
     so a track whose prediction drifted during a long absence is found again; a pair must also be
     unambiguous (``reid_margin``): with weak embeddings every object looks alike, and nothing is re-identified;
  3. tracks seen in the previous frame vs low-score detections (``low_score <= confidence < high_score``)
     by IoU only (``low_min_iou``): a partly occluded object keeps its track (ByteTrack);
  4. tentative tracks vs the high-score detections left, by IoU (``min_iou``);
  5. high-score detections left with ``confidence >= new_track_score`` start tentative tracks.

Lifecycle: tentative -> confirmed (after ``min_hits`` consecutive hits) -> lost (unmatched) -> removed (lost
longer than ``max_lost_seconds``); a tentative track is removed at its first miss. With ``duplicate_iou``, a
track seen in this frame and a lost track whose predicted box overlaps it by more are one object, and the younger
of the two is removed (ByteTrack's ``remove_duplicate_stracks``). Removed tracks are freed;
each track stores at most ``gallery_size`` embeddings, so memory is bounded by the number of live tracks.

Detections whose embedding row is all zeros are treated as not embedded: they are matched on motion alone and
do not change a track's appearance.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.config import TrackerConfig
from pipeline.tracking import kalman
from pipeline.tracking.gates import VideoGates
from pipeline.tracking.matching import (
    GATED,
    appearance_cost,
    distinctive,
    duplicate_tracks,
    fuse_min,
    fuse_weighted,
    gate_classes,
    gate_height_ratio,
    gate_mahalanobis,
    has_feature,
    iou_cost,
    linear_assignment,
)
from pipeline.tracking.motion import CameraMotion
from pipeline.types import Detections, Embeddings, TrackObservation, TrackState

log = logging.getLogger(__name__)



@dataclass
class _Track:
    track_id: int
    class_id: int
    mean: np.ndarray  # (8,) float64 Kalman state (cx, cy, w, h, vcx, vcy, vw, vh), pixels and pixels per second
    cov: np.ndarray  # (8, 8) float64
    last_seen: float  # capture time of the last matched detection, seconds
    last_xyxy: np.ndarray  # (4,) the last matched detection's box
    ema: np.ndarray | None  # (D,) unit-norm smoothed embedding; None until the track sees an embedded detection
    gallery: deque[np.ndarray]  # the last gallery_size embeddings
    state: TrackState = TrackState.TENTATIVE
    hits: int = 1
    born: float = 0.0  # capture time of the first detection

    @property
    def xyxy(self) -> np.ndarray:
        return kalman.cxcywh_to_xyxy(self.mean[:4])[0].astype(np.float32)


@dataclass(frozen=True)
class TrackerOutput:
    observations: list[TrackObservation]  # every live track, seen this frame or not
    started: list[int]  # ids confirmed in this frame
    ended: list[int]  # ids removed in this frame


Pairs = list[tuple[int, int]]


def _heights(xyxy: np.ndarray) -> np.ndarray:
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return b[:, 3] - b[:, 1]


class Tracker:
    """Appearance + motion multi-object tracker. ``update()`` once per frame, in timestamp order;
    ``reset()`` to reuse; ``flush()`` at the end of a stream.

    Takes its config section, ``cfg`` (:class:`~pipeline.config.TrackerConfig`, ``[tracker]``), checked when it was
    built; ``appearance_region``, ``color_weight`` and ``reid_model`` there say what the tracker is fed, not how it
    tracks. Its keys:
        appearance_weight: weight of the appearance distance vs ``1 - IoU`` in the first pass
            (``fusion = "weighted"``).
        max_cost: pairs of the first pass costing more stay unmatched.
        max_cosine_distance: appearance gate of the first pass (``fusion = "min"``: the distance below which
            appearance may lower the cost).
        min_iou: overlap gate of the first pass and of the tentative pass.
        min_hits: consecutive matches before a track is confirmed.
        max_lost_seconds: a lost track unseen this long is removed.
        gallery_momentum: ``ema = momentum * ema + (1 - momentum) * embedding``.
        high_score: detections at least this confident take part in the first pass and may start tracks.
        low_score: detections below ``high_score`` but at least this confident only extend tracks seen in the
            previous frame (step 3); less confident ones are ignored.
        new_track_score: an unmatched high-score detection needs this confidence to start a track.
        low_min_iou: overlap needed to match a low-score detection.
        appearance: ``"ema"`` or ``"gallery"`` (nearest of the last ``gallery_size`` embeddings).
        gallery_size: embeddings kept per track (``appearance = "gallery"``).
        fusion: ``"weighted"`` (``w * appearance + (1 - w) * (1 - IoU)``) or ``"min"`` (BoT-SORT).
        max_mahalanobis: motion gate of the first pass on the squared Mahalanobis distance (9.4877: chi-square
            95%, 4 degrees of freedom); 0 turns it off.
        reid_max_cosine_distance: a lost track is re-identified by a detection this close in appearance;
            0 turns re-identification off.
        reid_margin: re-identification needs the pair's distance to beat, by this much, the detection's distance
            to every other track and the track's distance to every other high-score detection (no ambiguity).
        reid_max_speed: re-identification motion limit, in box heights per second the object may have moved
            since it was last seen; 0 = no limit.
        max_height_ratio: a lost track is found again (first pass or re-identification) only by a detection
            whose height is within this factor of its last box's, either way: after a long absence the Kalman
            size uncertainty no longer bounds it; 0 = off.
        kalman_fps: frame rate at which one Kalman step has the standard per-frame process noise.
        std_weight_position: Kalman position and measurement noise, as a fraction of the box side per nominal
            frame (BoT-SORT: 1/20).
        std_weight_velocity: Kalman velocity noise, as a fraction of the box side per nominal frame.
        nsa: scale the measurement noise by ``1 - confidence`` (StrongSORT's NSA Kalman).
        cmc: camera-motion compensation, one of ``"none"``, ``"sparse"``, ``"ecc"``; needs ``frame_image``.
        cmc_downscale: frames are shrunk by this factor before estimating camera motion.
        duplicate_iou: a track seen now and a lost one whose predicted box overlaps it by more than this are one
            object, and the younger is removed (ByteTrack: 0.85); 0 = off.
        gates: ``"fixed"`` (``max_cosine_distance`` and ``reid_max_cosine_distance`` as set) or ``"video"``
            (measured on the stream's own frames, :mod:`pipeline.tracking.gates`; the set values hold until then).
    """

    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        cfg = cfg if cfg is not None else TrackerConfig()  # checked when it was built
        self.cfg = cfg
        self.appearance_weight = cfg.appearance_weight
        self.max_cost = cfg.max_cost
        self.max_cosine_distance = cfg.max_cosine_distance
        self.min_iou = cfg.min_iou
        self.min_hits = cfg.min_hits
        self.max_lost_seconds = cfg.max_lost_seconds
        self.gallery_momentum = cfg.gallery_momentum
        self.high_score = cfg.high_score
        self.low_score = cfg.low_score
        self.new_track_score = cfg.new_track_score
        self.low_min_iou = cfg.low_min_iou
        self.appearance = cfg.appearance
        self.gallery_size = cfg.gallery_size
        self.fusion = cfg.fusion
        self.max_mahalanobis = cfg.max_mahalanobis
        self.reid_max_cosine_distance = cfg.reid_max_cosine_distance
        self.reid_margin = cfg.reid_margin
        self.reid_max_speed = cfg.reid_max_speed
        self.max_height_ratio = cfg.max_height_ratio
        self.kalman_params = kalman.KalmanParams(cfg.std_weight_position, cfg.std_weight_velocity, cfg.kalman_fps)
        self.nsa = cfg.nsa
        self._cmc = CameraMotion(cfg.cmc, cfg.cmc_downscale) if cfg.cmc != "none" else None
        self.duplicate_iou = cfg.duplicate_iou
        self.video_gates = (VideoGates(cfg.max_cosine_distance, cfg.reid_max_cosine_distance)
                            if cfg.gates == "video" else None)
        self.reset()

    def reset(self) -> None:
        """Forget every track and restart ids at 1."""
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._last_ts: float | None = None
        if self._cmc is not None:
            self._cmc.reset()
        if self.video_gates is not None:
            self.video_gates.reset()
            self.max_cosine_distance, self.reid_max_cosine_distance = self.video_gates.gates

    @property
    def active_count(self) -> int:
        """Confirmed tracks currently seen or briefly lost."""
        return sum(t.state in (TrackState.CONFIRMED, TrackState.LOST) for t in self._tracks)

    @property
    def track_count(self) -> int:
        """Every track held in memory (tentative, confirmed and lost)."""
        return len(self._tracks)

    # -- per-frame steps ----------------------------------------------------------------------------------

    def _predict(self, dt: float) -> None:
        tracks = self._tracks
        if not tracks:
            return
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.cov for t in tracks])
        lost = np.array([t.state == TrackState.LOST for t in tracks])
        mean[lost, 6:8] = 0.0  # an unseen box keeps its size (ByteTrack / BoT-SORT)
        mean, cov = kalman.predict(mean, cov, dt, self.kalman_params)
        mean[:, 2:4] = np.maximum(mean[:, 2:4], kalman.MIN_SIDE)
        for t, m, c in zip(tracks, mean, cov, strict=True):
            t.mean, t.cov = m, c

    def _warp(self, affine: np.ndarray) -> None:
        if not self._tracks or np.allclose(affine, np.eye(2, 3)):
            return
        mean, cov = kalman.warp(np.stack([t.mean for t in self._tracks]),
                                np.stack([t.cov for t in self._tracks]), affine)
        for t, m, c in zip(self._tracks, mean, cov, strict=True):
            t.mean, t.cov = m, c

    def _boxes(self, rows: list[int]) -> np.ndarray:
        if not rows:
            return np.zeros((0, 4), np.float32)
        return kalman.cxcywh_to_xyxy(np.stack([self._tracks[i].mean[:4] for i in rows])).astype(np.float32)

    def _appearance(self, rows: list[int], feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Appearance distance of tracks ``rows`` to detection features, and which rows have any feature."""
        tracks = [self._tracks[i] for i in rows]
        known = np.array([t.ema is not None for t in tracks], bool)
        dim = feats.shape[1]
        ema = np.stack([t.ema if t.ema is not None else np.zeros(dim, np.float32) for t in tracks]) \
            if tracks else np.zeros((0, dim), np.float32)
        if self.appearance != "gallery":  # the moving average alone: no track's gallery is needed
            return appearance_cost([], ema, feats, self.appearance), known
        galleries = [np.stack(t.gallery) if t.gallery else np.zeros((1, dim), np.float32) for t in tracks]
        return appearance_cost(galleries, ema, feats, self.appearance), known

    def _last_heights(self, rows: list[int]) -> np.ndarray:
        last = [self._tracks[i].last_xyxy for i in rows]
        return np.array([np.float64(b[3]) - np.float64(b[1]) for b in last], np.float64)

    def _classes(self, rows: list[int]) -> np.ndarray:
        return np.array([self._tracks[i].class_id for i in rows], np.int64)

    def _first_pass(self, rows: list[int], cols: np.ndarray, dets: Detections, feats: np.ndarray,
                    det_known: np.ndarray) -> tuple[Pairs, list[int], np.ndarray]:
        """Confirmed and lost tracks vs high-score detections: fused appearance + motion cost."""
        if not rows or not len(cols):
            return [], rows, cols
        app, track_known = self._appearance(rows, feats[cols])
        known = track_known[:, None] & det_known[cols][None, :]
        iou_dist = iou_cost(self._boxes(rows), dets.xyxy[cols])
        if self.fusion == "weighted":
            cost = fuse_weighted(app, iou_dist, self.appearance_weight, self.max_cosine_distance, 1.0 - self.min_iou,
                                 known)
        else:
            cost = fuse_min(app, iou_dist, self.max_cosine_distance, 1.0 - self.min_iou, known)
            cost = np.where(iou_dist > 1.0 - self.min_iou, GATED, cost).astype(np.float32)
        if self.max_mahalanobis > 0:
            mean = np.stack([self._tracks[i].mean for i in rows])
            cov = np.stack([self._tracks[i].cov for i in rows])
            d2 = kalman.mahalanobis_sq(mean, cov, kalman.xyxy_to_cxcywh(dets.xyxy[cols]), self.kalman_params)
            cost = gate_mahalanobis(cost, d2, self.max_mahalanobis)
        cost = gate_classes(cost, self._classes(rows), dets.class_id[cols])
        lost = np.array([self._tracks[i].state == TrackState.LOST for i in rows])
        cost = gate_height_ratio(cost, self._last_heights(rows), _heights(dets.xyxy[cols]), self.max_height_ratio, lost)
        return self._assign(cost, rows, cols, self.max_cost)

    def _reid_pass(self, rows: list[int], cols: np.ndarray, high: np.ndarray, dets: Detections, feats: np.ndarray,
                   det_known: np.ndarray, timestamp: float) -> tuple[Pairs, list[int], np.ndarray]:
        """Lost tracks ``rows`` vs high-score detections ``cols`` by appearance alone (their prediction may have
        drifted), only where the match is unambiguous among all live tracks and all high-score detections."""
        if not rows or not len(cols) or self.reid_max_cosine_distance <= 0:
            return [], rows, cols
        # Rivals: every confirmed or lost track (tentative ones are too young to vouch for an identity).
        rivals = [i for i, t in enumerate(self._tracks) if t.state != TrackState.TENTATIVE or i in rows]
        app_all, track_known = self._appearance(rivals, feats[high])
        app_all = np.where(track_known[:, None] & det_known[high][None, :], app_all, np.inf)
        unique = distinctive(app_all, self.reid_margin)
        pick_rows = np.array([rivals.index(i) for i in rows], np.int64)
        pick_cols = np.searchsorted(high, cols)  # cols is a subset of high, both sorted
        app = app_all[np.ix_(pick_rows, pick_cols)]
        ok = unique[np.ix_(pick_rows, pick_cols)] & (app <= self.reid_max_cosine_distance)
        if self.reid_max_speed > 0:
            last = np.stack([self._tracks[i].last_xyxy for i in rows]).astype(np.float64)
            elapsed = np.array([max(0.0, timestamp - self._tracks[i].last_seen) for i in rows])
            height = last[:, 3] - last[:, 1]
            reach = height * (0.5 + self.reid_max_speed * elapsed)  # half a box of slack, then the speed limit
            last_c = kalman.xyxy_to_cxcywh(last)[:, :2]
            det_c = kalman.xyxy_to_cxcywh(dets.xyxy[cols])[:, :2]
            dist = np.linalg.norm(last_c[:, None, :] - det_c[None, :, :], axis=2)
            ok &= dist <= reach[:, None]
        cost = gate_classes(np.where(ok, app, GATED).astype(np.float32), self._classes(rows), dets.class_id[cols])
        cost = gate_height_ratio(cost, self._last_heights(rows), _heights(dets.xyxy[cols]), self.max_height_ratio)
        return self._assign(cost, rows, cols, self.reid_max_cosine_distance)

    def _iou_pass(self, rows: list[int], cols: np.ndarray, dets: Detections,
                  min_iou: float) -> tuple[Pairs, list[int], np.ndarray]:
        if not rows or not len(cols):
            return [], rows, cols
        iou_dist = iou_cost(self._boxes(rows), dets.xyxy[cols])
        cost = gate_classes(np.where(iou_dist > 1.0 - min_iou, GATED, iou_dist).astype(np.float32),
                            self._classes(rows), dets.class_id[cols])
        return self._assign(cost, rows, cols, 1.0 - min_iou)

    @staticmethod
    def _assign(cost: np.ndarray, rows: list[int], cols: np.ndarray,
                max_cost: float) -> tuple[Pairs, list[int], np.ndarray]:
        matches, un_rows, un_cols = linear_assignment(cost, max_cost)
        pairs = [(rows[r], int(cols[c])) for r, c in matches]
        return pairs, [rows[r] for r in un_rows], cols[un_cols]

    def _apply(self, pairs: Pairs, dets: Detections, feats: np.ndarray, det_known: np.ndarray,
               timestamp: float, with_appearance: bool) -> None:
        """Kalman-correct matched tracks with their detections (and, for high-score ones, their embeddings)."""
        if not pairs:
            return
        tracks = [self._tracks[ti] for ti, _ in pairs]
        di = np.array([d for _, d in pairs])
        mean, cov = kalman.update(np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]),
                                  kalman.xyxy_to_cxcywh(dets.xyxy[di]), self.kalman_params,
                                  dets.confidence[di] if self.nsa else None)
        m = self.gallery_momentum
        for t, d, mu, c in zip(tracks, di, mean, cov, strict=True):
            t.mean, t.cov = mu, c
            t.last_seen = timestamp
            t.last_xyxy = dets.xyxy[d].copy()
            t.hits += 1
            if with_appearance and det_known[d]:
                f = feats[d] / float(np.linalg.norm(feats[d]))
                t.gallery.append(f)
                e = f if t.ema is None else m * t.ema + (1.0 - m) * f
                t.ema = (e / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float32)

    def _new_track(self, dets: Detections, feats: np.ndarray, det_known: np.ndarray, d: int,
                   timestamp: float) -> _Track:
        mean, cov = kalman.initiate(kalman.xyxy_to_cxcywh(dets.xyxy[d]), self.kalman_params)
        gallery: deque[np.ndarray] = deque(maxlen=self.gallery_size)
        ema = None
        if det_known[d]:
            ema = (feats[d] / float(np.linalg.norm(feats[d]))).astype(np.float32)
            gallery.append(ema)
        t = _Track(self._next_id, int(dets.class_id[d]), mean[0], cov[0], timestamp, dets.xyxy[d].copy(), ema,
                   gallery, born=timestamp)
        self._next_id += 1
        return t

    def _remove_duplicates(self, det_of_track: dict[int, int], timestamp: float, started: list[int],
                           ended: list[int]) -> None:
        """Remove the younger of each seen and lost track pair that overlap by more than ``duplicate_iou``."""
        live = [t for t in self._tracks if t.state != TrackState.REMOVED]
        seen = [t for t in live if t.track_id in det_of_track]
        lost = [t for t in live if t.state == TrackState.LOST]
        if not seen or not lost:
            return
        same_class = np.array([t.class_id for t in seen])[:, None] == np.array([t.class_id for t in lost])[None, :]
        drop_seen, drop_lost = duplicate_tracks(
            np.stack([t.xyxy for t in seen]), np.stack([t.xyxy for t in lost]),
            np.array([timestamp - t.born for t in seen]), np.array([timestamp - t.born for t in lost]),
            self.duplicate_iou, same_class)
        drop = [t for t, d in zip(seen, drop_seen, strict=True) if d] + \
            [t for t, d in zip(lost, drop_lost, strict=True) if d]
        for t in drop:
            if t.track_id in started:
                started.remove(t.track_id)
            elif t.state != TrackState.TENTATIVE:
                ended.append(t.track_id)
            det_of_track.pop(t.track_id, None)
            t.state = TrackState.REMOVED

    def update(self, detections: Detections, embeddings: Embeddings, timestamp: float, *,
               frame_image: np.ndarray | None = None) -> TrackerOutput:
        """Associate one frame's detections with the tracks.

        Args:
            detections: the frame's boxes, confidences and class ids (``-1``: no classes).
            embeddings: one vector per detection (an all-zero row: not embedded).
            timestamp: capture time in seconds; frames must come in timestamp order.
            frame_image: ``(H, W, 3)`` uint8 BGR frame, needed only for camera-motion compensation (``cmc``).

        Returns:
            every live track with the detection it matched (or -1), the ids confirmed and those removed now.
        """
        if len(embeddings) != len(detections):
            raise ValueError(f"{len(detections)} detections but {len(embeddings)} embeddings")
        dt = 0.0 if self._last_ts is None else max(0.0, timestamp - self._last_ts)
        self._last_ts = timestamp if self._last_ts is None else max(self._last_ts, timestamp)
        self._predict(dt)
        if self._cmc is not None and frame_image is not None:
            self._warp(self._cmc.estimate(frame_image, detections.xyxy))

        tracks = self._tracks
        feats = embeddings.vectors
        det_known = has_feature(feats)
        if self.video_gates is not None:
            self.max_cosine_distance, self.reid_max_cosine_distance = self.video_gates.observe(
                detections.xyxy, feats, det_known)
        conf = detections.confidence
        high = np.flatnonzero(conf >= self.high_score)
        low = np.flatnonzero((conf >= self.low_score) & (conf < self.high_score))
        was = [t.state for t in tracks]
        confirmed_or_lost = [i for i, s in enumerate(was) if s in (TrackState.CONFIRMED, TrackState.LOST)]

        p1, left1, high_left = self._first_pass(confirmed_or_lost, high, detections, feats, det_known)
        self._apply(p1, detections, feats, det_known, timestamp, with_appearance=True)
        p2, _, high_left = self._reid_pass([i for i in left1 if was[i] == TrackState.LOST], high_left, high,
                                           detections, feats, det_known, timestamp)
        self._apply(p2, detections, feats, det_known, timestamp, with_appearance=True)
        p3, _, _ = self._iou_pass([i for i in left1 if was[i] == TrackState.CONFIRMED], low, detections,
                                  self.low_min_iou)
        self._apply(p3, detections, feats, det_known, timestamp, with_appearance=False)
        p4, _, high_left = self._iou_pass([i for i, s in enumerate(was) if s == TrackState.TENTATIVE], high_left,
                                          detections, self.min_iou)
        self._apply(p4, detections, feats, det_known, timestamp, with_appearance=True)

        det_of_track = {tracks[ti].track_id: d for ti, d in (*p1, *p2, *p3, *p4)}
        started: list[int] = []
        ended: list[int] = []
        for t in tracks:
            if t.track_id in det_of_track:
                if t.state == TrackState.TENTATIVE and t.hits >= self.min_hits:
                    t.state = TrackState.CONFIRMED
                    started.append(t.track_id)
                elif t.state == TrackState.LOST:
                    t.state = TrackState.CONFIRMED
            elif t.state == TrackState.TENTATIVE or timestamp - t.last_seen > self.max_lost_seconds:
                if t.state != TrackState.TENTATIVE:
                    ended.append(t.track_id)
                t.state = TrackState.REMOVED
            else:
                t.state = TrackState.LOST

        for d in high_left:
            if conf[d] < self.new_track_score:
                continue
            t = self._new_track(detections, feats, det_known, int(d), timestamp)
            if self.min_hits <= 1:
                t.state = TrackState.CONFIRMED
                started.append(t.track_id)
            tracks.append(t)
            det_of_track[t.track_id] = int(d)

        if self.duplicate_iou > 0:
            self._remove_duplicates(det_of_track, timestamp, started, ended)
        self._tracks = [t for t in tracks if t.state != TrackState.REMOVED]
        boxes = self._boxes(list(range(len(self._tracks))))  # every track's box in one vectorised step
        observations = [TrackObservation(t.track_id, boxes[i], t.state, det_of_track.get(t.track_id, -1))
                        for i, t in enumerate(self._tracks)]
        return TrackerOutput(observations, started, ended)

    def flush(self) -> list[int]:
        """End every remaining track (end of stream); returns the ids of confirmed ones."""
        ended = [t.track_id for t in self._tracks if t.state != TrackState.TENTATIVE]
        self._tracks = []
        return ended
