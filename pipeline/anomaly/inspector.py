"""One verdict per tracked part, from its anomaly scores over every frame it was scored in."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pipeline.anomaly.calibrate import aggregate
from pipeline.types import Verdict


@dataclass(frozen=True)
class PartUpdate:
    track_score: float
    verdict: Verdict
    newly_flagged: bool
    frames_scored: int


class PartInspector:
    """Keeps each live track's recent scores; a part's verdict is DEFECT once its aggregate exceeds the
    threshold after ``min_frames`` scores, and it is flagged once (one alert per part, not per frame)."""

    def __init__(self, threshold: float, min_frames: int = 3, how: str = "median", max_scores: int = 256) -> None:
        if min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {min_frames}")
        aggregate([0.0], how)  # validates ``how``
        self.threshold = threshold
        self.min_frames = min_frames
        self.how = how
        self.max_scores = max_scores
        self._scores: dict[int, deque[float]] = {}
        self._counts: dict[int, int] = {}
        self._flagged: set[int] = set()

    def observe(self, track_id: int, score: float) -> PartUpdate:
        buf = self._scores.setdefault(track_id, deque(maxlen=self.max_scores))
        buf.append(score)
        self._counts[track_id] = self._counts.get(track_id, 0) + 1
        return self.current(track_id)

    def current(self, track_id: int) -> PartUpdate:
        buf = self._scores.get(track_id)
        n = self._counts.get(track_id, 0)
        value = aggregate(list(buf), self.how) if buf else float("nan")
        if track_id in self._flagged:
            return PartUpdate(value, Verdict.DEFECT, False, n)
        if not buf:
            return PartUpdate(value, Verdict.PENDING, False, 0)
        if n < self.min_frames:
            return PartUpdate(value, Verdict.PENDING, False, n)
        if value > self.threshold:
            self._flagged.add(track_id)
            return PartUpdate(value, Verdict.DEFECT, True, n)
        return PartUpdate(value, Verdict.GOOD, False, n)

    def end(self, track_id: int) -> Verdict:
        """Forget a finished track; returns its final verdict (PENDING if it was never scored enough)."""
        final = self.current(track_id).verdict
        self._scores.pop(track_id, None)
        self._counts.pop(track_id, None)
        self._flagged.discard(track_id)
        return final

    def clear_scores(self) -> None:
        """Forget every part's scores but not which parts were flagged: each needs ``min_frames`` new scores for
        a verdict again, and a flagged part is never flagged (alerted) twice."""
        self._scores.clear()
        self._counts.clear()

    def reset(self) -> None:
        self._scores.clear()
        self._counts.clear()
        self._flagged.clear()
