"""Train a Siamese encoder on a folder of classes with a label-based metric-learning loss.

One run lives in one directory::

    RUN_DIR/checkpoint.pt      everything needed to resume, rewritten atomically after every epoch
    RUN_DIR/log.csv, log.jsonl one row per epoch: epoch, loss, lr, seconds, images_per_s
    RUN_DIR/model.pt           final weights (state dict of the EmbeddingNet), written when the run ends
    RUN_DIR/train_config.json  the TrainConfig, to rebuild the model (:func:`load_run`)
    RUN_DIR/data/              the extracted archive, when the data was given as a zip

Batches are P classes x K images (:class:`~encoders.data.PKBatchSampler`); each epoch's sampler and
augmentation generators are seeded from ``(seed, epoch)``, so an epoch draws the same batches whether the run
went straight through or was resumed, and two runs with the same seed on CPU end with identical weights.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from encoders.backbones import SMALL_CNN_MEAN, SMALL_CNN_STD, EfficientNetLiteTrunk, SmallConvNet
from encoders.data import (
    Augment,
    AugmentConfig,
    ImageFolderClasses,
    PKBatchSampler,
    from_zip,
    merge_class_folders,
    to_tensor,
)
from encoders.losses import LABEL_LOSSES, make_loss
from encoders.models import EmbeddingNet
from encoders.whiten import whiten_head
from pipeline.progress import Progress

log = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("small-cnn", "efficientnet-lite0")
POOLINGS: tuple[str, ...] = ("avg", "gem")
AUGMENT_PRESETS: tuple[str, ...] = ("photo", "glyph")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# The EfficientNet-Lite0 trunk is cut after this stage by default, as the pipeline's built-in encoder is.
EFFICIENTNET_STAGE = 5
# Keys that may change between a run and its resumption: they decide how long or where it runs, not what it
# learns. Changing ``epochs`` stretches (or shortens) the cosine schedule from the current step on.
RESUMABLE_KEYS: frozenset[str] = frozenset({"epochs", "device", "amp", "num_threads", "progress_every_s"})
# Decoded, resized images are kept in memory when the whole data set fits in this many bytes.
IMAGE_CACHE_BYTES = 2 << 30
CHECKPOINT_FORMAT = 1

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
CONFIG = "train_config.json"
LOG_CSV = "log.csv"
LOG_JSONL = "log.jsonl"
LOG_FIELDS: tuple[str, ...] = ("epoch", "loss", "lr", "seconds", "images_per_s")


class TrainError(ValueError):
    """Training cannot start or go on: bad data, a run directory in the wrong state, a diverged loss.
    ``str()`` is a complete one-line message."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Invalid values raise ``ValueError`` naming what is allowed.

    Attributes:
        backbone: ``"small-cnn"`` (:class:`~encoders.backbones.SmallConvNet`, from scratch) or
            ``"efficientnet-lite0"`` (ImageNet-pretrained, cut after ``stage``).
        stage: the last EfficientNet-Lite0 stage kept (1-7); ignored by the small CNN.
        input_size: images are resized to ``input_size`` x ``input_size`` pixels.
        grayscale: read images as grey (the small CNN then has one input channel); else RGB.
        embedding_dim: D of the linear head; 0 = no head, the pooled backbone features.
        pooling: ``"avg"`` or ``"gem"``.
        loss: a name from :data:`encoders.losses.LABEL_LOSSES`.
        margin: triplet margin (``triplet_batch_hard``, ``triplet_semi_hard``).
        temperature: ``supcon`` temperature.
        lr: peak learning rate, reached after the warm-up, then cosine-annealed to 0 over the run.
        weight_decay: AdamW decoupled weight decay on weight matrices and kernels; 0 = plain Adam.
        warmup_fraction: share of all steps spent on a linear warm-up to ``lr``.
        epochs, batches_per_epoch: run length; a batch is ``p`` classes x ``k`` images. ``epochs`` = 0 (only with
            ``whiten``) trains nothing: the head is fitted in closed form on the pretrained features.
        augment: random affine, colour jitter and blur on every training image.
        augment_preset: ``"photo"`` (affine, colour, blur; reflected borders) or ``"glyph"`` (affine only, white
            outside: drawn characters).
        rotate_classes: each class also appears turned by 90, 180 and 270 degrees, as three new classes
            (four times the classes, as is usual for Omniglot).
        invert: the small CNN sees ``1 - x``: dark ink on white becomes bright strokes on a zero background.
        seed: seeds torch, numpy, Python's ``random`` and every sampler.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        amp: mixed precision (float16 autocast with loss scaling); used on CUDA only.
        num_threads: torch CPU threads; 0 = torch's default.
        depth: class folder depth below the data root (1: ``root/class/img``; 2: ``root/alphabet/char/img``).
        progress_every_s: seconds between progress log lines; 0 = only one line per epoch.
        whiten: after the last epoch, fold a within-class whitening of the head's output, fitted on every
            training image (and its mirror image with ``whiten_mirror``), into the head
            (:func:`encoders.whiten.whiten_head`).
        whiten_shrinkage: the whitening's shrinkage towards plain centring, in units of the mean within-class
            variance (>= 0; 0 whitens fully).
        whiten_mirror: mirrored training images are more samples of their class (for left-right symmetric
            subjects: faces, most objects; not characters).
    """

    backbone: str = "small-cnn"
    stage: int = EFFICIENTNET_STAGE
    input_size: int = 64
    grayscale: bool = True
    embedding_dim: int = 128
    pooling: str = "gem"
    loss: str = "triplet_batch_hard"
    margin: float = 0.2
    temperature: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    epochs: int = 20
    batches_per_epoch: int = 100
    p: int = 16
    k: int = 4
    augment: bool = True
    augment_preset: str = "photo"
    rotate_classes: bool = False
    invert: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_threads: int = 0
    depth: int = 1
    progress_every_s: float = 5.0
    whiten: bool = False
    whiten_shrinkage: float = 0.3
    whiten_mirror: bool = True

    def __post_init__(self) -> None:
        for name, choices in (("backbone", BACKBONES), ("pooling", POOLINGS), ("loss", LABEL_LOSSES),
                              ("device", DEVICES), ("augment_preset", AUGMENT_PRESETS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"TrainConfig.{name} must be one of {', '.join(map(repr, choices))}; "
                                 f"got {getattr(self, name)!r}")
        checks = [
            ("input_size", self.input_size >= 8, ">= 8"),
            ("embedding_dim", self.embedding_dim >= 0, ">= 0"),
            ("margin", self.margin >= 0, ">= 0"),
            ("temperature", self.temperature > 0, "> 0"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_fraction", 0 <= self.warmup_fraction < 1, "in [0, 1)"),
            ("stage", 1 <= self.stage <= 7, "in 1..7 (EfficientNet-Lite0 has 7 stages)"),
            ("epochs", self.epochs >= 1 or (self.epochs == 0 and self.whiten),
             ">= 1 (0 only with whiten = true: a head fitted in closed form on the pretrained features)"),
            ("embedding_dim", self.epochs >= 1 or self.embedding_dim == 0,
             "0 when epochs = 0 (an untrained head would be a random projection: the closed-form head whitens "
             "the pooled features themselves)"),
            ("batches_per_epoch", self.batches_per_epoch >= 1, ">= 1"),
            ("p", self.p >= 2, ">= 2 (negatives need a second class)"),
            ("k", self.k >= 2, ">= 2 (positives need a second image of the class)"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
            ("num_threads", self.num_threads >= 0, ">= 0"),
            ("depth", self.depth >= 1, ">= 1"),
            ("progress_every_s", self.progress_every_s >= 0, ">= 0"),
            ("whiten_shrinkage", self.whiten_shrinkage >= 0, ">= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`as_dict`; unknown keys raise ``ValueError`` naming the known ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known: {', '.join(sorted(names))}")
        return cls(**raw)


@dataclass(frozen=True)
class EpochRecord:
    """One row of ``log.csv`` / ``log.jsonl``. ``loss`` is the epoch's mean training loss, ``lr`` the learning
    rate of its last step, ``seconds`` its wall time."""

    epoch: int
    loss: float
    lr: float
    seconds: float
    images_per_s: float


@dataclass(frozen=True)
class TrainResult:
    """A finished (or stopped, see ``until_epoch``) run. ``train_seconds`` sums the wall time of every epoch
    of the run, across resumptions, and the fitting of a whitening head."""

    out_dir: Path
    epochs: int
    final_loss: float
    train_seconds: float
    history: tuple[EpochRecord, ...]
    model_path: Path | None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when ``torch.cuda.is_available()``, else CPU; ``"cuda"`` without CUDA is an error."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("[train] device = 'cuda' but torch sees no CUDA device (a CPU build of torch, or no "
                         "driver); use device = 'auto' or 'cpu'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_model(cfg: TrainConfig, pretrained: bool = True) -> EmbeddingNet:
    """The untrained embedding network for ``cfg``. ``pretrained=False`` skips loading the ImageNet weights of
    the EfficientNet trunk (for :func:`load_run`, which loads trained weights over it)."""
    if cfg.backbone == "small-cnn":
        net = SmallConvNet(in_channels=1 if cfg.grayscale else 3)
        # (x - 0.5) / -0.5 == ((1 - x) - 0.5) / 0.5: inversion costs nothing and lives in the exported graph.
        std = tuple(-v for v in SMALL_CNN_STD) if cfg.invert else SMALL_CNN_STD
        return _with_head(EmbeddingNet(net, net.out_channels, pooling=cfg.pooling,
                                       embedding_dim=cfg.embedding_dim or (net.out_channels if cfg.whiten else 0),
                                       mean=SMALL_CNN_MEAN, std=std), cfg)
    trunk = EfficientNetLiteTrunk("efficientnet-lite0", stage=cfg.stage, pretrained=pretrained)
    return _with_head(EmbeddingNet(trunk, trunk.out_channels, pooling=cfg.pooling,
                                   embedding_dim=cfg.embedding_dim or (trunk.out_channels if cfg.whiten else 0)),
                      cfg)


def _with_head(model: EmbeddingNet, cfg: TrainConfig) -> EmbeddingNet:
    """A whitened run keeps a linear head even at ``embedding_dim`` 0 (the whitening is folded into it). It
    starts as the identity; epochs, if any, train it along with the network (a square linear map, which the
    whitening then replaces by its own fit on the trained features)."""
    if cfg.whiten and cfg.embedding_dim == 0 and isinstance(model.head, nn.Linear):
        with torch.no_grad():
            model.head.weight.copy_(torch.eye(model.head.out_features, model.head.in_features))
            assert model.head.bias is not None
            model.head.bias.zero_()
    return model


def backbone_name(cfg: TrainConfig) -> str:
    suffix = ":trained" if cfg.epochs else ""
    suffix += ":whitened" if cfg.whiten else ""
    if cfg.backbone == "small-cnn":
        return f"small-cnn:{'grey' if cfg.grayscale else 'rgb'}{suffix}"
    return f"efficientnet-lite0:imagenet:stage{cfg.stage}{suffix}"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _epoch_seed(seed: int, epoch: int) -> int:
    """An independent 63-bit seed per (run seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = dict(states["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and a rename: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_torch_save(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, buf.getvalue())


def _write_logs(out_dir: Path, history: list[EpochRecord]) -> None:
    """Rewrite both logs from ``history`` (the checkpoint's copy), so they never hold epochs it does not."""
    rows = [dataclasses.asdict(r) for r in history]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(LOG_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_bytes(out_dir / LOG_CSV, text.getvalue().encode())
    _atomic_write_bytes(out_dir / LOG_JSONL, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _read_one(data: Path, extract_to: Path, cfg: TrainConfig) -> ImageFolderClasses:
    try:
        root = from_zip(data, extract_to) if data.is_file() and data.suffix.lower() == ".zip" else data
        if not root.is_dir():
            raise TrainError(f"{data}: not a folder or a .zip archive of class folders")
        return ImageFolderClasses(root, grayscale=cfg.grayscale, size=cfg.input_size, depth=cfg.depth)
    except (ValueError, OSError) as exc:
        if isinstance(exc, TrainError):
            raise
        hint = "" if cfg.depth == 1 else f" (classes are read {cfg.depth} folder levels below the root: [train] depth)"
        raise TrainError(f"{data}: {exc}{hint}") from None


def _prepare_data(data: Sequence[Path], out_dir: Path, cfg: TrainConfig) -> ImageFolderClasses:
    """One data set from one or more folders / zips; classes of the same name are merged (see
    :func:`~encoders.data.merge_class_folders`)."""
    parts = [_read_one(Path(d), out_dir / "data" / (f"{i}" if len(data) > 1 else ""), cfg)
             for i, d in enumerate(data)]
    dataset = parts[0] if len(parts) == 1 else merge_class_folders(parts)
    n_classes = len(dataset.classes) * _rotations(cfg)
    if cfg.p > n_classes:
        raise TrainError(f"{', '.join(map(str, data))}: [train] p = {cfg.p} classes per batch but the data has "
                         f"{n_classes} classes; allowed: p <= {n_classes}")
    return dataset


def _rotations(cfg: TrainConfig) -> int:
    return 4 if cfg.rotate_classes else 1


class _Images:
    """Decoded, resized images of a data set, kept in memory once read when they all fit in ``budget`` bytes."""

    def __init__(self, dataset: ImageFolderClasses, budget: int = IMAGE_CACHE_BYTES) -> None:
        self.dataset = dataset
        c = 1 if dataset.grayscale else 3
        shape = (len(dataset), dataset.size, dataset.size, c)
        self.cache: np.ndarray | None = None
        self.loaded = np.zeros(len(dataset), dtype=bool)
        if math.prod(shape) <= budget:
            self.cache = np.empty(shape, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.cache is None:
            return self.dataset.load(i)
        if not self.loaded[i]:
            self.cache[i] = self.dataset.load(i)
            self.loaded[i] = True
        return self.cache[i]


def _optimizer(model: EmbeddingNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.weight_decay == 0:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # Decay weight matrices and kernels only: not biases, norm scales or the GeM exponent.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    keep = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": keep, "weight_decay": 0.0}], lr=cfg.lr)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine annealing to 0; stepped per batch."""
    total = max(cfg.epochs * cfg.batches_per_epoch, 1)  # epochs = 0 (closed-form head only): never stepped
    warm = min(round(cfg.warmup_fraction * total), total - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warm)
    if warm == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warm + 1), total_iters=warm)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warm])


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    # Runs saved before a key existed: the key's default is what they ran with.
    defaults = TrainConfig().as_dict()
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    current = cfg.as_dict()
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_KEYS and saved.get(k, "<missing>") != current.get(k, "<missing>"))
    if changed:
        diff = "; ".join(f"{k}: {saved.get(k, '<missing>')!r} -> {current.get(k, '<missing>')!r}" for k in changed)
        raise TrainError(f"{path}: cannot resume, the config differs from the run's ({diff}); only "
                         f"{', '.join(sorted(RESUMABLE_KEYS))} may change; use the run's config or another --out")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise TrainError(f"{path}: not a readable checkpoint ({type(exc).__name__}); remove it to start over") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a siamstream training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def train(data_dir: Path | Sequence[Path], out_dir: Path, cfg: TrainConfig, resume: bool = False,
          until_epoch: int | None = None) -> TrainResult:
    """Train an embedding network on ``data_dir`` and write the run to ``out_dir``.

    Args:
        data_dir: a folder of class folders (``cfg.depth`` levels deep) or a ``.zip`` of one (extracted into
            ``out_dir/data``), or several of them (merged). Every class needs at least 2 images.
        out_dir: the run directory (created). Without ``resume`` it must not hold a run already.
        cfg: the run's configuration.
        resume: continue from ``out_dir/checkpoint.pt``. The saved config must equal ``cfg`` except for
            :data:`RESUMABLE_KEYS`.
        until_epoch: stop after this epoch (the checkpoint stays, to resume later); ``None`` = ``cfg.epochs``.
            ``model.pt`` is written only when the run reaches ``cfg.epochs``.

    Returns:
        the run's :class:`TrainResult`.

    Raises:
        TrainError: missing or unusable data, a run directory in the wrong state, a config that differs on
            resume, a loss that is not finite.
    """
    out_dir = Path(out_dir)
    sources = [Path(data_dir)] if isinstance(data_dir, (str, Path)) else [Path(d) for d in data_dir]
    if not sources:
        raise TrainError("no training data given; pass a folder of class folders or a .zip of one")
    for d in sources:
        if not d.exists():
            raise TrainError(f"{d}: training data not found; pass a folder of class folders or a .zip of one")
    ckpt_path = out_dir / CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise TrainError(f"{out_dir}: no {CHECKPOINT} to resume from; train without --resume first")
    if not resume and (ckpt_path.exists() or (out_dir / MODEL).exists()):
        raise TrainError(f"{out_dir}: already holds a training run; pass --resume to continue it or choose "
                         f"another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"{out_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    ckpt = _load_checkpoint(ckpt_path) if resume else None
    if ckpt is not None:
        _check_resumable(ckpt["config"], cfg, ckpt_path)

    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    use_amp = cfg.amp and device.type == "cuda"
    dataset = _prepare_data(sources, out_dir, cfg)
    images = _Images(dataset)

    _seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    optimizer = _optimizer(model, cfg)
    scheduler = _scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = make_loss(cfg.loss, cfg.margin, cfg.temperature)
    augment_cfg = AugmentConfig.glyph() if cfg.augment_preset == "glyph" else AugmentConfig()
    augment = Augment(augment_cfg) if cfg.augment else None
    history: list[EpochRecord] = []
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ckpt["config"]["epochs"] == cfg.epochs:
            scheduler.load_state_dict(ckpt["scheduler"])
        else:  # a longer or shorter run: the schedule over the new length, at the step reached
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": intended here
                for _ in range(int(ckpt["step"])):
                    scheduler.step()
        optimizer.load_state_dict(ckpt["optimizer"])
        # The optimizer's saved learning rate is the old schedule's; the scheduler's is the one to go on with.
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_states(ckpt["rng"])
        history = [EpochRecord(**row) for row in ckpt["history"]]
        start_epoch = int(ckpt["epoch"])
        log.info("resuming %s after epoch %d of %d", out_dir, start_epoch, cfg.epochs)
    last_epoch = cfg.epochs if until_epoch is None else min(until_epoch, cfg.epochs)
    _atomic_write_bytes(out_dir / CONFIG, (json.dumps(cfg.as_dict(), indent=2) + "\n").encode())
    log.info("training %s on %s: %d images of %d classes%s, %d px, %s, %s, device %s%s", cfg.backbone,
             ", ".join(map(str, sources)), len(dataset), len(dataset.classes),
             " (x4 by rotation)" if cfg.rotate_classes else "", cfg.input_size,
             "grey" if cfg.grayscale else "RGB",
             f"{cfg.loss} loss" + (" then a whitening head" if cfg.whiten else "") if cfg.epochs
             else "no epochs, a whitening head only", device, " (mixed precision)" if use_amp else "")

    step = start_epoch * cfg.batches_per_epoch
    for epoch in range(start_epoch + 1, last_epoch + 1):
        record = _train_epoch(epoch, cfg, dataset, images, augment, model, optimizer, scheduler, scaler, loss_fn,
                              device, use_amp)
        step += cfg.batches_per_epoch
        history.append(record)
        _atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "step": step,
            "config": cfg.as_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_states(),
            "history": [dataclasses.asdict(r) for r in history],
        }, ckpt_path)
        _write_logs(out_dir, history)
        log.info("epoch %d/%d: loss %.4f, lr %.2e, %.1f s, %.0f images/s", epoch, cfg.epochs, record.loss,
                 record.lr, record.seconds, record.images_per_s)

    done = history[-1].epoch if history else 0
    model_path = None
    whiten_seconds = 0.0
    if done >= cfg.epochs:
        if cfg.whiten:
            started = time.perf_counter()
            log.info("fitting the whitening head on %d training images of %d classes%s", len(dataset),
                     len(dataset.classes), " and their mirror images" if cfg.whiten_mirror else "")
            try:
                whiten_head(model, images, dataset.labels, cfg.whiten_shrinkage, mirror=cfg.whiten_mirror)
            except ValueError as exc:
                raise TrainError(f"cannot fit the whitening head on {len(dataset)} images of "
                                 f"{len(dataset.classes)} classes ({exc}); raise [train] whiten_shrinkage "
                                 f"(now {cfg.whiten_shrinkage:g}) or use more images per class") from None
            whiten_seconds = time.perf_counter() - started
            log.info("whitening head fitted in %.1f s", whiten_seconds)
        model_path = out_dir / MODEL
        _atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, model_path)
        log.info("run finished: %s", model_path)
    return TrainResult(out_dir=out_dir, epochs=done, final_loss=history[-1].loss if history else math.nan,
                       train_seconds=sum(r.seconds for r in history) + whiten_seconds, history=tuple(history),
                       model_path=model_path)


def _train_epoch(epoch: int, cfg: TrainConfig, dataset: ImageFolderClasses, images: _Images,
                 augment: Augment | None, model: EmbeddingNet, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                 loss_fn: Callable[[Tensor, Tensor], Tensor], device: torch.device, use_amp: bool) -> EpochRecord:
    """One epoch of ``cfg.batches_per_epoch`` P x K batches; the sampler and augmentation draw from
    generators seeded by ``(cfg.seed, epoch)``."""
    epoch_seed = _epoch_seed(cfg.seed, epoch)
    turns = _rotations(cfg)
    # Sample j is image j // turns turned by 90 degrees x (j % turns), of class label * turns + j % turns.
    labels_all = (dataset.labels[:, None] * turns + np.arange(turns)[None, :]).ravel()
    sampler = PKBatchSampler(labels_all, cfg.p, cfg.k, cfg.batches_per_epoch, seed=epoch_seed)
    rng = np.random.default_rng(epoch_seed + 1)
    model.train()
    started = last_report = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    lr = float("nan")
    bar = Progress(f"epoch {epoch}/{cfg.epochs}", cfg.batches_per_epoch, "batch", every_s=cfg.progress_every_s)
    for i, batch in enumerate(sampler, start=1):
        pixels = []
        for j in batch:
            img = images[j // turns]
            if j % turns:
                img = np.ascontiguousarray(np.rot90(img, j % turns))
            pixels.append(augment(img, rng) if augment is not None else img)
        x = to_tensor(np.stack(pixels))
        labels = torch.from_numpy(labels_all[batch])
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
            labels = labels.pin_memory().to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            emb = model(x)
        assert isinstance(emb, Tensor)  # build_model makes no patch output
        loss = loss_fn(emb.float(), labels)  # the loss maths in float32, also under autocast
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        loss_sum += loss.detach()  # no .item() per step: it would wait for the GPU every batch
        seen += len(batch)
        now = time.perf_counter()
        status = ""
        if cfg.progress_every_s and now - last_report >= min(cfg.progress_every_s, 1.0):
            last_report = now  # the loss is read (a GPU sync) at most once a second
            status = f"loss {loss_sum.item() / i:.4f}, lr {lr:.2e}, {seen / (now - started):.0f} images/s"
        bar.update(1, status)
    bar.close()
    seconds = time.perf_counter() - started
    mean_loss = loss_sum.item() / cfg.batches_per_epoch
    if not math.isfinite(mean_loss):
        amp_hint = " or set [train] amp = false" if use_amp else ""
        raise TrainError(f"mean loss of epoch {epoch} is {mean_loss}: training diverged; lower [train] lr "
                         f"(now {cfg.lr:g}){amp_hint}")
    return EpochRecord(epoch=epoch, loss=mean_loss, lr=float(lr), seconds=seconds,
                       images_per_s=seen / seconds if seconds > 0 else 0.0)


def load_run(run_dir: Path) -> tuple[EmbeddingNet, TrainConfig]:
    """The trained network (eval mode, CPU) and its config from a finished run directory."""
    run_dir = Path(run_dir)
    cfg_path, model_path = run_dir / CONFIG, run_dir / MODEL
    if not cfg_path.is_file():
        raise TrainError(f"{run_dir}: no {CONFIG}; not a training run directory (siamstream train --out DIR)")
    if not model_path.is_file():
        hint = "; resume it with siamstream train --resume" if (run_dir / CHECKPOINT).is_file() else ""
        raise TrainError(f"{run_dir}: no {MODEL}; the run has not finished{hint}")
    try:
        cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise TrainError(f"{cfg_path}: not a valid training config ({exc})") from None
    model = build_model(cfg, pretrained=False)
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # unreadable file or weights of another architecture
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainError(f"{model_path}: cannot load the trained weights ({first})") from None
    return model.eval(), cfg
