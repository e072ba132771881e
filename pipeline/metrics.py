"""Every Prometheus metric siamstream exports, defined in one place. The registry is passed in.

Names follow Prometheus conventions: ``siamstream_`` prefix, base units, ``_total`` counters, ``_seconds``
histograms; labels are bounded (``stream``, ``stage``), never track or part ids.
"""

from __future__ import annotations

import logging
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger(__name__)

STAGES = ("read", "detect", "crop", "encode", "track", "anomaly", "sink")
# Per-frame stage latencies: from 0.25 ms to 2.5 s.
STAGE_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCORE_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0)
BATCH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)


def _version() -> str:
    try:
        return metadata.version("siamstream")
    except metadata.PackageNotFoundError:
        return "unknown"


class PipelineMetrics:
    """The pipeline's metrics on ``registry``, all labelled with one stream name."""

    def __init__(self, registry: CollectorRegistry, stream: str = "default") -> None:
        self.registry = registry
        self.stream = stream
        s = ("stream",)
        self.frames_read = Counter("siamstream_frames_read_total", "Frames decoded from the source.", s,
                                   registry=registry).labels(stream)
        self.frames_processed = Counter("siamstream_frames_processed_total",
                                        "Frames that went through every stage.", s, registry=registry).labels(stream)
        self.frames_dropped = Counter("siamstream_frames_dropped_total",
                                      "Live frames dropped because the pipeline fell behind.", s,
                                      registry=registry).labels(stream)
        self.source_nominal_fps = Gauge("siamstream_source_nominal_fps",
                                        "Frame rate the source declares (0 when unknown).", s,
                                        registry=registry).labels(stream)
        self.source_reconnects = Counter("siamstream_source_reconnects_total",
                                         "Times a live source was reopened after it stopped delivering.", s,
                                         registry=registry).labels(stream)
        self._stage = Histogram("siamstream_stage_latency_seconds", "Time spent in each stage per frame.",
                                ("stream", "stage"), buckets=STAGE_BUCKETS, registry=registry)
        self.stage = {name: self._stage.labels(stream, name) for name in STAGES}
        self.frame_latency = Histogram("siamstream_frame_latency_seconds",
                                       "From a frame leaving the source to its verdicts written to the sinks.", s,
                                       buckets=FRAME_BUCKETS, registry=registry).labels(stream)
        self.encoder_batch = Histogram("siamstream_encoder_batch_size", "Crops per encoder batch (one per frame).",
                                       s, buckets=BATCH_BUCKETS, registry=registry).labels(stream)
        self.active_tracks = Gauge("siamstream_active_tracks", "Confirmed tracks currently followed.", s,
                                   registry=registry).labels(stream)
        self.tracks_started = Counter("siamstream_tracks_started_total", "Tracks confirmed.", s,
                                      registry=registry).labels(stream)
        self.tracks_ended = Counter("siamstream_tracks_ended_total", "Confirmed tracks that ended.", s,
                                    registry=registry).labels(stream)
        self.parts_inspected = Counter("siamstream_parts_inspected_total",
                                       "Tracked parts that received a verdict.", s, registry=registry).labels(stream)
        self.parts_flagged = Counter("siamstream_parts_flagged_total", "Tracked parts flagged as defective.", s,
                                     registry=registry).labels(stream)
        self.anomaly_score = Histogram("siamstream_anomaly_score", "Per-crop k-NN distance to the good bank.", s,
                                       buckets=SCORE_BUCKETS, registry=registry).labels(stream)
        self.crops_unscored = Counter("siamstream_crops_unscored_total",
                                      "Crops not scored: they touch the frame edge (part partly out of view).", s,
                                      registry=registry).labels(stream)
        self.bank_size = Gauge("siamstream_bank_size", "Vectors in the anomaly bank.", s,
                               registry=registry).labels(stream)
        self.bank_threshold = Gauge("siamstream_bank_threshold", "Calibrated anomaly threshold.", s,
                                    registry=registry).labels(stream)
        self.bank_updated = Gauge("siamstream_bank_updated_timestamp_seconds",
                                  "Unix time the bank was last changed.", s, registry=registry).labels(stream)
        self.encoder_info = Info("siamstream_encoder", "The encoder model and its execution provider.", s,
                                 registry=registry).labels(stream)
        self.build_info = Info("siamstream_build", "siamstream version.", registry=registry)
        self.build_info.info({"version": _version()})


class MetricsError(RuntimeError):
    """The metrics endpoint cannot be served. ``str()`` names the address and the fix."""


def serve(registry: CollectorRegistry, address: str, port: int) -> int:
    """Serve ``/metrics`` on ``address:port`` in a daemon thread; returns the bound port (0 picks one)."""
    try:
        server, _thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        msg = (f"cannot serve metrics on {address}:{port} ({exc.strerror or exc}); choose another port with "
               f"--set metrics.port=N (0 = any free port) or --set metrics.enabled=false")
        raise MetricsError(msg) from None
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", address, bound)
    return bound
