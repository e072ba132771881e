"""The one module that wires the stages: source -> detector -> crops -> encoder -> tracker -> anomaly -> sinks.

:class:`Pipeline` turns one frame into a :class:`FrameResult`; :func:`run` drives a source through it into
the sinks, updates the metrics, logs progress, and stops cleanly (flushing every sink) on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from pipeline.anomaly.bank import Bank, crop_features
from pipeline.anomaly.inspector import PartInspector
from pipeline.anomaly.maps import overlay_patch_maps
from pipeline.crops import box_crop_batch, crop_batch
from pipeline.detect import Detector
from pipeline.encoder import Encoder
from pipeline.metrics import PipelineMetrics
from pipeline.sinks import Sink
from pipeline.sources import FrameSource
from pipeline.tracking.appearance import check_region, tracking_embeddings
from pipeline.tracking.tracker import Tracker
from pipeline.types import AnomalyEvent, Embeddings, Frame, FrameResult, PatchMap, TrackObservation, TrackState, Verdict

log = logging.getLogger(__name__)


def edge_mask(xyxy: np.ndarray, width: int, height: int, margin: int) -> np.ndarray:
    """True for boxes at least ``margin`` px inside the frame (whole parts, fit to be scored)."""
    return ((xyxy[:, 0] >= margin) & (xyxy[:, 1] >= margin)
            & (xyxy[:, 2] <= width - margin) & (xyxy[:, 3] <= height - margin))


class Pipeline:
    """Per-frame processing with every stage's state. ``bank=None`` turns the anomaly stage off."""

    def __init__(self, detector: Detector, encoder: Encoder, tracker: Tracker, metrics: PipelineMetrics,
                 bank: Bank | None = None, inspector: PartInspector | None = None, stream: str = "default",
                 crop_padding: float = 0.1, edge_margin: int = 4, evidence_dir: Path | None = None,
                 appearance_region: str = "crop", color_weight: float = 0.0,
                 reid_encoder: Encoder | None = None) -> None:
        if (bank is None) != (inspector is None):
            raise ValueError("bank and inspector go together: give both or neither")
        if bank is not None:
            bank.check_encoder(encoder.encoder_id, encoder.embedding_dim, encoder.patch_dim,
                               "anomaly stage", patches=encoder.patch_grid[0] * encoder.patch_grid[1])
        if reid_encoder is None:
            check_region(appearance_region, encoder.patch_grid, getattr(encoder, "path", ""))
        self.appearance_region = appearance_region
        self.color_weight = color_weight
        # The tracker's own appearance encoder (people): embeds the detection boxes at its shape, beside the
        # anomaly encoder; without it the tracker compares the anomaly encoder's vectors.
        self.reid_encoder = reid_encoder
        self.detector = detector
        self.encoder = encoder
        self.tracker = tracker
        self.metrics = metrics
        self.bank = bank
        self.inspector = inspector
        self.stream = stream
        self.crop_padding = crop_padding
        self.edge_margin = edge_margin
        self.evidence_dir = evidence_dir
        # The threshold was calibrated with the bank's k: scoring with another k would invalidate it.
        self.k = bank.meta.k if bank is not None else 1
        self.flagged: list[int] = []
        self.inspected = 0
        self.tracks_started = 0
        if bank is not None:
            self._export_bank(bank)
        self._pending_bank: Bank | None = None
        self._swap_lock = threading.Lock()

    def _export_bank(self, bank: Bank) -> None:
        self.metrics.bank_size.set(len(bank))
        self.metrics.bank_threshold.set(bank.meta.threshold)
        self.metrics.bank_updated.set(bank.meta.updated)

    def swap_bank(self, bank: Bank) -> None:
        """Hand over a new bank (from any thread); it takes effect between two frames, so no frame is scored
        partly against the old bank and partly against the new one. Parts keep their scores so far; the new
        threshold applies to their verdicts from the next frame on (unless the new bank scores in other units,
        with or without a cell normalisation: then their scores start over)."""
        if self.bank is None or self.inspector is None:
            raise ValueError("this pipeline runs without an anomaly stage; start it with a bank to swap banks")
        grid = self.encoder.patch_grid
        bank.check_encoder(self.encoder.encoder_id, self.encoder.embedding_dim, self.encoder.patch_dim,
                           "bank reload", patches=grid[0] * grid[1])
        with self._swap_lock:
            self._pending_bank = bank

    def _apply_pending_bank(self) -> None:
        with self._swap_lock:
            bank, self._pending_bank = self._pending_bank, None
        if bank is None or self.inspector is None:
            return
        if (bank.cell_norm is None) != (self.bank is None or self.bank.cell_norm is None):
            # Distances and per-cell z-scores are different units: the parts' scores so far would be judged
            # against a threshold of the other kind. They start over (a part already flagged stays flagged).
            self.inspector.clear_scores()
            log.info("bank swap changes the scoring (cell normalisation %s): parts in view are scored afresh",
                     "on" if bank.cell_norm is not None else "off")
        self.bank = bank
        self.k = bank.meta.k
        self.inspector.threshold = bank.meta.threshold
        self._export_bank(bank)
        self.metrics.bank_reloads.inc()
        log.info("bank swapped in: %d vectors, threshold %.4f (updated %s)", len(bank), bank.meta.threshold,
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(bank.meta.updated)))

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.metrics.stage[stage].observe(time.perf_counter() - t)

    def process(self, frame: Frame) -> FrameResult:
        if self._pending_bank is not None:
            self._apply_pending_bank()
        with self._timed("detect"):
            dets = self.detector.detect(frame)
        bank = self.bank  # one bank for the whole frame, even if a swap is handed over meanwhile
        reid = self.reid_encoder
        # The anomaly encoder runs when it scores parts, or when it is the tracker's appearance too.
        anomaly_encoder = bank is not None or reid is None
        with self._timed("crop"):
            crops = crop_batch(frame, dets if anomaly_encoder else dets.select(np.zeros(len(dets), bool)),
                               self.encoder.input_size, self.crop_padding)
            people = box_crop_batch(frame, dets, reid.input_size) if reid is not None else None
        with self._timed("encode"):
            # all crops as one batch per encoder
            emb = (self.encoder.embed(crops, with_patches=bank is not None or self.appearance_region == "box")
                   if anomaly_encoder else Embeddings(np.zeros((0, self.encoder.embedding_dim), np.float32)))
            reid_emb = reid.embed(people, with_patches=False) if reid is not None and people is not None else None
        self.metrics.encoder_batch.observe(len(dets))
        with self._timed("track"):
            seen = reid_emb if reid_emb is not None else tracking_embeddings(
                emb, crops.xyxy, dets.xyxy, self.appearance_region, (frame.width, frame.height), image=frame.image,
                color_weight=self.color_weight)
            out = self.tracker.update(dets, seen, frame.timestamp, frame_image=frame.image)
        self.tracks_started += len(out.started)
        self.metrics.tracks_started.inc(len(out.started))
        self.metrics.tracks_ended.inc(len(out.ended))
        self.metrics.active_tracks.set(self.tracker.active_count)
        with self._timed("anomaly"):
            observations, events, maps = self._inspect(frame, dets.xyxy, crops.xyxy, emb, out.observations)
            for track_id in out.ended:
                self._end(track_id)
        return FrameResult(frame, dets, observations, events, maps)

    def _score(self, frame: Frame, xyxy: np.ndarray, regions: np.ndarray, emb: Embeddings
               ) -> tuple[np.ndarray, list[PatchMap]]:
        """Score per detection (``nan`` for crops at the frame edge) and, for patch banks, each scored crop's
        patch map over the region it was cut from."""
        assert self.bank is not None and self.inspector is not None
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

    def _inspect(self, frame: Frame, xyxy: np.ndarray, regions: np.ndarray, emb: Embeddings,
                 observations: list[TrackObservation]
                 ) -> tuple[list[TrackObservation], list[AnomalyEvent], list[PatchMap]]:
        if self.bank is None or self.inspector is None:
            return observations, [], []
        det_scores, maps = self._score(frame, xyxy, regions, emb)
        by_detection = {m.detection_index: m for m in maps}
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
                events.append(AnomalyEvent(self.stream, obs.track_id, frame.index, frame.timestamp,
                                           upd.track_score, self.inspector.threshold, upd.frames_scored,
                                           tuple(float(v) for v in obs.xyxy),  # type: ignore[arg-type]
                                           self._save_evidence(frame, obs, by_detection.get(di))))
            result.append(replace(obs, score=score, track_score=upd.track_score, verdict=upd.verdict))
        return result, events, maps

    def _save_evidence(self, frame: Frame, obs: TrackObservation, patch_map: PatchMap | None = None) -> str:
        """The part with some context; with a patch map, the region the encoder saw, and beside it the same
        region under its anomaly map."""
        if self.evidence_dir is None:
            return ""
        x1, y1, x2, y2 = (round(float(v)) for v in (patch_map.xyxy if patch_map is not None else obs.xyxy))
        pad = 0 if patch_map is not None else max(4, (x2 - x1) // 5)
        window = (slice(max(0, y1 - pad), y2 + pad), slice(max(0, x1 - pad), x2 + pad))
        crop = frame.image[window]
        if patch_map is not None and crop.size:
            heat = overlay_patch_maps(frame.image, [patch_map], worst=0.1)[window]
            crop = np.hstack([crop, heat])
        path = self.evidence_dir / f"track{obs.track_id:06d}_frame{frame.index:07d}.png"
        if crop.size and cv2.imwrite(str(path), crop):
            return str(path)
        log.warning("could not save evidence crop %s", path)
        return ""

    def _end(self, track_id: int) -> None:
        if self.inspector is not None and self.inspector.end(track_id) in (Verdict.GOOD, Verdict.DEFECT):
            self.inspected += 1
            self.metrics.parts_inspected.inc()

    def finish(self) -> None:
        """End of stream: every remaining track ends and gets its final verdict."""
        for track_id in self.tracker.flush():
            self._end(track_id)
            self.metrics.tracks_ended.inc()
        self.metrics.active_tracks.set(0)


@dataclass
class RunSummary:
    frames: int = 0
    seconds: float = 0.0
    dropped: int = 0
    reconnects: int = 0
    tracks: int = 0
    inspected: int = 0
    flagged: list[int] = field(default_factory=list)
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def stop_on_signals(stop: threading.Event, on_stop: Callable[[], None] | None = None) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the run finishes the current frame and flushes) instead of killing;
    ``on_stop`` (e.g. closing a live source that may be blocked reconnecting) runs too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: object) -> None:
        log.warning("received %s: finishing the current frame and flushing outputs", signal.Signals(signum).name)
        stop.set()
        if on_stop is not None:
            on_stop()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def run(source: FrameSource, pipeline: Pipeline, sinks: list[Sink], stop: threading.Event | None = None,
        progress_every_s: float = 5.0, on_result: Callable[[FrameResult], None] | None = None) -> RunSummary:
    """Drive ``source`` through ``pipeline`` into ``sinks`` until the source ends or ``stop`` is set.

    Sinks and the source are closed (flushed) whatever happens.
    """
    stop = stop or threading.Event()
    m = pipeline.metrics
    summary = RunSummary()
    seen = {"read": 0, "dropped": 0, "reconnects": 0}

    def export_source_counters() -> None:
        # Source counters are cumulative: export their increments.
        m.frames_read.inc(source.frames_read - seen["read"])
        m.frames_dropped.inc(source.dropped - seen["dropped"])
        m.source_reconnects.inc(source.reconnects - seen["reconnects"])
        seen.update(read=source.frames_read, dropped=source.dropped, reconnects=source.reconnects)

    start = last_log = time.perf_counter()
    total = int(getattr(source, "total_frames", 0) or 0)
    m.source_nominal_fps.set(source.fps or 0.0)
    # Read at scrape time, so it shows the queue while the run waits on the source. Only live sources queue.
    m.source_queue_depth.set_function(lambda: float(getattr(source, "pending", 0)))
    completed = False
    try:
        frames = iter(source)
        while not stop.is_set():
            t_read = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            t0 = time.perf_counter()
            m.stage["read"].observe(t0 - t_read)
            result = pipeline.process(frame)
            with pipeline._timed("sink"):
                for sink in sinks:
                    sink.write(result)
            if on_result is not None:
                on_result(result)
            # A live frame's timestamp is its wall-clock capture time: its latency includes the time it
            # waited in the source's queue. File frames carry media time, so theirs starts at decoding.
            wall = time.time()
            latency = wall - frame.timestamp if source.is_live else time.perf_counter() - t0
            m.frame_latency.observe(max(latency, 0.0))
            m.frames_processed.inc()
            m.last_frame.set(wall)
            summary.frames += 1
            export_source_counters()
            now = time.perf_counter()
            if progress_every_s and now - last_log >= progress_every_s:
                last_log = now
                done = f"{summary.frames}/{total}" if total else str(summary.frames)
                log.info("frames %s  %.1f fps  tracks %d  flagged %d  dropped %d", done,
                         summary.frames / (now - start), pipeline.tracks_started, len(pipeline.flagged),
                         source.dropped)
        summary.interrupted = stop.is_set()
        completed = True
    finally:
        summary.seconds = time.perf_counter() - start
        try:
            pipeline.finish()
        finally:
            errors = []
            for sink in sinks:
                try:
                    sink.close()
                except Exception as exc:  # close every sink even if one fails, then report
                    errors.append(exc)
            source.close()
            # Frames read (or dropped) after the last processed one: read == processed + dropped + queued.
            export_source_counters()
            # The error that stopped the run (or else the first close error) is the one raised.
            for err in errors if not completed else errors[1:]:
                log.warning("closing outputs failed as well: %s", err)
            if errors and completed:
                raise errors[0]
    summary.dropped = source.dropped
    summary.reconnects = source.reconnects
    summary.tracks = pipeline.tracks_started
    summary.inspected = pipeline.inspected
    summary.flagged = list(pipeline.flagged)
    return summary
