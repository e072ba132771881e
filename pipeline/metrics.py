"""Every Prometheus metric siamstream exports, defined in one place. The registry is passed in.

Names follow Prometheus conventions: ``siamstream_`` prefix, base units, ``_total`` counters, ``_seconds``
histograms; labels are bounded (``stream``, ``stage``), never track or part ids.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    write_to_textfile,
)

log = logging.getLogger(__name__)

STAGES = ("read", "detect", "crop", "encode", "track", "anomaly", "sink")
# Per-frame stage latencies: from 0.25 ms to 2.5 s.
STAGE_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Raw k-NN distances: their scale depends on the encoder and the bank level (squared L2 of patch features
# is in the tens, cosine distances below 2), so the buckets span 1-2-5 steps over six decades.
SCORE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
                 200.0, 500.0, 1000.0)
# Scores divided by the bank's threshold: 1 is the threshold, whatever the encoder.
SCORE_RATIO_BUCKETS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
BATCH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)


def _version() -> str:
    try:
        return metadata.version("siamstream")
    except metadata.PackageNotFoundError:
        return "unknown"


class MetricFamilies:
    """Every metric family, registered once on ``registry``; each stream takes its own series of them
    (:class:`PipelineMetrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        s = ("stream",)
        self.frames_read = Counter("siamstream_frames_read_total", "Frames decoded from the source.", s,
                                   registry=registry)
        self.last_frame = Gauge("siamstream_last_frame_timestamp_seconds",
                                "Unix time the last frame finished processing.", s, registry=registry)
        self.frames_processed = Counter("siamstream_frames_processed_total",
                                        "Frames that went through every stage.", s, registry=registry)
        self.frames_dropped = Counter("siamstream_frames_dropped_total",
                                      "Live frames dropped because the pipeline fell behind.", s,
                                      registry=registry)
        self.source_nominal_fps = Gauge("siamstream_source_nominal_fps",
                                        "Frame rate the source declares (0 when unknown).", s,
                                        registry=registry)
        self.source_reconnects = Counter("siamstream_source_reconnects_total",
                                         "Times a live source was reopened after it stopped delivering.", s,
                                         registry=registry)
        self.source_queue_depth = Gauge("siamstream_source_queue_depth",
                                        "Frames a live source has read and queued, not yet processed (read when "
                                        "scraped; 0 for files).", s, registry=registry)
        self.stage = Histogram("siamstream_stage_latency_seconds", "Time spent in each stage per frame.",
                                ("stream", "stage"), buckets=STAGE_BUCKETS, registry=registry)
        self.frame_latency = Histogram("siamstream_frame_latency_seconds",
                                       "From a frame's capture (live sources, queueing included) or its "
                                       "decoding (files) to its verdicts written to the sinks.", s,
                                       buckets=FRAME_BUCKETS, registry=registry)
        self.encoder_batch = Histogram("siamstream_encoder_batch_size", "Crops per encoder batch (one per frame).",
                                       s, buckets=BATCH_BUCKETS, registry=registry)
        self.active_tracks = Gauge("siamstream_active_tracks", "Confirmed tracks currently followed.", s,
                                   registry=registry)
        self.appearance_gate = Gauge("siamstream_tracker_appearance_gate",
                                     "The tracker's appearance gates (cosine distance) measured on the stream "
                                     "([tracker] gates = \"video\"): gate first_pass or reid.",
                                     ("stream", "gate"), registry=registry)
        self.tracks_started = Counter("siamstream_tracks_started_total", "Tracks confirmed.", s,
                                      registry=registry)
        self.tracks_ended = Counter("siamstream_tracks_ended_total", "Confirmed tracks that ended.", s,
                                    registry=registry)
        self.parts_inspected = Counter("siamstream_parts_inspected_total",
                                       "Tracked parts that received a verdict.", s, registry=registry)
        self.parts_flagged = Counter("siamstream_parts_flagged_total", "Tracked parts flagged as defective.", s,
                                     registry=registry)
        self.anomaly_score = Histogram(
            "siamstream_anomaly_score", "Per-crop anomaly score: k-NN distance to the good bank (a per-cell "
            "z-score with a cell-normalised bank; below 0 counts in the lowest bucket).", s, buckets=SCORE_BUCKETS,
            registry=registry)
        self.anomaly_score_ratio = Histogram("siamstream_anomaly_score_ratio",
                                             "Per-crop anomaly score divided by the bank's threshold (above 1: "
                                             "the crop looks defective).", s, buckets=SCORE_RATIO_BUCKETS,
                                             registry=registry)
        self.crops_unscored = Counter("siamstream_crops_unscored_total",
                                      "Crops not scored: they touch the frame edge (part partly out of view).", s,
                                      registry=registry)
        self.bank_reloads = Counter("siamstream_bank_reloads_total",
                                    "Times a changed bank was loaded and swapped in without a restart.", s,
                                    registry=registry)
        self.bank_reload_errors = Counter("siamstream_bank_reload_errors_total",
                                          "Changed banks that could not be loaded (the previous bank stays in use).",
                                          s, registry=registry)
        # Created on first use, so a run without a bank exports no bank series and readiness can tell
        # "no encoder yet" from "encoder loaded".
        self.bank_size = Gauge("siamstream_bank_size", "Vectors in the anomaly bank.", s, registry=registry)
        self.bank_threshold = Gauge("siamstream_bank_threshold", "Calibrated anomaly threshold.", s,
                                     registry=registry)
        self.bank_updated = Gauge("siamstream_bank_updated_timestamp_seconds",
                                   "Unix time the bank was last changed.", s, registry=registry)
        self.encoder_info = Info("siamstream_encoder", "The encoder model and its execution provider.", s,
                                  registry=registry)
        self.build_info = Info("siamstream_build", "siamstream version.", registry=registry)
        self.build_info.info({"version": _version()})
        # Several streams in one process (pipeline.engine): `encoder` is "parts" or "reid" (bounded).
        self.shared_batch = Histogram("siamstream_shared_encoder_batch_size",
                                      "Crops per call of an encoder shared by several streams (frames of all "
                                      "streams batched together).", ("encoder",), buckets=BATCH_BUCKETS,
                                      registry=registry)
        self.shared_batch_frames = Histogram("siamstream_shared_encoder_batch_frames",
                                             "Frames (of any stream) whose crops went in one call of a shared "
                                             "encoder.", ("encoder",), buckets=BATCH_BUCKETS, registry=registry)
        self.stream_failures = Counter("siamstream_stream_failures_total",
                                       "Times the stream stopped on an error (its source, its bank, its outputs) "
                                       "while the others went on.", ("stream",), registry=registry)
        self.stream_up = Gauge("siamstream_stream_up", "1 while the stream runs; 0 once it stopped (its source "
                               "ended, or an error stopped it alone).", ("stream",), registry=registry)
        # A fleet (`run --shard`): what this engine is, which shard each stream of the shared list belongs to (as
        # this engine computes it), and the streams it runs. The rules find shards that are down and streams that
        # no running shard takes from these, without any target relabelling.
        self.fleet_shard = Gauge("siamstream_fleet_shard", "This engine's shard of a fleet (`run --shard`); the value "
                                 "is the number of shards it divides the stream list by.", ("shard",),
                                 registry=registry)
        self.fleet_stream_assigned = Gauge("siamstream_fleet_stream_assigned",
                                           "1 for every stream of the fleet's shared list, labelled with the shard "
                                           "rendezvous hashing gives it (as this engine computes it).",
                                           ("stream", "shard"), registry=registry)
        self.stream_shard = Gauge("siamstream_stream_shard", "1 for each stream this engine runs, labelled with its "
                                  "shard: join on `stream` to sum per-stream series by shard.", ("stream", "shard"),
                                  registry=registry)
        # Alert sinks (pipeline.alerts): series appear for the sinks in use; `sink` is "webhook", "mqtt" or "redis".
        a = ("stream", "sink")
        self.alerts_sent = Counter("siamstream_alerts_sent_total",
                                    "Alerts the receiver acknowledged (webhook 2xx, MQTT PUBACK).", a,
                                    registry=registry)
        self.alert_failures = Counter("siamstream_alert_delivery_failures_total",
                                       "Failed delivery attempts (each alert is kept and retried).", a,
                                       registry=registry)
        self.alerts_spooled = Gauge("siamstream_alerts_spooled", "Alerts on disk waiting for delivery.", a,
                                     registry=registry)
        self.alerts_dropped = Counter("siamstream_alerts_dropped_total",
                                       "Alerts given up: spool full (oldest dropped) or a spool file unreadable.",
                                       a, registry=registry)
        self.alerts_dead_lettered = Counter(
            "siamstream_alerts_dead_lettered_total",
            "Alerts the receiver kept rejecting (webhook 4xx other than 408/429), moved to the dead-letter folder.",
            a, registry=registry)


class PipelineMetrics:
    """One stream's series of the metrics on ``registry``, all labelled with its name. The first stream of a
    registry registers the families; :meth:`for_stream` gives another stream its own series of the same ones."""

    def __init__(self, registry: CollectorRegistry, stream: str = "default",
                 families: MetricFamilies | None = None) -> None:
        f = families if families is not None else MetricFamilies(registry)
        self.families = f
        self.registry = registry
        self.stream = stream
        self.frames_read = f.frames_read.labels(stream)
        self.last_frame = f.last_frame.labels(stream)
        self.frames_processed = f.frames_processed.labels(stream)
        self.frames_dropped = f.frames_dropped.labels(stream)
        self.source_nominal_fps = f.source_nominal_fps.labels(stream)
        self.source_reconnects = f.source_reconnects.labels(stream)
        self.source_queue_depth = f.source_queue_depth.labels(stream)
        self.frame_latency = f.frame_latency.labels(stream)
        self.encoder_batch = f.encoder_batch.labels(stream)
        self.active_tracks = f.active_tracks.labels(stream)
        self._gates: tuple[Gauge, Gauge] | None = None  # on first use: only streams with video gates have them
        self.tracks_started = f.tracks_started.labels(stream)
        self.tracks_ended = f.tracks_ended.labels(stream)
        self.parts_inspected = f.parts_inspected.labels(stream)
        self.parts_flagged = f.parts_flagged.labels(stream)
        self.anomaly_score = f.anomaly_score.labels(stream)
        self.anomaly_score_ratio = f.anomaly_score_ratio.labels(stream)
        self.crops_unscored = f.crops_unscored.labels(stream)
        self.bank_reloads = f.bank_reloads.labels(stream)
        self.bank_reload_errors = f.bank_reload_errors.labels(stream)
        self.stage = {name: f.stage.labels(stream, name) for name in STAGES}
        self.build_info = f.build_info
        self.stream_up = f.stream_up.labels(stream)
        self.stream_failures = f.stream_failures.labels(stream)

    def set_fleet(self, index: int, count: int, owners: dict[str, int]) -> None:
        """Publish this engine's place in a fleet: shard ``index`` of ``count``, and ``owners`` (every stream of
        the shared list -> its shard). Series of an earlier assignment (before a SIGHUP) are removed."""
        f = self.families
        f.fleet_shard.clear()
        f.fleet_shard.labels(str(index)).set(count)
        f.fleet_stream_assigned.clear()
        f.stream_shard.clear()
        for name, shard in owners.items():
            f.fleet_stream_assigned.labels(name, str(shard)).set(1)
            if shard == index:
                f.stream_shard.labels(name, str(shard)).set(1)

    def set_appearance_gates(self, first_pass: float, reid: float) -> None:
        """The tracker's measured appearance gates (``[tracker] gates = "video"``)."""
        if self._gates is None:
            g = self.families.appearance_gate
            self._gates = (g.labels(self.stream, "first_pass"), g.labels(self.stream, "reid"))
        self._gates[0].set(first_pass)
        self._gates[1].set(reid)

    def for_stream(self, stream: str) -> PipelineMetrics:
        """Another stream's series on the same registry."""
        return PipelineMetrics(self.registry, stream, self.families)

    @property
    def bank_size(self) -> Gauge:
        return self.families.bank_size.labels(self.stream)

    @property
    def bank_threshold(self) -> Gauge:
        return self.families.bank_threshold.labels(self.stream)

    @property
    def bank_updated(self) -> Gauge:
        return self.families.bank_updated.labels(self.stream)

    @property
    def encoder_info(self) -> Info:
        return self.families.encoder_info.labels(self.stream)

    def alert_sink(self, sink: str) -> AlertSinkMetrics:
        """The series of one alert sink (``sink`` is ``"webhook"``, ``"mqtt"`` or ``"redis"``: bounded)."""
        return AlertSinkMetrics(self.families.alerts_sent.labels(self.stream, sink),
                                self.families.alert_failures.labels(self.stream, sink),
                                self.families.alerts_spooled.labels(self.stream, sink),
                                self.families.alerts_dropped.labels(self.stream, sink),
                                self.families.alerts_dead_lettered.labels(self.stream, sink))


class AlertSinkMetrics:
    """One alert sink's series: delivered, failed attempts, waiting on disk, given up, set aside as rejected."""

    def __init__(self, sent: Counter, failures: Counter, spooled: Gauge, dropped: Counter,
                 dead_lettered: Counter) -> None:
        self.sent = sent
        self.failures = failures
        self.spooled = spooled
        self.dropped = dropped
        self.dead_lettered = dead_lettered


class MetricsError(RuntimeError):
    """The metrics endpoint cannot be served. ``str()`` names the address and the fix."""


StreamStates = Callable[[], dict[str, dict[str, str]]]


def readiness(registry: CollectorRegistry, stale_after_s: float = 10.0, now: float | None = None,
              states: dict[str, dict[str, str]] | None = None) -> tuple[bool, list[str]]:
    """Whether the pipeline is ready, read from its own metrics, and the reasons when it is not.

    Ready means: an encoder is loaded, every bank in use holds vectors, and every stream processed a frame
    in the last ``stale_after_s`` seconds. With several streams, ``states`` gives each one's state
    (:class:`pipeline.engine.StreamStatus`): a stream that failed is a reason, one whose source ended is not stale.
    """
    now = time.time() if now is None else now
    states = states or {}
    reasons: list[str] = []
    streams: set[str] = set()
    encoders: set[str] = set()
    for family in registry.collect():
        for sample in family.samples:
            stream = sample.labels.get("stream", "")
            if sample.name == "siamstream_encoder_info":
                encoders.add(stream)
            elif sample.name == "siamstream_bank_size" and sample.value <= 0:
                reasons.append(f"stream {stream}: the anomaly bank is empty")
            elif sample.name == "siamstream_last_frame_timestamp_seconds":
                if states and stream not in states:
                    continue  # a stream removed from the run
                streams.add(stream)
                if states.get(stream, {}).get("state") in ("ended", "failed"):
                    continue
                if sample.value <= 0:
                    reasons.append(f"stream {stream}: no frame processed yet")
                elif now - sample.value > stale_after_s:
                    reasons.append(f"stream {stream}: no frame for {now - sample.value:.0f} s")
    for stream in sorted(streams - encoders):
        if states.get(stream, {}).get("state") != "failed":
            reasons.append(f"stream {stream}: encoder not loaded")
    for stream, state in sorted(states.items()):
        if state.get("state") == "failed":
            reasons.append(f"stream {stream}: failed: {state.get('error', '')}")
    if not streams and not states:
        reasons.append("no stream registered")
    return not reasons, reasons


def _handler(registry: CollectorRegistry, stale_after_s: float,
             states: StreamStates | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                now_states = states() if states is not None else None
                ready, reasons = readiness(registry, stale_after_s, states=now_states)
                doc: dict[str, object] = {"ready": ready, "reasons": reasons}
                if now_states is not None:
                    doc["streams"] = now_states
                body = json.dumps(doc).encode() + b"\n"
                self._send(200 if ready else 503, body, "application/json")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not log lines
            pass

    return Handler


def serve(registry: CollectorRegistry, address: str, port: int, stale_after_s: float = 10.0,
          states: StreamStates | None = None) -> int:
    """Serve ``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (see :func:`readiness`; with ``states``,
    its JSON lists each stream's state) on ``address:port`` in a daemon thread; returns the bound port (0 picks
    one)."""
    try:
        server = ThreadingHTTPServer((address, port), _handler(registry, stale_after_s, states))
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            fix = (f"[metrics] address {address!r} is not an address of this machine; use 127.0.0.1 (this host "
                   f"only), 0.0.0.0 (every interface) or one of its own addresses")
        else:
            fix = ("choose another port with --set metrics.port=N (0 = any free port) or --set "
                   "metrics.enabled=false")
        raise MetricsError(f"cannot serve metrics on {address}:{port} ({exc.strerror or exc}); {fix}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", address, bound)
    return bound


def write_snapshot(registry: CollectorRegistry, path: str) -> None:
    """Write the registry's current values to ``path`` in the Prometheus text format.

    The file is written beside ``path`` and renamed over it, so a reader (e.g. node_exporter's textfile
    collector, which wants a ``.prom`` name) never sees half of it. A run's final values end up here even
    when no scrape came after its last frame.
    """
    try:
        write_to_textfile(path, registry)
    except OSError as exc:
        raise MetricsError(f"{path}: cannot write the final metrics ({exc.strerror or exc}); free space on "
                           f"that disk or choose another output directory") from None
