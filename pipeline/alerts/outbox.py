"""What the webhook and MQTT sinks share: a hand-off queue, a disk spool and a delivery thread.

The pipeline thread calls :meth:`AlertOutbox.write`, which only puts each flagged part on a bounded
in-memory queue (O(1), never waits on the network). When that queue is full, the alert is written straight
to the spool instead, on the caller's thread: a local file write without fsync (the rare path; it never
touches the network or waits on the disk).

The delivery thread moves queued alerts to the spool (building the record and its JPEG evidence there),
then delivers from the spool, oldest first, and deletes an alert's file only once the receiver has
acknowledged it. So an alert is lost only when the spool is full (the oldest are dropped, and counted) or
the process dies before the delivery thread has spooled it (at most ``max_queue`` alerts, usually none;
SIGINT and SIGTERM close the sinks, which spools them). Alerts still on disk at :meth:`AlertOutbox.close`
are delivered by the next run that uses the same spool directory. An alert the webhook receiver keeps
rejecting is not lost either: it is moved to a dead-letter folder beside the spool
(:mod:`~pipeline.alerts.webhook`).

Delivery is at least once: an acknowledgement lost on the way back means the alert is sent again, with
the same ``alert_id``, and the receiver drops the copy.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from prometheus_client import CollectorRegistry

from pipeline.alerts.backoff import backoff_delay
from pipeline.alerts.record import Alert
from pipeline.alerts.spool import Spool, SpoolEntry
from pipeline.metrics import AlertSinkMetrics, PipelineMetrics
from pipeline.types import AnomalyEvent, FrameResult

log = logging.getLogger(__name__)

LOG_EVERY = 10  # failed attempts between log lines while a receiver stays down

# Extra seconds close() gives the delivery thread beyond close_timeout_s to finish its last step.
_CLOSE_GRACE_S = 2.0

_Queued = tuple[AnomalyEvent, float]  # the event and the Unix time it was handed to write()


class AlertOutbox(ABC):
    """Base of the alert sinks: implements the :class:`~pipeline.sinks.Sink` protocol.

    Subclasses set :attr:`sink` (the metrics label), implement :meth:`_serve` (the delivery loop, run on
    the delivery thread until it returns) and call :meth:`_start` at the end of their ``__init__``.

    Args:
        spool_dir: this sink's spool directory (one per sink and process).
        stream: the stream name, for log lines.
        metrics: this sink's series (:meth:`PipelineMetrics.alert_sink`); None keeps them in a private
            registry.
        run_id: ties the alert ids of one run together (:func:`~pipeline.alerts.record.alert_id_for`); give
            every sink of a run the same one so a receiver can match them. None: a random one.
        max_queue: alerts the hand-off queue holds before they go straight to the spool, >= 1.
        spool_max_alerts: most alerts on disk, >= 1.
        spool_max_bytes: most bytes on disk, >= 1.
        backoff_initial_s: first retry delay ceiling, > 0 (see :func:`~pipeline.alerts.backoff.backoff_delay`).
        backoff_max_s: largest retry delay ceiling, >= ``backoff_initial_s``.
        close_timeout_s: how long :meth:`close` goes on delivering before it leaves the rest on disk, >= 0.
        jpeg_quality: JPEG quality of the evidence crop, 1..100.

    Raises:
        ValueError: an argument is out of range (the message names it and the allowed range).
        SinkError: the spool directory cannot be created or written, or another process uses it.
    """

    sink: ClassVar[str]

    def __init__(self, spool_dir: Path, *, stream: str = "default", metrics: AlertSinkMetrics | None = None,
                 run_id: str | None = None, max_queue: int = 1000, spool_max_alerts: int = 10_000,
                 spool_max_bytes: int = 256 * 2**20, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 close_timeout_s: float = 10.0, jpeg_quality: int = 90) -> None:
        name = type(self).__name__
        if max_queue < 1:
            raise ValueError(f"{name}: max_queue must be >= 1, got {max_queue}")
        if not backoff_initial_s > 0:
            raise ValueError(f"{name}: backoff_initial_s must be > 0, got {backoff_initial_s}")
        if backoff_max_s < backoff_initial_s:
            raise ValueError(f"{name}: backoff_max_s must be >= backoff_initial_s ({backoff_initial_s}), "
                             f"got {backoff_max_s}")
        if close_timeout_s < 0:
            raise ValueError(f"{name}: close_timeout_s must be >= 0, got {close_timeout_s}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"{name}: jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.stream = stream
        self.metrics = metrics or PipelineMetrics(CollectorRegistry(), stream).alert_sink(self.sink)
        self.run_id = run_id or uuid.uuid4().hex
        self.max_queue = max_queue
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.close_timeout_s = float(close_timeout_s)
        self.jpeg_quality = jpeg_quality
        self.spool = Spool(Path(spool_dir), spool_max_alerts, spool_max_bytes, on_drop=self.metrics.dropped.inc)
        self.metrics.spooled.set(len(self.spool))
        self._queue: queue.Queue[_Queued] = queue.Queue(max_queue)
        self._wake = threading.Event()  # set by write() and close(); the delivery thread waits on it
        self._closing = threading.Event()
        self._deadline = 0.0  # time.monotonic() at which close() stops delivering; set before _closing
        self._closed = False
        self._warned_overflow = False
        self._failures = 0  # consecutive failed deliveries: the backoff exponent
        self._down_since = 0.0  # time.monotonic() of the first of them
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.sink}", daemon=True)

    # -- the Sink protocol -------------------------------------------------------------------------------

    def write(self, result: FrameResult) -> None:
        """Hand this frame's flagged parts to the delivery thread; returns at once.

        Raises:
            RuntimeError: after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed: write() after close()")
        if not result.events:
            return
        now = time.time()
        for event in result.events:
            try:
                self._queue.put_nowait((event, now))
            except queue.Full:
                if not self._warned_overflow:
                    self._warned_overflow = True
                    log.warning("%s alerts: the hand-off queue is full (%d); alerts go straight to the spool %s",
                                self.sink, self.max_queue, self.spool.directory)
                self._to_spool((event, now), sync=False)  # the pipeline thread does not wait on fsync
        self._wake.set()

    def close(self) -> None:
        """Deliver what is waiting for up to ``close_timeout_s``, then leave the rest on disk. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._deadline = time.monotonic() + self.close_timeout_s
        self._closing.set()
        self._wake.set()
        self._thread.join(self.close_timeout_s + _CLOSE_GRACE_S)
        if self._thread.is_alive():
            log.warning("%s alerts: the delivery thread did not stop within %.1f s; leaving it", self.sink,
                        self.close_timeout_s + _CLOSE_GRACE_S)
        self._drain_queue()  # whatever is still in memory goes to disk
        left = len(self.spool)
        if left:
            log.warning("%s alerts: %d not delivered; kept in %s and delivered by the next run that uses it",
                        self.sink, left, self.spool.directory)
        self.spool.close()

    # -- for subclasses ----------------------------------------------------------------------------------

    @abstractmethod
    def _serve(self) -> None:
        """The delivery loop, on the delivery thread. Returns once close() has begun and everything is delivered,
        or once the close deadline has passed (:meth:`_time_left` <= 0)."""

    def _start(self) -> None:
        self._thread.start()

    def _time_left(self) -> float | None:
        """Seconds until close() gives up; None while the sink is open."""
        if not self._closing.is_set():
            return None
        return self._deadline - time.monotonic()

    def _drain_queue(self) -> int:
        """Move every queued alert to the spool; returns how many."""
        moved = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return moved
            self._to_spool(item)
            moved += 1

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, spooling alerts as they arrive; cut short when close() begins or its deadline."""
        end = time.monotonic() + seconds
        closing_before = self._closing.is_set()
        while True:
            left = end - time.monotonic()
            until_close = self._time_left()
            if until_close is not None:
                if not closing_before:
                    return  # close() began: try again now, while there is time
                left = min(left, until_close)
            if left <= 0:
                return
            if self._wake.wait(left):
                self._wake.clear()
                self._drain_queue()

    def _update_spooled(self) -> None:
        self.metrics.spooled.set(len(self.spool))

    def _next_alert(self) -> tuple[SpoolEntry, Alert] | None:
        """The oldest spooled alert, once there is one (alerts that arrive meanwhile are spooled); ``None`` once
        close() has begun and everything is delivered, or its deadline has passed."""
        while True:
            self._drain_queue()
            left = self._time_left()
            if left is not None and left <= 0:
                return None
            entry = self.spool.oldest()
            if entry is None:
                if left is not None:
                    return None  # closing and everything delivered
                if self._wake.wait(1.0):
                    self._wake.clear()
                continue
            alert = self.spool.read(entry)
            if alert is None:  # dropped (spool full) or unreadable meanwhile
                self._update_spooled()
                continue
            return entry, alert

    def _delivered(self, entry: SpoolEntry, receiver: str) -> None:
        """``entry`` reached ``receiver`` (named in log lines): out of the spool, counted; a receiver that was
        down is said to be back."""
        self.spool.remove(entry)
        self.metrics.sent.inc()
        self._update_spooled()
        if self._failures:
            log.info("%s is back after %d failed attempts (%.0f s); delivering %d spooled alerts", receiver,
                     self._failures, time.monotonic() - self._down_since, len(self.spool))
        self._failures = 0

    def _failed(self) -> None:
        """One more failed delivery in a row, counted."""
        self._failures += 1
        self.metrics.failures.inc()
        if self._failures == 1:
            self._down_since = time.monotonic()

    def _retry_later(self, receiver: str, why: str) -> None:
        """Wait the backoff of the failures so far (spooling what arrives), saying why on the first failure and
        every :data:`LOG_EVERY` after it."""
        delay = backoff_delay(self._failures, self.backoff_initial_s, self.backoff_max_s)
        if self._failures == 1 or self._failures % LOG_EVERY == 0:
            log.warning("%s: %s (attempt %d); %d alerts kept in %s, next try in %.1f s", receiver, why, self._failures,
                        len(self.spool), self.spool.directory, delay)
        self._pause(delay)

    # -- internals ---------------------------------------------------------------------------------------

    def _to_spool(self, item: _Queued, sync: bool = True) -> None:
        event, raised_at = item
        try:
            alert = Alert.from_event(event, self.run_id, raised_at, self.jpeg_quality)
            self.spool.put(alert, sync)
        except OSError as exc:
            self.metrics.dropped.inc()
            log.error("%s alerts: could not write track %d's alert to %s (%s); it is lost (events.jsonl has it)",
                      self.sink, event.track_id, self.spool.directory, exc.strerror or exc)
        self._update_spooled()

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:
            log.exception("%s alerts: the delivery thread failed; alerts stay in %s for the next run", self.sink,
                          self.spool.directory)
        finally:
            self._drain_queue()
            self._update_spooled()
