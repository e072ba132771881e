"""The anomaly stage: each frame's part crops scored against the bank, one verdict per part, one event per flag.

:class:`AnomalyStage` takes the tracker's observations with the part embeddings of the same frame
(:class:`pipeline.step.StepResult`), scores the crops that lie whole inside the frame, keeps each part's scores in a
:class:`~pipeline.anomaly.inspector.PartInspector`, and raises an :class:`~pipeline.types.AnomalyEvent` the frame
a part's verdict becomes DEFECT. A new bank handed over from another thread (:meth:`AnomalyStage.swap`) takes effect
between two frames. Evidence images are written by :class:`pipeline.sinks.EvidenceSink`, at the path the event
names (:func:`evidence_path`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.anomaly.bank import Bank, crop_features
from pipeline.anomaly.inspector import PartInspector
from pipeline.metrics import PipelineMetrics
from pipeline.types import AnomalyEvent, Embeddings, Frame, PatchMap, TrackObservation, TrackState, Verdict

log = logging.getLogger(__name__)


def edge_mask(xyxy: np.ndarray, width: int, height: int, margin: int) -> np.ndarray:
    """True for boxes at least ``margin`` px inside the frame (whole parts, fit to be scored)."""
    return ((xyxy[:, 0] >= margin) & (xyxy[:, 1] >= margin)
            & (xyxy[:, 2] <= width - margin) & (xyxy[:, 3] <= height - margin))


def evidence_path(folder: Path, track_id: int, frame_index: int) -> Path:
    """Where the evidence image of the part ``track_id`` flagged at ``frame_index`` is saved."""
    return folder / f"track{track_id:06d}_frame{frame_index:07d}.png"


class AnomalyStage:
    """Scores, verdicts and events for the parts in view.

    Args:
        bank: the known-good bank; its threshold and ``k`` judge every score.
        inspector: each part's verdict from its scores (``[anomaly] min_frames`` and ``aggregate``).
        metrics: the stream's metrics (scores, flagged and inspected parts, bank size and age).
        stream: the stream name events carry.
        edge_margin: crops within this many pixels of the frame edge are not scored.
        evidence_dir: the folder events point their evidence image at; ``None``: events carry none.
    """

    def __init__(self, bank: Bank, inspector: PartInspector, metrics: PipelineMetrics, stream: str = "default",
                 edge_margin: int = 4, evidence_dir: Path | None = None) -> None:
        self.bank = bank
        self.inspector = inspector
        self.metrics = metrics
        self.stream = stream
        self.edge_margin = edge_margin
        self.evidence_dir = evidence_dir
        self.flagged: list[int] = []
        self.inspected = 0
        self._pending_bank: Bank | None = None
        self._swap_lock = threading.Lock()
        self._export_bank(bank)

    @property
    def k(self) -> int:
        """Neighbours averaged per score: the bank's own (its threshold was calibrated with it)."""
        return self.bank.meta.k

    def _export_bank(self, bank: Bank) -> None:
        self.metrics.bank_size.set(len(bank))
        self.metrics.bank_threshold.set(bank.meta.threshold)
        self.metrics.bank_updated.set(bank.meta.updated)

    def swap(self, bank: Bank) -> None:
        """Hand over a new bank (from any thread, already checked against the encoder); it takes effect between
        two frames, so no frame is scored partly against the old bank and partly against the new one."""
        with self._swap_lock:
            self._pending_bank = bank

    def _apply_pending_bank(self) -> None:
        with self._swap_lock:
            bank, self._pending_bank = self._pending_bank, None
        if bank is None:
            return
        if (bank.cell_norm is None) != (self.bank.cell_norm is None):
            # Distances and per-cell z-scores are different units: the parts' scores so far would be judged
            # against a threshold of the other kind. They start over (a part already flagged stays flagged).
            self.inspector.clear_scores()
            log.info("bank swap changes the scoring (cell normalisation %s): parts in view are scored afresh",
                     "on" if bank.cell_norm is not None else "off")
        self.bank = bank
        self.inspector.threshold = bank.meta.threshold
        self._export_bank(bank)
        self.metrics.bank_reloads.inc()
        log.info("bank swapped in: %d vectors, threshold %.4f (updated %s)", len(bank), bank.meta.threshold,
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(bank.meta.updated)))

    def _score(self, frame: Frame, xyxy: np.ndarray, regions: np.ndarray, emb: Embeddings
               ) -> tuple[np.ndarray, list[PatchMap]]:
        """Score per detection (``nan`` for crops at the frame edge) and, for patch banks, each scored crop's
        patch map over the region it was cut from."""
        scorable = edge_mask(xyxy, frame.width, frame.height, self.edge_margin)
        self.metrics.crops_unscored.inc(int((~scorable).sum()))
        det_scores = np.full(len(xyxy), np.nan, np.float32)
        if not scorable.any():
            return det_scores, []
        chosen = emb.select(scorable)
        if self.bank.meta.level != "patch" or chosen.patches is None:
            det_scores[scorable] = self.bank.score_embeddings(chosen, self.k)
            return det_scores, []
        patch = self.bank.patch_scores(crop_features(chosen, "patch"), self.k)
        det_scores[scorable] = patch.max(axis=1)
        h, w = emb.grid
        maps = [PatchMap(int(i), tuple(float(v) for v in regions[i]), p.reshape(h, w),  # type: ignore[arg-type]
                         self.inspector.threshold)
                for i, p in zip(np.flatnonzero(scorable), patch, strict=True)]
        return det_scores, maps

    def __call__(self, frame: Frame, xyxy: np.ndarray, regions: np.ndarray, emb: Embeddings,
                 observations: list[TrackObservation], ended: list[int]
                 ) -> tuple[list[TrackObservation], list[AnomalyEvent], list[PatchMap]]:
        """The frame's observations with their scores and verdicts, the parts flagged in it, and the patch maps
        of its scored crops. ``xyxy`` are the detection boxes, ``regions`` the regions their crops were cut from
        and ``emb`` the crops' embeddings; the parts of ``ended`` get their final verdict."""
        if self._pending_bank is not None:
            self._apply_pending_bank()
        det_scores, maps = self._score(frame, xyxy, regions, emb)
        result: list[TrackObservation] = []
        events: list[AnomalyEvent] = []
        for obs in observations:
            di = obs.detection_index
            score = float(det_scores[di]) if di >= 0 else math.nan
            if obs.state != TrackState.CONFIRMED:
                result.append(replace(obs, score=score, verdict=Verdict.PENDING))
                continue
            if not math.isnan(score):
                self.metrics.anomaly_score.observe(score)
                if self.inspector.threshold > 0:
                    self.metrics.anomaly_score_ratio.observe(score / self.inspector.threshold)
                upd = self.inspector.observe(obs.track_id, score)
            else:
                upd = self.inspector.current(obs.track_id)
            if upd.newly_flagged:
                self.flagged.append(obs.track_id)
                self.metrics.parts_flagged.inc()
                evidence = (str(evidence_path(self.evidence_dir, obs.track_id, frame.index))
                            if self.evidence_dir is not None else "")
                events.append(AnomalyEvent(self.stream, obs.track_id, frame.index, frame.timestamp,
                                           upd.track_score, self.inspector.threshold, upd.frames_scored,
                                           tuple(float(v) for v in obs.xyxy),  # type: ignore[arg-type]
                                           evidence))
            result.append(replace(obs, score=score, track_score=upd.track_score, verdict=upd.verdict))
        for track_id in ended:
            self.end(track_id)
        return result, events, maps

    def end(self, track_id: int) -> None:
        """The part left: its final verdict counts as one inspected part (when it had one)."""
        if self.inspector.end(track_id) in (Verdict.GOOD, Verdict.DEFECT):
            self.inspected += 1
            self.metrics.parts_inspected.inc()
