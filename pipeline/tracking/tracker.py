"""The tracker's state: tracks, their lifecycle and association of each frame's detections.

Each frame, tracks are predicted forward at constant velocity (by capture timestamp), then matched to the
frame's detections by a fused cost of appearance (cosine distance between the detection's embedding and
the track's smoothed embedding) and box overlap, with optimal assignment.
Lifecycle: tentative -> confirmed (after ``min_hits`` consecutive hits) -> lost (unmatched) -> removed
(lost longer than ``max_lost_seconds``; a tentative track is removed at its first miss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.tracking.matching import cosine_distance_matrix, fused_cost, iou_matrix, linear_assignment
from pipeline.types import Detections, Embeddings, TrackObservation, TrackState


@dataclass
class _Track:
    track_id: int
    xyxy: np.ndarray  # (4,) last matched box
    feature: np.ndarray  # (D,) smoothed embedding, unit norm
    last_ts: float
    state: TrackState = TrackState.TENTATIVE
    hits: int = 1
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # box centre, px per second

    def predict(self, ts: float) -> np.ndarray:
        """The last box shifted by the centre velocity (size kept, so the box stays valid)."""
        dx, dy = self.velocity * np.float32(max(0.0, ts - self.last_ts))
        return (self.xyxy + np.array([dx, dy, dx, dy], np.float32)).astype(np.float32)


@dataclass(frozen=True)
class TrackerOutput:
    observations: list[TrackObservation]  # every live track, seen this frame or not
    started: list[int]  # ids confirmed in this frame
    ended: list[int]  # ids removed in this frame


class Tracker:
    """Embedding + overlap tracker. ``update()`` once per frame, in timestamp order; ``reset()`` to reuse."""

    def __init__(self, appearance_weight: float = 0.5, max_cost: float = 0.7, max_cosine_distance: float = 0.35,
                 min_iou: float = 0.05, min_hits: int = 3, max_lost_seconds: float = 1.0,
                 gallery_momentum: float = 0.8) -> None:
        if not 0.0 <= appearance_weight <= 1.0:
            raise ValueError(f"appearance_weight must be in [0, 1], got {appearance_weight}")
        if not 0.0 <= gallery_momentum <= 1.0:
            raise ValueError(f"gallery_momentum must be in [0, 1], got {gallery_momentum}")
        self.appearance_weight = appearance_weight
        self.max_cost = max_cost
        self.max_cosine_distance = max_cosine_distance
        self.min_iou = min_iou
        self.min_hits = min_hits
        self.max_lost_seconds = max_lost_seconds
        self.gallery_momentum = gallery_momentum
        self.reset()

    def reset(self) -> None:
        self._tracks: list[_Track] = []
        self._next_id = 1

    @property
    def active_count(self) -> int:
        """Confirmed tracks currently seen or briefly lost."""
        return sum(t.state in (TrackState.CONFIRMED, TrackState.LOST) for t in self._tracks)

    def update(self, detections: Detections, embeddings: Embeddings, timestamp: float) -> TrackerOutput:
        if len(embeddings) != len(detections):
            raise ValueError(f"{len(detections)} detections but {len(embeddings)} embeddings")
        tracks = self._tracks
        predicted = np.stack([t.predict(timestamp) for t in tracks]) if tracks else np.zeros((0, 4), np.float32)
        features = np.stack([t.feature for t in tracks]) if tracks else np.zeros((0, embeddings.dim), np.float32)
        cost = fused_cost(cosine_distance_matrix(features, embeddings.vectors),
                          iou_matrix(predicted, detections.xyxy), self.appearance_weight,
                          self.max_cosine_distance, self.min_iou)
        matches, unmatched_tracks, unmatched_dets = linear_assignment(cost, self.max_cost)

        det_of_track: dict[int, int] = {}
        started: list[int] = []
        for ti, di in matches:
            t = tracks[ti]
            box = detections.xyxy[di]
            dt = timestamp - t.last_ts
            if dt > 0:
                shift = (box[:2] + box[2:]) / 2 - (t.xyxy[:2] + t.xyxy[2:]) / 2
                v = (shift / np.float32(dt)).astype(np.float32)
                t.velocity = v if t.hits == 1 else (0.5 * t.velocity + 0.5 * v).astype(np.float32)
            t.xyxy = box.copy()
            t.last_ts = timestamp
            m = self.gallery_momentum
            f = m * t.feature + (1.0 - m) * embeddings.vectors[di]
            t.feature = (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)
            t.hits += 1
            if t.state == TrackState.TENTATIVE and t.hits >= self.min_hits:
                t.state = TrackState.CONFIRMED
                started.append(t.track_id)
            elif t.state == TrackState.LOST:
                t.state = TrackState.CONFIRMED
            det_of_track[t.track_id] = int(di)

        ended: list[int] = []
        for ti in unmatched_tracks:
            t = tracks[ti]
            if t.state == TrackState.TENTATIVE or timestamp - t.last_ts > self.max_lost_seconds:
                t.state = TrackState.REMOVED
                if t.hits >= self.min_hits:
                    ended.append(t.track_id)
            else:
                t.state = TrackState.LOST

        for di in unmatched_dets:
            t = _Track(self._next_id, detections.xyxy[di].copy(), embeddings.vectors[di].copy(), timestamp)
            self._next_id += 1
            if self.min_hits <= 1:
                t.state = TrackState.CONFIRMED
                started.append(t.track_id)
            tracks.append(t)
            det_of_track[t.track_id] = int(di)

        self._tracks = [t for t in tracks if t.state != TrackState.REMOVED]
        observations = [
            TrackObservation(t.track_id, t.xyxy if t.track_id in det_of_track else t.predict(timestamp),
                             t.state, det_of_track.get(t.track_id, -1))
            for t in self._tracks
        ]
        return TrackerOutput(observations, started, ended)

    def flush(self) -> list[int]:
        """End every remaining track (end of stream); returns the ids of confirmed ones."""
        ended = [t.track_id for t in self._tracks if t.state != TrackState.TENTATIVE]
        self._tracks = []
        return ended
