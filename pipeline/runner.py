"""The one module that wires the stages: source -> frame step -> anomaly stage -> sinks.

:class:`Pipeline` turns one frame into a :class:`FrameResult` (:class:`pipeline.step.FrameStep`, then
:class:`pipeline.anomaly.stage.AnomalyStage`); :func:`run` drives a source through it into the sinks, updates the
metrics, logs progress, and stops cleanly (flushing every sink) on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.anomaly.bank import Bank
from pipeline.anomaly.stage import AnomalyStage
from pipeline.identity import IdentityStage
from pipeline.metrics import PipelineMetrics
from pipeline.read_ahead import ReadAhead, read_in_turn
from pipeline.sinks import Sink
from pipeline.sources import FrameSource
from pipeline.step import FrameStep
from pipeline.tracking.tracker import Tracker
from pipeline.types import Detections, Frame, FrameResult

log = logging.getLogger(__name__)


class Pipeline:
    """Per-frame processing: the frame step (detect -> crop -> embed -> track), then the anomaly stage when there
    is one (``anomaly=None`` turns it off)."""

    def __init__(self, step: FrameStep, metrics: PipelineMetrics, anomaly: AnomalyStage | None = None,
                 identity: IdentityStage | None = None) -> None:
        self.step = step
        self.metrics = metrics
        self.anomaly = anomaly
        self.identity = identity  # ended tracks handed to the cross-camera gallery
        self.tracks_started = 0
        if anomaly is not None:
            if step.encoder is None or not step.parts:
                raise ValueError("the anomaly stage needs a frame step that embeds parts (FrameStep(parts=True))")
            self._check_bank(anomaly.bank, "anomaly stage")

    @property
    def tracker(self) -> Tracker:
        return self.step.tracker

    @property
    def bank(self) -> Bank | None:
        return self.anomaly.bank if self.anomaly is not None else None

    @property
    def evidence_dir(self) -> Path | None:
        """Where the flagged parts' evidence images go (for :class:`pipeline.sinks.EvidenceSink`); ``None``: none."""
        return self.anomaly.evidence_dir if self.anomaly is not None else None

    @property
    def flagged(self) -> list[int]:
        """Track ids of the parts flagged so far, in order."""
        return self.anomaly.flagged if self.anomaly is not None else []

    @property
    def inspected(self) -> int:
        """Parts that left the view with a verdict."""
        return self.anomaly.inspected if self.anomaly is not None else 0

    def _check_bank(self, bank: Bank, what: str) -> None:
        enc = self.step.encoder
        assert enc is not None  # checked in __init__
        grid = enc.patch_grid
        bank.check_encoder(enc.encoder_id, enc.embedding_dim, enc.patch_dim, what, patches=grid[0] * grid[1])

    def swap_bank(self, bank: Bank) -> None:
        """Hand over a new bank (from any thread); it takes effect between two frames, so no frame is scored
        partly against the old bank and partly against the new one. Parts keep their scores so far; the new
        threshold applies to their verdicts from the next frame on (unless the new bank scores in other units,
        with or without a cell normalisation: then their scores start over)."""
        if self.anomaly is None:
            raise ValueError("this pipeline runs without an anomaly stage; start it with a bank to swap banks")
        self._check_bank(bank, "bank reload")
        self.anomaly.swap(bank)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One stage's time for one frame, into the stage histogram."""
        self.metrics.stage[stage].observe(seconds)

    def process(self, frame: Frame, detections: Detections | None = None) -> FrameResult:
        """One frame through the step and the anomaly stage; ``detections``: the step's :meth:`FrameStep.detect`
        already ran on it (ahead, in the reader thread)."""
        step = self.step(frame, detections)
        dets, out = step.detections, step.tracked
        self.metrics.encoder_batch.observe(len(dets))
        self.tracks_started += len(out.started)
        self.metrics.tracks_started.inc(len(out.started))
        self.metrics.tracks_ended.inc(len(out.ended))
        self.metrics.active_tracks.set(self.tracker.active_count)
        if self.tracker.video_gates is not None:
            self.metrics.set_appearance_gates(self.tracker.max_cosine_distance, self.tracker.reid_max_cosine_distance)
        identity = self.identity
        if identity is not None and step.appearance is not None:
            identity.observe(out.observations, step.appearance.vectors, frame.timestamp)
        if self.anomaly is None or step.crops is None or step.embeddings is None:
            if identity is not None:
                identity.end(out.ended)
            return FrameResult(frame, dets, out.observations)
        start = time.perf_counter()
        observations, events, maps = self.anomaly(frame, dets.xyxy, step.crops.xyxy, step.embeddings,
                                                  out.observations, out.ended)
        self.observe_stage("anomaly", time.perf_counter() - start)
        if identity is not None:  # the flagged parts' global ids, before their ended tracks let them go
            events = identity.label(events)
            identity.end(out.ended)
        return FrameResult(frame, dets, observations, events, maps)

    def finish(self) -> None:
        """End of stream: every remaining track ends and gets its final verdict."""
        ended = self.tracker.flush()
        for track_id in ended:
            if self.anomaly is not None:
                self.anomaly.end(track_id)
            self.metrics.tracks_ended.inc()
        if self.identity is not None:
            self.identity.end(ended)
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


@contextmanager
def reload_on_sighup(on_hup: Callable[[], None]) -> Iterator[None]:
    """SIGHUP calls ``on_hup`` (e.g. read the stream list again) instead of ending the process."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    previous = signal.getsignal(signal.SIGHUP)

    def handler(_signum: int, _frame: object) -> None:
        log.info("received SIGHUP: reading the stream list again")
        on_hup()

    signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def run(source: FrameSource, pipeline: Pipeline, sinks: list[Sink], stop: threading.Event | None = None,
        progress_every_s: float = 5.0, on_result: Callable[[FrameResult], None] | None = None,
        read_ahead: int = 0) -> RunSummary:
    """Drive ``source`` through ``pipeline`` into ``sinks`` until the source ends or ``stop`` is set.

    With ``read_ahead`` > 0, decoding and detection run that many frames ahead in a thread of their own
    (:class:`pipeline.read_ahead.ReadAhead`); once ``stop`` is set no further frame is read, and the frames already
    read are processed before the outputs are flushed. Sinks and the source are closed (flushed) whatever happens.
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
    total = source.total_frames
    m.source_nominal_fps.set(source.fps or 0.0)
    # Read at scrape time, so it shows the queue while the run waits on the source. Only live sources queue.
    m.source_queue_depth.set_function(lambda: float(source.pending))
    m.stream_up.set(1)
    completed = False
    observe_read = m.stage["read"].observe
    reader = (ReadAhead(iter(source), pipeline.step.detect, read_ahead, observe_read,
                        name=f"read-{m.stream}") if read_ahead > 0 else None)
    try:
        items = reader if reader is not None else read_in_turn(iter(source), observe_read)
        if stop.is_set():  # stopped before the first frame: read no more (the reader's frames are processed)
            if reader is not None:
                reader.stop()
            else:
                items = iter(())
        for item in items:
            frame = item.frame
            result = pipeline.process(frame, item.detections)
            t_sink = time.perf_counter()
            for sink in sinks:
                sink.write(result)
            pipeline.observe_stage("sink", time.perf_counter() - t_sink)
            if on_result is not None:
                on_result(result)
            # A live frame's timestamp is its wall-clock capture time: its latency includes the time it
            # waited in the source's queue. File frames carry media time, so theirs starts at decoding.
            wall = time.time()
            latency = wall - frame.timestamp if source.is_live else time.perf_counter() - item.decoded_at
            m.frame_latency.observe(max(latency, 0.0))
            m.frames_processed.inc()
            m.last_frame.set(wall)
            summary.frames += 1
            export_source_counters()
            now = time.perf_counter()
            if progress_every_s and now - last_log >= progress_every_s:
                last_log = now
                done = f"{summary.frames}/{total}" if total else str(summary.frames)
                log.info("%sframes %s  %.1f fps  tracks %d  flagged %d  dropped %d",
                         f"{m.stream}: " if m.stream != "default" else "", done,
                         summary.frames / (now - start), pipeline.tracks_started, len(pipeline.flagged),
                         source.dropped)
            if stop.is_set():
                if reader is None:
                    break
                reader.stop()  # the frames it already read are processed, then the loop ends
        summary.interrupted = stop.is_set()
        completed = True
    finally:
        summary.seconds = time.perf_counter() - start
        m.stream_up.set(0)
        try:
            pipeline.finish()
        finally:
            errors = []
            for sink in sinks:
                try:
                    sink.close()
                except Exception as exc:  # close every sink even if one fails, then report
                    errors.append(exc)
            # The reader thread first: the source is not closed under a read in progress (a live source blocked
            # in a read is closed to wake it).
            if reader is not None and not reader.close():
                source.close()
                reader.close()
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
