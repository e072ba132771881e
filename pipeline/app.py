"""Composition root: turns the validated :class:`~pipeline.config.Config` into stage objects.

The config is read once, by the CLI; everything below takes typed arguments.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pipeline.anomaly.bank import Bank, BankError, build_bank, crop_features
from pipeline.anomaly.bank_cache import BankCache
from pipeline.anomaly.inspector import PartInspector
from pipeline.anomaly.reload import BankReloader
from pipeline.anomaly.stage import AnomalyStage, edge_mask
from pipeline.config import (
    AlertsConfig,
    Config,
    ConfigError,
    DetectorConfig,
    EncoderConfig,
    OutputConfig,
    ReidConfig,
    TrackerConfig,
    TrainingConfig,
)
from pipeline.detect import Detector
from pipeline.detect.background import BackgroundSubtractionDetector
from pipeline.detect.motchallenge import MotDetectionFile
from pipeline.detect.onnx_detector import OnnxDetector
from pipeline.encoder import Encoder, EncoderContractError, ModelFileError, OnnxEncoder
from pipeline.encoder_torch import TorchEncoder
from pipeline.gallery import ID_RANGE, Gallery
from pipeline.identity import IdentityStage, load_names
from pipeline.metrics import PipelineMetrics
from pipeline.progress import Progress
from pipeline.redact import redact_url
from pipeline.runner import Pipeline
from pipeline.sinks import (
    AnnotatedVideoSink,
    EventsJsonlSink,
    EvidenceSink,
    IdentitiesJsonlSink,
    MotTxtSink,
    Sink,
    check_writable_dir,
)
from pipeline.sources import IMAGE_EXTENSIONS
from pipeline.step import FrameStep, Observe, StepResult
from pipeline.tracking.tracker import Tracker
from pipeline.types import CropBatch, Frame, TrackState
from pipeline.video_segments import SegmentedVideoSink

if TYPE_CHECKING:
    from encoders.reid_train import ReidTrainConfig
    from encoders.train import TrainConfig
    from pipeline.gallery_sync import GallerySync

log = logging.getLogger(__name__)



def build_encoder(cfg: EncoderConfig, size: tuple[int, int] | None = None) -> Encoder:
    """The configured ONNX model, or the built-in pretrained EfficientNet-Lite0 exported once into the cache
    (at ``size`` ``(height, width)`` when given, for whole images, else ``input_size`` square crops).
    ``engine = "torch"`` runs the built-in network in PyTorch instead (same weights, same ``encoder_id``)."""
    if cfg.engine == "torch":  # with no model: EncoderConfig checks that
        from encoders.models import pretrained_lite0

        net = pretrained_lite0(stage=cfg.stage, pooling=cfg.pooling, patch_stage=cfg.patch_stage,
                               patch_detail_stage=cfg.patch_detail_stage)
        return TorchEncoder(net, size or (cfg.input_size, cfg.input_size), device=cfg.device, threads=cfg.threads,
                            max_batch=cfg.max_batch)
    if cfg.model:
        return OnnxEncoder(cfg.model, device=cfg.device, threads=cfg.threads, max_batch=cfg.max_batch)
    from encoders.model_cache import default_model_path

    def cached() -> Path:
        args = (cfg.cache_dir, cfg.stage, cfg.pooling, size or cfg.input_size, cfg.patch_stage, cfg.patch_detail_stage)
        path = default_model_path(*args)
        if path.is_file():
            return path
        from encoders.export import ensure_pretrained_onnx  # PyTorch: only to build the cache file, once

        return ensure_pretrained_onnx(*args)

    path = cached()
    try:
        return OnnxEncoder(path, device=cfg.device, threads=cfg.threads, max_batch=cfg.max_batch)
    except ModelFileError as exc:
        # A damaged cache file (a full disk, a copy cut short): it is ours to rebuild.
        log.warning("the cached built-in encoder cannot be used (%s); building it again", exc)
        try:
            path.unlink()
        except OSError as gone:
            raise EncoderContractError(f"{exc}; delete {path} (a cache file, rebuilt by the next run): it could "
                                       f"not be removed here ({gone.strerror or gone})") from None
    return OnnxEncoder(cached(), device=cfg.device, threads=cfg.threads, max_batch=cfg.max_batch)


def train_config(cfg: TrainingConfig) -> TrainConfig:
    """``[train]`` -> :class:`encoders.train.TrainConfig` (the same keys)."""
    from encoders.train import TrainConfig

    return TrainConfig(**asdict(cfg))


def reid_train_config(cfg: ReidConfig) -> ReidTrainConfig:
    """``[reid]`` -> :class:`encoders.reid_train.ReidTrainConfig` (the same keys)."""
    from encoders.reid_train import ReidTrainConfig

    return ReidTrainConfig(**asdict(cfg))


def build_reid_encoder(cfg: TrackerConfig, encoder: EncoderConfig) -> Encoder | None:
    """The tracker's own appearance encoder (``[tracker] reid_model``), on the anomaly encoder's device and
    threads; ``None`` when none is set."""
    if not cfg.reid_model:
        return None
    return OnnxEncoder(cfg.reid_model, device=encoder.device, threads=encoder.threads, max_batch=encoder.max_batch,
                       setting="[tracker] reid_model (`siamstream train --recipe reid`, then `siamstream export`)")


def build_detector(cfg: DetectorConfig) -> Detector:
    """``[detector]`` -> the detector ``kind`` names: your ONNX model, detections read from a MOTChallenge file, or
    background subtraction."""
    if cfg.kind == "file":
        return MotDetectionFile(cfg.file)
    if cfg.kind == "onnx":
        return OnnxDetector(cfg.model, input_size=cfg.input_size, conf_threshold=cfg.conf_threshold,
                            iou_threshold=cfg.iou_threshold, classes=cfg.classes, max_detections=cfg.max_detections,
                            layout=cfg.layout, device=cfg.device, threads=cfg.threads)
    return BackgroundSubtractionDetector(
        history=cfg.history, var_threshold=cfg.var_threshold, learning_rate=cfg.learning_rate,
        warmup_frames=cfg.warmup_frames, min_area=cfg.min_area, max_area_fraction=cfg.max_area_fraction,
        min_side=cfg.min_side, open_kernel=cfg.open_kernel, close_kernel=cfg.close_kernel)


def build_tracker(cfg: TrackerConfig) -> Tracker:
    """``[tracker]`` -> :class:`Tracker`, which takes the section as it is."""
    return Tracker(cfg)


def build_frame_step(cfg: Config, encoder: Encoder | None, detector: Detector, *, parts: bool,
                     reid_encoder: Encoder | None = None, observe: Observe | None = None) -> FrameStep:
    """detect -> crop -> embed -> track as ``[encoder]`` and ``[tracker]`` set it, with a new tracker; ``parts``:
    the part embeddings are needed (with patch features for a patch-level bank)."""
    return FrameStep(detector, build_tracker(cfg.tracker), encoder, reid_encoder=reid_encoder, parts=parts,
                     part_patches=parts, crop_padding=cfg.encoder.crop_padding,
                     appearance_region=cfg.tracker.appearance_region, color_weight=cfg.tracker.color_weight,
                     observe=observe)


def build_gallery(cfg: Config, reid_encoder: Encoder | None, shard: int = 0) -> Gallery | None:
    """The cross-camera gallery of ``[gallery]`` (``None`` when it is off), with the enrolled names loaded. One per
    process: every stream with the same re-identification model shares it; ``shard`` (``--shard``) picks the range
    its new global ids come from. :func:`share_gallery` connects it to the other engines'."""
    if not cfg.gallery.enabled:
        return None
    if reid_encoder is None:
        raise ConfigError("[gallery] enabled needs [tracker] reid_model (the re-identification encoder it compares)")
    g = cfg.gallery
    gallery = Gallery(reid_encoder.embedding_dim, g.threshold, g.margin, g.max_age_s, id_base=shard * ID_RANGE)
    if g.names:
        count = load_names(g.names, gallery, reid_encoder.encoder_id)
        log.info("gallery: %d enrolled name(s) from %s", count, g.names)
    return gallery


def share_gallery(cfg: Config, gallery: Gallery | None, shard: int, model_id: str) -> GallerySync | None:
    """With ``[gallery] broker`` set, ``gallery`` kept in step with the other engines' through that Redis stream
    (close it at the end); else ``None``."""
    if gallery is None or not cfg.gallery.broker:
        return None
    from pipeline.gallery_sync import GallerySync

    g = cfg.gallery
    sync = GallerySync(gallery, g.broker, shard, model_id, key=g.broker_key, maxlen=g.broker_maxlen)
    log.info("gallery: shared through %s (stream %s), shard %d", sync.url, g.broker_key, shard)
    return sync


def build_pipeline(cfg: Config, encoder: Encoder, metrics: PipelineMetrics, bank: Bank | None,
                   out_dir: Path, reid_encoder: Encoder | None = None,
                   identity: IdentityStage | None = None) -> Pipeline:
    """The per-frame pipeline; ``reid_encoder`` is the tracker's own appearance model (:func:`build_reid_encoder`,
    built by the caller so that a bad model fails before anything binds or opens). Evidence images go to
    ``OUT/evidence/`` (``[anomaly] evidence``), written by the sink :func:`build_sinks` adds for
    ``pipeline.evidence_dir``."""
    anomaly = None
    if bank is not None:
        evidence_dir = out_dir / "evidence" if cfg.anomaly.evidence else None
        if evidence_dir is not None:
            check_writable_dir(evidence_dir)
        anomaly = AnomalyStage(bank, PartInspector(bank.meta.threshold, cfg.anomaly.min_frames, cfg.anomaly.aggregate),
                               metrics, cfg.output.stream_name, cfg.anomaly.edge_margin, evidence_dir)
    else:
        log.info("no bank configured ([anomaly] bank is empty): anomaly scoring is off; "
                 "build one with `siamstream bank build --source GOOD_VIDEO_OR_DIR --out BANK`")
    metrics.encoder_info.info({"provider": getattr(encoder, "provider", "unknown"),
                               "model": str(getattr(encoder, "path", "")),
                               "embedding_dim": str(encoder.embedding_dim)})
    step = build_frame_step(cfg, encoder, build_detector(cfg.detector), parts=bank is not None,
                            reid_encoder=reid_encoder, observe=lambda stage, s: metrics.stage[stage].observe(s))
    return Pipeline(step, metrics, anomaly, identity)


def build_stream(cfg: Config, encoder: Encoder, metrics: PipelineMetrics, out_dir: Path, fps: float,
                 reid_encoder: Encoder | None = None, gallery: Gallery | None = None,
                 banks: BankCache | None = None) -> tuple[Pipeline, list[Sink], BankReloader | None]:
    """One stream's pipeline (with its bank, ``[anomaly] bank``), its sinks, and the watcher that swaps a changed
    bank in (``None`` without a bank or with ``reload_interval_s = 0``; the caller starts and stops it). The
    watcher is made before the bank is loaded, so a save during start-up is swapped in. With ``banks``, streams
    naming one bank share one copy of it."""
    holder: dict[str, Pipeline] = {}
    loader = banks.load if banks is not None else Bank.load
    reloader = (BankReloader(cfg.anomaly.bank, cfg.anomaly.reload_interval_s, lambda b: holder["p"].swap_bank(b),
                             on_error=lambda _m: metrics.bank_reload_errors.inc(), loader=loader)
                if cfg.anomaly.bank and cfg.anomaly.reload_interval_s > 0 else None)
    bank = load_bank(cfg.anomaly.bank, encoder, loader)
    identities = IdentitiesJsonlSink(out_dir / "identities.jsonl") if gallery is not None else None
    identity = (IdentityStage(gallery, cfg.output.stream_name, cfg.gallery.min_frames, identities.record)
                if gallery is not None and identities is not None else None)
    pipeline = holder["p"] = build_pipeline(cfg, encoder, metrics, bank, out_dir, reid_encoder, identity)
    sinks = build_sinks(cfg.output, out_dir, fps, cfg.alerts, metrics, pipeline.evidence_dir)
    if identities is not None:
        sinks.append(identities)
    return pipeline, sinks, reloader


def load_bank(path: str, encoder: Encoder, loader: Callable[[Path], Bank] = Bank.load) -> Bank | None:
    if not path:
        return None
    bank = loader(Path(path))
    bank.check_encoder(encoder.encoder_id, encoder.embedding_dim, encoder.patch_dim, path,
                       patches=encoder.patch_grid[0] * encoder.patch_grid[1])
    log.info("bank %s loaded: %d %s vectors (%s index), threshold %.4f", path, len(bank), bank.meta.level,
             bank.meta.index_type, bank.meta.threshold)
    return bank


def build_sinks(cfg: OutputConfig, out_dir: Path, fps: float, alerts: AlertsConfig | None = None,
                metrics: PipelineMetrics | None = None, evidence_dir: Path | None = None) -> list[Sink]:
    """The evidence images (into ``evidence_dir``, the pipeline's, when set), the file sinks ``[output]`` turns on,
    then the alert sinks of ``alerts`` (see :func:`build_alert_sinks`)."""
    check_writable_dir(out_dir)
    # First: the events file and the alerts read the evidence image an event names.
    sinks: list[Sink] = [EvidenceSink(evidence_dir)] if evidence_dir is not None else []
    if cfg.video:
        suffix = ".avi" if cfg.video_fourcc.upper() in ("MJPG", "XVID") else ".mp4"
        if cfg.video_segment_s > 0:
            frames = max(1, round(cfg.video_segment_s * (fps or 25.0)))
            sinks.append(SegmentedVideoSink(out_dir / "annotated", fps or 25.0, frames, cfg.video_fourcc, suffix))
        else:
            sinks.append(AnnotatedVideoSink(out_dir / f"annotated{suffix}", fps or 25.0, cfg.video_fourcc))
    if cfg.events:
        sinks.append(EventsJsonlSink(out_dir / "events.jsonl"))
    if cfg.mot:
        sinks.append(MotTxtSink(out_dir / "tracks.txt"))
    if alerts is not None:
        try:
            sinks.extend(build_alert_sinks(alerts, cfg.stream_name, out_dir, metrics))
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
    return sinks


def build_alert_sinks(cfg: AlertsConfig, stream: str, out_dir: Path,
                      metrics: PipelineMetrics | None = None) -> list[Sink]:
    """``[alerts]`` -> a :class:`~pipeline.alerts.webhook.WebhookSink` when ``webhook_url`` is set, a
    :class:`~pipeline.alerts.redis_streams.RedisStreamsSink` when ``redis_url`` is set and an
    :class:`~pipeline.alerts.mqtt.MqttSink` when ``mqtt_host`` is set, all with one run id (so one flagged part
    has the same ``alert_id`` on both) and each with its own spool, ``SPOOL_DIR/<stream>/<sink>``."""
    if not cfg.webhook_url and not cfg.mqtt_host and not cfg.redis_url:
        return []
    # Imported here: only runs with alerts load paho-mqtt and redis.
    from pipeline.alerts.mqtt import MqttSink
    from pipeline.alerts.webhook import WebhookSink

    root = Path(cfg.spool_dir).expanduser() if cfg.spool_dir else out_dir / "alert-spool"
    spool_root = root / (re.sub(r"[^A-Za-z0-9._-]", "_", stream) or "default")
    common: dict[str, Any] = dict(stream=stream, run_id=uuid.uuid4().hex, max_queue=cfg.max_queue,
                  spool_max_alerts=cfg.spool_max_alerts, spool_max_bytes=int(cfg.spool_max_mb * 2**20),
                  backoff_initial_s=cfg.backoff_initial_s, backoff_max_s=cfg.backoff_max_s,
                  close_timeout_s=cfg.close_timeout_s, jpeg_quality=cfg.jpeg_quality)
    sinks: list[Sink] = []
    try:
        if cfg.webhook_url:
            sinks.append(WebhookSink(cfg.webhook_url, spool_root / "webhook", timeout_s=cfg.webhook_timeout_s,
                                     max_rejections=cfg.webhook_max_rejections,
                                     metrics=metrics.alert_sink("webhook") if metrics else None, **common))
        if cfg.redis_url:
            from pipeline.alerts.redis_streams import RedisStreamsSink

            sinks.append(RedisStreamsSink(cfg.redis_url, spool_root / "redis", key=cfg.redis_key,
                                          maxlen=cfg.redis_maxlen, timeout_s=cfg.webhook_timeout_s,
                                          metrics=metrics.alert_sink("redis") if metrics else None, **common))
        if cfg.mqtt_host:
            sinks.append(MqttSink(cfg.mqtt_host, spool_root / "mqtt", port=cfg.mqtt_port, topic=cfg.mqtt_topic,
                                  client_id=cfg.mqtt_client_id, keepalive_s=cfg.mqtt_keepalive_s,
                                  max_inflight=cfg.mqtt_max_inflight,
                                  metrics=metrics.alert_sink("mqtt") if metrics else None, **common))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    log.info("alerts: %s; spool %s", ", ".join(
        ([f"webhook {redact_url(cfg.webhook_url)}"] if cfg.webhook_url else [])
        + ([f"mqtt {cfg.mqtt_host}:{cfg.mqtt_port} topic {cfg.mqtt_topic}"] if cfg.mqtt_host else [])
        + ([f"redis {redact_url(cfg.redis_url)} stream {cfg.redis_key}"] if cfg.redis_url else [])), spool_root)
    return sinks


@dataclass(frozen=True)
class GoodSamples:
    """Features of known-good crops and the group (tracked part or image) each came from."""

    features: np.ndarray  # (N, P, C) float32; P = 1 for global features
    groups: np.ndarray  # (N,) int64

    @property
    def parts(self) -> int:
        return len(np.unique(self.groups))


def _empty(encoder: Encoder, level: str) -> GoodSamples:
    dim = encoder.patch_dim if level == "patch" else encoder.embedding_dim
    p = encoder.patch_grid[0] * encoder.patch_grid[1] if level == "patch" else 1
    return GoodSamples(np.zeros((0, p, dim), np.float32), np.zeros(0, np.int64))


def _even(indices: list[int], n: int) -> list[int]:
    if len(indices) <= n:
        return indices
    return [indices[i] for i in np.linspace(0, len(indices) - 1, n).round().astype(int)]


def good_samples_from_frames(frames: Iterable[Frame], cfg: Config, encoder: Encoder,
                             reid_encoder: Encoder | None = None, progress_every_s: float = 5.0) -> GoodSamples:
    """Detect, track and embed good parts in a stream with the frame step ``run`` uses; one group per confirmed
    track.

    Only crops of confirmed tracks that lie fully inside the frame are kept (the crops the anomaly stage
    scores at run time), at most ``[bank] crops_per_part`` per track, evenly spaced along it.
    """
    level = cfg.bank.level
    step = build_frame_step(cfg, encoder, build_detector(cfg.detector), parts=True, reid_encoder=reid_encoder)
    feats: list[np.ndarray] = []
    groups: list[int] = []
    total = int(getattr(frames, "total_frames", 0) or (len(frames) if isinstance(frames, Sized) else 0))
    with Progress("bank: good parts", total, "frame", every_s=progress_every_s) as bar:
        parts: set[int] = set()
        for frame in frames:
            before = len(groups)
            _good_crops(step(frame), frame, cfg, feats, groups)
            parts.update(groups[before:])
            bar.update(1, f"{len(feats)} crops of {len(parts)} parts")
    if not feats:
        return _empty(encoder, level)
    g = np.asarray(groups, np.int64)
    keep = sorted(i for t in np.unique(g) for i in _even(np.flatnonzero(g == t).tolist(), cfg.bank.crops_per_part))
    return GoodSamples(np.stack([feats[i] for i in keep]).astype(np.float32), g[keep])


def _good_crops(result: StepResult, frame: Frame, cfg: Config, feats: list[np.ndarray], groups: list[int]) -> None:
    """Append the features of ``result``'s confirmed tracks seen whole in ``frame`` (one group per track)."""
    assert result.embeddings is not None  # the step embeds parts
    inside = edge_mask(result.detections.xyxy, frame.width, frame.height, cfg.anomaly.edge_margin)
    rows = crop_features(result.embeddings, cfg.bank.level)
    for obs in result.tracked.observations:
        di = obs.detection_index
        if obs.state == TrackState.CONFIRMED and di >= 0 and inside[di]:
            feats.append(rows[di])
            groups.append(obs.track_id)


def good_samples_from_images(folder: Path, encoder: Encoder, level: str, batch: int = 32) -> GoodSamples:
    """Whole images of good parts (one part per image, one group per image)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise BankError(f"{folder}: no images ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}) in it; pass a "
                        f"folder of good parts' images, or a video of the line")
    h, w = encoder.input_size
    feats: list[np.ndarray] = []
    with Progress("bank: good images", len(files), "image") as bar:
        for start in range(0, len(files), batch):
            imgs = []
            for p in files[start:start + batch]:
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if img is None:
                    raise BankError(f"{p}: not a readable image; remove it or convert it to PNG/JPEG")
                imgs.append(cv2.cvtColor(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
            arr = np.stack(imgs).astype(np.uint8, copy=False)
            boxes = np.tile(np.array([[0, 0, w, h]], np.float32), (len(arr), 1))
            feats.append(crop_features(encoder.embed(CropBatch(arr, boxes), with_patches=level == "patch"), level))
            bar.update(len(arr))
    if not feats:
        return _empty(encoder, level)
    f = np.concatenate(feats)
    return GoodSamples(f, np.arange(len(f), dtype=np.int64))


def bank_from_samples(samples: GoodSamples, cfg: Config, encoder: Encoder, source: str) -> Bank:
    return build_bank(samples.features, samples.groups, encoder.encoder_id, encoder.input_size,
                      level=cfg.bank.level, index_type=cfg.bank.index, k=cfg.bank.k, folds=cfg.bank.folds,
                      false_alarm_rate=cfg.bank.false_alarm_rate, max_vectors=cfg.bank.max_vectors,
                      coreset_fraction=cfg.bank.coreset_fraction, nlist=cfg.bank.nlist, nprobe=cfg.bank.nprobe,
                      pq_m=cfg.bank.pq_m, sources=[source], cell_norm=cfg.bank.cell_norm)
