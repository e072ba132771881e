"""The only TOML reader: ``config.toml`` -> frozen dataclasses, validated once at the entry point.

Each section is a frozen dataclass whose fields carry their allowed range or choices in ``metadata``.
An unknown section or key, a wrong type or an out-of-range value raises :class:`ConfigError` naming the
file, the key, what was given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from pipeline.redact import redact_text, redact_url
from pipeline.tracking.appearance import REGIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration file or override is invalid. ``str()`` is a complete one-line message."""


def _f(default: Any, lo: float | None = None, hi: float | None = None,
       choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi, "choices": choices})


class _Section:
    """A config section. It checks itself when built, however it is built (from a file, ``--set``, or in code):
    every field against the range or choices in its ``metadata``, then the rules between its own keys
    (:meth:`_check`). Rules that span sections are checked when the whole :class:`Config` is read."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            where = f"[{self.SECTION}] {f.name}"
            lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f"{where}: got {value!r}, allowed: {', '.join(map(repr, choices))}")
            for item in value if isinstance(value, tuple) else (value,):  # a list's range applies to each item
                if (lo is not None and not item >= lo) or (hi is not None and not item <= hi):  # NaN is outside
                    rng = f"{lo if lo is not None else '-inf'} .. {hi if hi is not None else 'inf'}"
                    raise ConfigError(f"{where}: got {item!r}, allowed range {rng}")
        self._check()

    def _check(self) -> None:
        """Rules between this section's own keys; raises :class:`ConfigError`."""


@dataclass(frozen=True)
class SourceConfig(_Section):

    SECTION: ClassVar[str] = "source"
    uri: str = _f("")
    queue_size: int = _f(8, 1, 1024)
    reconnect_initial_s: float = _f(0.5, 0.01, 60.0)
    reconnect_max_s: float = _f(10.0, 0.1, 600.0)
    reconnect_attempts: int = _f(0, 0, 1_000_000)
    max_frames: int = _f(0, 0, None)
    fps_hint: float = _f(0.0, 0.0, 1000.0)
    read_ahead: int = _f(2, 0, 256)


# pipeline.detect.onnx_detector.LAYOUTS, repeated so reading a config does not import OpenCV (a test keeps them equal).
DETECTOR_LAYOUTS: tuple[str, ...] = ("auto", "yolov5", "yolov8", "end2end")


@dataclass(frozen=True)
class DetectorConfig(_Section):
    """``[detector]``: ``kind`` picks the detector; the keys after ``close_kernel`` are the ONNX detector's."""

    SECTION: ClassVar[str] = "detector"

    kind: str = _f("background", choices=("background", "onnx", "file"))
    history: int = _f(300, 1, 100_000)
    var_threshold: float = _f(32.0, 1.0, 1000.0)
    learning_rate: float = _f(0.0005, -1.0, 1.0)
    warmup_frames: int = _f(5, 0, 10_000)
    min_area: int = _f(400, 1, None)
    max_area_fraction: float = _f(0.5, 0.001, 1.0)
    min_side: int = _f(12, 1, None)
    open_kernel: int = _f(7, 1, 51)
    close_kernel: int = _f(15, 1, 101)
    model: str = _f("")
    input_size: int = _f(640, 32, 4096)
    conf_threshold: float = _f(0.25, 0.0, 1.0)
    iou_threshold: float = _f(0.45, 0.0, 1.0)
    classes: tuple[int, ...] = _f((), 0, None)
    max_detections: int = _f(300, 1, 100_000)
    layout: str = _f("auto", choices=DETECTOR_LAYOUTS)
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    threads: int = _f(0, 0, 256)
    file: str = _f("")


    def _check(self) -> None:
        if self.kind == "onnx" and not self.model:
            raise ConfigError("[detector] kind = 'onnx' needs model, the path of an ONNX detection model; set "
                              "[detector] model or use kind = 'background'")
        if self.kind == "file" and not self.file:
            raise ConfigError("[detector] kind = 'file' needs file, the path of a MOTChallenge det.txt "
                              "(frame,id,x,y,w,h,score,...) for the source; set [detector] file")

@dataclass(frozen=True)
class EncoderConfig(_Section):

    SECTION: ClassVar[str] = "encoder"
    model: str = _f("")
    cache_dir: str = _f("~/.cache/siamstream")
    engine: str = _f("onnxruntime", choices=("onnxruntime", "torch"))
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    threads: int = _f(0, 0, 256)
    input_size: int = _f(128, 32, 1024)
    stage: int = _f(5, 1, 7)
    pooling: str = _f("gem", choices=("avg", "gem"))
    patch_stage: int = _f(4, 0, 7)
    patch_detail_stage: int = _f(0, 0, 6)
    crop_padding: float = _f(0.1, 0.0, 2.0)
    max_batch: int = _f(64, 1, 4096)
    batch_wait_ms: float = _f(2.0, 0.0, 1000.0)


    def _check(self) -> None:
        if self.patch_stage > self.stage:
            raise ConfigError(f"[encoder] patch_stage = {self.patch_stage} comes after stage = {self.stage}; allowed: "
                              f"0 (no patches) .. {self.stage}")
        if self.patch_detail_stage and not self.patch_detail_stage < self.patch_stage:
            raise ConfigError(f"[encoder] patch_detail_stage = {self.patch_detail_stage} must come before "
                              f"patch_stage = {self.patch_stage}; allowed: 0 (none) .. {max(self.patch_stage - 1, 0)}")
        if self.engine == "torch" and self.model:
            raise ConfigError(f"[encoder] engine = 'torch' runs the built-in encoder, but model = {self.model!r} is "
                              f"set; allowed: engine = 'onnxruntime' for an ONNX model, or model = \"\" with "
                              f"engine = 'torch'")

@dataclass(frozen=True)
class TrackerConfig(_Section):
    """``[tracker]``: the arguments of :class:`pipeline.tracking.tracker.Tracker`, one for one, and
    ``appearance_region`` and ``color_weight``: which vectors the tracker is given
    (:mod:`pipeline.tracking.appearance`)."""

    SECTION: ClassVar[str] = "tracker"

    appearance_weight: float = _f(0.5, 0.0, 1.0)
    max_cost: float = _f(0.7, 0.0, 2.0)
    max_cosine_distance: float = _f(0.35, 0.0, 2.0)
    min_iou: float = _f(0.05, 0.0, 1.0)
    min_hits: int = _f(3, 1, 1000)
    max_lost_seconds: float = _f(2.0, 0.0, 3600.0)
    gallery_momentum: float = _f(0.8, 0.0, 1.0)
    high_score: float = _f(0.5, 0.0, 1.0)
    low_score: float = _f(0.1, 0.0, 1.0)
    new_track_score: float = _f(0.5, 0.0, 1.0)
    low_min_iou: float = _f(0.5, 0.0, 1.0)
    appearance: str = _f("ema", choices=("ema", "gallery"))
    gallery_size: int = _f(30, 1, 10_000)
    fusion: str = _f("weighted", choices=("weighted", "min"))
    max_mahalanobis: float = _f(9.4877, 0.0, 1e6)
    reid_max_cosine_distance: float = _f(0.2, 0.0, 2.0)
    reid_margin: float = _f(0.1, 0.0, 2.0)
    reid_max_speed: float = _f(2.0, 0.0, 1000.0)
    max_height_ratio: float = _f(1.7, 0.0, 100.0)
    kalman_fps: float = _f(30.0, 0.1, 1000.0)
    std_weight_position: float = _f(0.05, 1e-6, 10.0)
    std_weight_velocity: float = _f(0.00625, 1e-6, 10.0)
    nsa: bool = _f(False)
    cmc: str = _f("none", choices=("none", "sparse", "ecc"))
    cmc_downscale: float = _f(2.0, 1.0, 32.0)
    duplicate_iou: float = _f(0.0, 0.0, 1.0)
    gates: str = _f("fixed", choices=("fixed", "video"))
    appearance_region: str = _f("crop", choices=REGIONS)
    color_weight: float = _f(0.0, 0.0, 1.0)
    reid_model: str = _f("")

    def _check(self) -> None:
        if self.low_score > self.high_score:
            raise ConfigError(f"[tracker] low_score = {self.low_score} is above high_score = {self.high_score}; "
                              f"allowed: low_score <= high_score")
        if 0 < self.max_height_ratio < 1:
            raise ConfigError(f"[tracker] max_height_ratio = {self.max_height_ratio} is a factor between heights and "
                              f"cannot be below 1; allowed: 0 (off) or >= 1, e.g. 1.7")


@dataclass(frozen=True)
class AnomalyConfig(_Section):

    SECTION: ClassVar[str] = "anomaly"
    bank: str = _f("")
    min_frames: int = _f(3, 1, 10_000)
    aggregate: str = _f("median", choices=("median", "mean", "max"))
    edge_margin: int = _f(4, 0, 10_000)
    map_sigma: float = _f(4.0, 0.0, 100.0)
    reload_interval_s: float = _f(5.0, 0.0, 86_400.0)
    map_border: int = _f(0, 0, 10_000)
    evidence: bool = _f(True)


@dataclass(frozen=True)
class BankConfig(_Section):

    SECTION: ClassVar[str] = "bank"
    level: str = _f("patch", choices=("patch", "global"))
    k: int = _f(1, 1, 256)
    index: str = _f("flat", choices=("flat", "hnsw", "ivf-flat", "ivf-pq"))
    nlist: int = _f(0, 0, 1 << 20)
    nprobe: int = _f(8, 1, 1 << 20)
    pq_m: int = _f(0, 0, 4096)
    folds: int = _f(5, 2, 100)
    false_alarm_rate: float = _f(0.01, 0.0001, 0.5)
    max_vectors: int = _f(50_000, 10, None)
    coreset_fraction: float = _f(0.1, 0.001, 1.0)
    crops_per_part: int = _f(16, 1, 100_000)
    cell_norm: bool = _f(False)


@dataclass(frozen=True)
class OutputConfig(_Section):

    SECTION: ClassVar[str] = "output"
    dir: str = _f("runs/latest")
    video: bool = _f(True)
    events: bool = _f(True)
    mot: bool = _f(True)
    mot_fill_gaps: bool = _f(True)
    video_fourcc: str = _f("mp4v")
    video_segment_s: float = _f(60.0, 0.0, 86400.0)
    stream_name: str = _f("default")
    progress_every_s: float = _f(5.0, 0.0, 3600.0)


    def _check(self) -> None:
        if len(self.video_fourcc) != 4:
            raise ConfigError(f"[output] video_fourcc: got {self.video_fourcc!r}, allowed: a 4-character codec code "
                              f"such as 'mp4v' or 'MJPG'")

@dataclass(frozen=True)
class MetricsConfig(_Section):

    SECTION: ClassVar[str] = "metrics"
    enabled: bool = _f(True)
    address: str = _f("127.0.0.1")
    port: int = _f(9108, 0, 65535)


@dataclass(frozen=True)
class AlertsConfig(_Section):
    """``[alerts]``: push each flagged part to a webhook, an MQTT broker and/or a Redis stream
    (:mod:`pipeline.alerts`)."""

    SECTION: ClassVar[str] = "alerts"

    webhook_url: str = _f("")
    webhook_timeout_s: float = _f(5.0, 0.1, 300.0)
    webhook_max_rejections: int = _f(5, 0, 1_000_000)
    mqtt_host: str = _f("")
    mqtt_port: int = _f(1883, 1, 65535)
    mqtt_topic: str = _f("siamstream/alerts")
    mqtt_client_id: str = _f("")
    mqtt_keepalive_s: int = _f(30, 5, 3600)
    mqtt_max_inflight: int = _f(20, 1, 65535)
    redis_url: str = _f("")
    redis_key: str = _f("siamstream:alerts")
    redis_maxlen: int = _f(100_000, 1, 1_000_000_000)
    spool_dir: str = _f("")
    spool_max_alerts: int = _f(10_000, 1, 10_000_000)
    spool_max_mb: float = _f(256.0, 0.01, 1_000_000.0)
    max_queue: int = _f(1000, 1, 1_000_000)
    backoff_initial_s: float = _f(0.5, 0.01, 600.0)
    backoff_max_s: float = _f(30.0, 0.01, 3600.0)
    close_timeout_s: float = _f(10.0, 0.0, 3600.0)
    jpeg_quality: int = _f(90, 1, 100)


# encoders.losses.LABEL_LOSSES, repeated so reading a config does not import torch (a test keeps them equal).
TRAIN_LOSSES: tuple[str, ...] = ("triplet_batch_hard", "triplet_soft", "triplet_semi_hard", "supcon")


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """``[train]``: the keys of :class:`encoders.train.TrainConfig`, one for one."""

    SECTION: ClassVar[str] = "train"

    backbone: str = _f("small-cnn", choices=("small-cnn", "efficientnet-lite0"))
    stage: int = _f(5, 1, 7)
    input_size: int = _f(64, 8, 1024)
    grayscale: bool = _f(True)
    embedding_dim: int = _f(128, 0, 4096)
    pooling: str = _f("gem", choices=("avg", "gem"))
    loss: str = _f("triplet_batch_hard", choices=TRAIN_LOSSES)
    margin: float = _f(0.2, 0.0, 10.0)
    temperature: float = _f(0.1, 0.001, 10.0)
    lr: float = _f(0.001, 1e-7, 1.0)
    weight_decay: float = _f(0.0001, 0.0, 1.0)
    warmup_fraction: float = _f(0.05, 0.0, 0.5)
    epochs: int = _f(20, 0, 100_000)
    batches_per_epoch: int = _f(100, 1, 10_000_000)
    p: int = _f(16, 2, 4096)
    k: int = _f(4, 2, 1024)
    augment: bool = _f(True)
    augment_preset: str = _f("photo", choices=("photo", "glyph"))
    rotate_classes: bool = _f(False)
    invert: bool = _f(False)
    seed: int = _f(0, 0, 2**32 - 1)
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    amp: bool = _f(True)
    num_threads: int = _f(0, 0, 256)
    depth: int = _f(1, 1, 16)
    progress_every_s: float = _f(5.0, 0.0, 3600.0)
    whiten: bool = _f(False)
    whiten_shrinkage: float = _f(0.3, 0.0, 1000.0)
    whiten_mirror: bool = _f(True)


@dataclass(frozen=True)
class ReidConfig(_Section):
    """``[reid]``: the person re-identification recipe (``siamstream train --recipe reid``); the lab's
    :class:`encoders.reid_train.ReidTrainConfig` is this section."""

    SECTION: ClassVar[str] = "reid"

    backbone: str = _f("efficientnet-lite0", choices=("efficientnet-lite0", "small-cnn"))
    stage: int = _f(7, 1, 7)
    freeze_stages: int = _f(0, 0, 6)
    height: int = _f(128, 16, 1024)
    width: int = _f(64, 16, 1024)
    pooling: str = _f("gem", choices=("avg", "gem"))
    id_loss: bool = _f(False)
    label_smoothing: float = _f(0.1, 0.0, 0.99)
    margin: float = _f(0.3, 0.0, 10.0)
    lr: float = _f(0.00035, 1e-7, 1.0)
    weight_decay: float = _f(0.0005, 0.0, 1.0)
    warmup_fraction: float = _f(0.1, 0.0, 0.5)
    epochs: int = _f(28, 1, 100_000)
    p: int = _f(16, 2, 4096)
    k: int = _f(4, 2, 1024)
    pad: int = _f(10, 0, 256)
    jitter: float = _f(0.2, 0.0, 0.99)
    erase_p: float = _f(0.5, 0.0, 1.0)
    val_identities: int = _f(100, 0, 100_000)
    val_every: int = _f(5, 1, 100_000)
    seed: int = _f(0, 0, 2**32 - 1)
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    num_threads: int = _f(0, 0, 256)
    progress_every_s: float = _f(30.0, 0.0, 3600.0)

    def _check(self) -> None:
        if self.freeze_stages and (self.backbone == "small-cnn" or self.freeze_stages >= self.stage):
            raise ConfigError(f"[reid] freeze_stages = {self.freeze_stages} with backbone = {self.backbone!r}, "
                              f"stage = {self.stage}; allowed: 0 .. stage - 1 with efficientnet-lite0, 0 with "
                              f"small-cnn")


@dataclass(frozen=True)
class FleetConfig(_Section):
    """``[fleet]``: the stream list of one engine or of several sharing it (:mod:`pipeline.shards`), and watching
    its file (:mod:`pipeline.config_watch`)."""

    SECTION: ClassVar[str] = "fleet"
    shards: int = _f(1, 1, 100_000)
    watch_config_s: float = _f(0.0, 0.0, 3600.0)  # > 0: a change of the config file reloads the streams, as SIGHUP


@dataclass(frozen=True)
class GalleryConfig(_Section):
    """``[gallery]``: one identity across the cameras of a process (:mod:`pipeline.gallery`,
    :mod:`pipeline.identity`)."""

    SECTION: ClassVar[str] = "gallery"
    enabled: bool = _f(False)
    threshold: float = _f(0.13, 0.0, 2.0)
    margin: float = _f(0.05, 0.0, 2.0)
    max_age_s: float = _f(3600.0, 1.0, 30 * 86400.0)
    min_frames: int = _f(10, 1, 100_000)
    names: str = _f("")
    broker: str = _f("")  # Redis URL that the engines of a fleet share the gallery through ("" = this process only)
    broker_key: str = _f("siamstream:gallery")
    broker_maxlen: int = _f(100_000, 1, 1_000_000_000)


# What a [[streams]] entry may set besides its name and source: these sections, merged over the top-level ones.
STREAM_SECTIONS: tuple[str, ...] = ("detector", "tracker", "anomaly", "output")
# Keys of those sections a stream cannot set: its folder and its metric label are its name.
_STREAM_FIXED: dict[tuple[str, str], str] = {
    ("output", "dir"): "each stream writes to OUT/<name>; set OUT with --out or the top-level [output] dir",
    ("output", "stream_name"): "the stream's name is its `name`",
}
# A stream's name is a metric label value and a folder name: short, no spaces or path separators.
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class StreamConfig:
    """One ``[[streams]]`` entry: a named source and the sections it overrides, already merged over the top-level
    ones (so each is complete and checked).

    Attributes:
        name: the ``stream`` label of its metrics and events, and its folder under the run's output folder.
        source: the file, folder, camera index or URL it reads.
    """

    name: str
    source: str
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def config(self, base: Config) -> Config:
        """What this stream runs with: ``base`` with this stream's source and sections, and no stream list."""
        return dataclasses.replace(base, source=dataclasses.replace(base.source, uri=self.source),
                                   detector=self.detector, tracker=self.tracker, anomaly=self.anomaly,
                                   output=self.output, streams=())


@dataclass(frozen=True)
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    reid: ReidConfig = field(default_factory=ReidConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    streams: tuple[StreamConfig, ...] = ()  # [[streams]]: several sources in one process (pipeline.engine)


_SECTIONS: dict[str, type] = {f.name: f.type if isinstance(f.type, type) else get_type_hints(Config)[f.name]
                              for f in dataclasses.fields(Config) if f.name != "streams"}


def _type_name(t: type) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[t]


def _coerce(value: Any, t: type, where: str) -> Any:
    """Check ``value`` against scalar type ``t``, or each item against ``T`` for ``tuple[T, ...]`` (a TOML list);
    ints are accepted for floats, never bools."""
    if get_origin(t) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, e.g. [0, 2], got {value!r} ({type(value).__name__})")
        return tuple(_coerce(item, get_args(t)[0], where) for item in value)
    if t is bool:
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}: expected {_type_name(t)}{' (finite)' if t is float else ''}, got {value!r} "
                          f"({type(value).__name__})")
    return value


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# Keys that moved, and why: the old place is refused with the new one named (a silently ignored key misleads).
MOVED: dict[tuple[str, str], str] = {
    ("anomaly", "k"): "[bank] k (the bank's k is fixed when it is built: its threshold is calibrated with it; "
                      "rebuild the bank to change it)",
}


def _build_section(cls: type, raw: dict[str, Any], origin: str, section: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{origin}: [{section}] {key}"
        if (section, key) in MOVED:
            raise ConfigError(f"{origin}: [{section}] {key} is now {MOVED[section, key]}; move it there")
        if key not in hints:
            raise ConfigError(f"{origin}: unknown key [{section}] {key!r}{_suggest(key, names)}; "
                              f"allowed keys: {', '.join(names)}")
        values[key] = _coerce(value, hints[key], where)
    try:
        return cls(**values)  # checks its ranges, choices and own rules
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> (section, key, value). The value is read as TOML, else as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set tracker.min_hits=2")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return section, key, value


def config_from_dict(raw: dict[str, Any], origin: str = "<config>",
                     overrides: list[str] | tuple[str, ...] = ()) -> Config:
    merged: dict[str, dict[str, Any]] = {}
    streams = raw.get("streams", [])
    for section, body in raw.items():
        if section == "streams":
            continue
        if section not in _SECTIONS:
            raise ConfigError(f"{origin}: unknown section [{section}]{_suggest(section, list(_SECTIONS))}; "
                              f"allowed sections: {', '.join(_SECTIONS)} and [[streams]]")
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table of keys, got {body!r}")
        merged[section] = dict(body)
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in _SECTIONS:
            raise ConfigError(f"--set {text!r}: unknown section [{section}]{_suggest(section, list(_SECTIONS))}; "
                              f"allowed sections: {', '.join(_SECTIONS)}")
        merged.setdefault(section, {})[key] = value
    origin_with_sets = origin + (" (with --set overrides)" if overrides else "")
    sections = {name: _build_section(cls, merged.get(name, {}), origin_with_sets, name)
                for name, cls in _SECTIONS.items()}
    cfg = Config(**sections)
    _check_together(cfg, origin_with_sets)
    if streams:
        cfg = dataclasses.replace(cfg, streams=_build_streams(streams, merged, cfg, origin_with_sets))
    return cfg


def _build_streams(entries: object, merged: dict[str, dict[str, Any]], cfg: Config,
                   origin: str) -> tuple[StreamConfig, ...]:
    """``[[streams]]`` -> one :class:`StreamConfig` per entry, each section merged over the top-level one and
    checked as a whole config is (its own rules and those between sections)."""
    example = "e.g. [[streams]] name = \"line1\" source = \"line1.mp4\""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{origin}: streams must be an array of tables ([[streams]]), {example}")
    result: list[StreamConfig] = []
    for i, entry in enumerate(entries):
        name = entry.get("name")
        if not isinstance(name, str) or not STREAM_NAME.fullmatch(name):
            raise ConfigError(f"{origin}: [[streams]] entry {i + 1}: name: got {name!r}, allowed: 1 to 64 letters, "
                              f"digits, '.', '_' or '-', starting with a letter or digit ({example})")
        where = f"{origin}: [[streams]] {name!r}"
        if any(s.name == name for s in result):
            raise ConfigError(f"{where}: the name is used twice; give each stream its own name")
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{where}: source: got {redact_url(str(source)) if source else source!r}, allowed: "
                              f"a file, folder, camera index or URL ({example})")
        for key in entry:
            if key not in ("name", "source", *STREAM_SECTIONS):
                raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, ['name', 'source', *STREAM_SECTIONS])}"
                                  f"; allowed: name, source and the tables {', '.join(STREAM_SECTIONS)} "
                                  f"(e.g. [streams.anomaly] bank = \"...\")")
        sections: dict[str, Any] = {}
        for section in STREAM_SECTIONS:
            own = entry.get(section, {})
            if not isinstance(own, dict):
                raise ConfigError(f"{where}: {section} must be a table ([streams.{section}]), got {own!r}")
            for key in own:
                if (section, key) in _STREAM_FIXED:
                    raise ConfigError(f"{where}: [streams.{section}] {key} cannot be set per stream: "
                                      f"{_STREAM_FIXED[section, key]}")
            body = {**merged.get(section, {}), **own}
            if section == "output":
                body["stream_name"] = name
            sections[section] = _build_section(_SECTIONS[section], body, where, section)
        stream = StreamConfig(name, source, **sections)
        _check_together(stream.config(cfg), where)
        result.append(stream)
    return tuple(result)



def _check_redis_url(url: str, what: str) -> None:
    """A Redis URL, or '' (off)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is not a number in 0-65535 raises here, as the Redis client would later
    except ValueError:  # an unbalanced "[" in the host, or a bad port
        parts, host = urlsplit(""), None
    if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not host):
        shown = redact_text(redact_url(url))
        raise ConfigError(f"{what}: got {shown!r}, allowed: a redis:// or rediss:// (TLS) URL with a host "
                          f"(e.g. 'redis://127.0.0.1:6379/0'; a password goes before the host), a unix:// socket "
                          f"path, or '' (off)")


def _check_alerts(cfg: AlertsConfig, origin: str) -> None:
    url = cfg.webhook_url
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is not a number in 0-65535 raises here, as the Redis client would later
    except ValueError:  # an unbalanced "[" in the host, or a bad port
        parts, host = urlsplit(""), None
    if url and (parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in url)):
        shown = redact_text(redact_url(url))
        raise ConfigError(f"{origin}: [alerts] webhook_url: got {shown!r}, allowed: an http:// or https:// "
                          f"URL with a host and no spaces (e.g. 'http://127.0.0.1:5001/alerts') or '' (off)")
    topic = cfg.mqtt_topic
    if not topic or "+" in topic or "#" in topic:
        raise ConfigError(f"{origin}: [alerts] mqtt_topic: got {topic!r}, allowed: a non-empty topic without the "
                          f"wildcards + and # (e.g. 'siamstream/alerts')")
    _check_redis_url(cfg.redis_url, f"{origin}: [alerts] redis_url")
    if not cfg.redis_key:
        raise ConfigError(f"{origin}: [alerts] redis_key: got '', allowed: a stream key, e.g. 'siamstream:alerts'")
    if cfg.backoff_max_s < cfg.backoff_initial_s:
        raise ConfigError(f"{origin}: [alerts] backoff_max_s = {cfg.backoff_max_s} is below backoff_initial_s = "
                          f"{cfg.backoff_initial_s}; allowed: backoff_initial_s <= backoff_max_s")


def _check_together(cfg: Config, origin: str) -> None:
    """Rules that involve more than one key."""
    _check_alerts(cfg.alerts, origin)
    if cfg.train.epochs == 0 and not (cfg.train.whiten and cfg.train.embedding_dim == 0):
        raise ConfigError(f"{origin}: [train] epochs = 0 trains nothing: it needs whiten = true and embedding_dim = 0 "
                          f"(a whitening head fitted in closed form on the pretrained features); allowed: epochs >= 1, "
                          f"or epochs = 0 with whiten = true and embedding_dim = 0")
    if cfg.bank.level == "patch" and cfg.encoder.patch_stage == 0 and not cfg.encoder.model:
        raise ConfigError(f"{origin}: [bank] level = 'patch' needs patch features but [encoder] patch_stage = 0; "
                          f"set patch_stage (e.g. 4) or level = 'global'")
    _check_redis_url(cfg.gallery.broker, f"{origin}: [gallery] broker")
    if not cfg.gallery.broker_key:
        raise ConfigError(f"{origin}: [gallery] broker_key: got '', allowed: a stream key, e.g. 'siamstream:gallery'")
    if cfg.gallery.enabled and not (cfg.tracker.reid_model or any(st.tracker.reid_model for st in cfg.streams)):
        raise ConfigError(f"{origin}: [gallery] enabled compares people across cameras by the re-identification "
                          f"model, but [tracker] reid_model is not set; set it (siamstream train --recipe reid, then "
                          f"export) or enabled = false")
    if cfg.tracker.reid_model and cfg.tracker.color_weight > 0:
        raise ConfigError(f"{origin}: [tracker] color_weight = {cfg.tracker.color_weight} mixes colour into the "
                          f"built-in encoder's appearance, but reid_model = {cfg.tracker.reid_model!r} gives the "
                          f"tracker its own appearance; allowed: color_weight = 0 with a reid_model")
    if cfg.tracker.appearance_region == "box" and cfg.encoder.patch_stage == 0 and not cfg.encoder.model:
        raise ConfigError(f"{origin}: [tracker] appearance_region = 'box' needs patch features but [encoder] "
                          f"patch_stage = 0; set patch_stage (e.g. 4) or appearance_region = 'crop'")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read and validate a config file; ``None`` gives the defaults (plus overrides)."""
    if path is None:
        return config_from_dict({}, "<defaults>", overrides)
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: a folder, not a config file; pass the TOML file, e.g. --config {p / 'config.toml'}")
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; pass an existing file, e.g. --config config.toml")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return config_from_dict(raw, str(p), overrides)


def replace(cfg: Config, section: str, **changes: Any) -> Config:
    """A copy of ``cfg`` with keys of one section changed (used by commands that set defaults)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def config_to_toml(cfg: Config) -> str:
    """``cfg`` as a complete TOML file (every key of every section; ``[[streams]]`` left out), which
    :func:`load_config` reads back to an equal :class:`Config`."""
    import tomli_w

    body = {name: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(cfg, name)).items()}
            for name in _SECTIONS}
    return tomli_w.dumps(body)
