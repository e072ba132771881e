"""Train a person re-identification encoder: the twin network of the tracker, taught to tell people apart.

The recipe is the strong baseline of Luo et al. 2019 ("Bag of Tricks and a Strong Baseline for Deep Person
Re-identification") on a small ImageNet-pretrained trunk: person-shaped input (``height`` x ``width``), P x K batches
with positives from other cameras (:class:`~encoders.reid_data.CrossCameraPKSampler`), flip, padding-crop,
colour jitter and random erasing (:class:`~encoders.reid_data.ReidAugment`), a batch-hard triplet loss on the
pooled features and, with ``id_loss``, an identity classifier with label smoothing behind a batch-norm neck
(BNNeck); AdamW with a linear warm-up and cosine annealing. The twin encoder exported to ONNX is the shared trunk,
pooling and neck; the classifier is training-only.

Validation is by identity: ``val_identities`` identities of the first data set, seen by two or more cameras, are
held out (seeded) and never trained on; one image per (identity, camera) is a query, the rest the gallery, scored
by the Market-1501 protocol (:func:`encoders.evaluate.rank_gallery`) every ``val_every`` epochs. The split is also
written as ``RUN_DIR/validation/`` in the Market layout, so ``siamstream eval reid --data RUN_DIR/validation`` scores
the exported model on exactly these identities.

A run directory holds ``reid_config.json``, ``checkpoint.pt`` (after every epoch; ``resume`` continues it),
``log.jsonl`` (one row per epoch), ``validation/`` and, once finished, ``model.pt``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from encoders.backbones import EfficientNetLiteTrunk, SmallConvNet
from encoders.evaluate import rank_gallery
from encoders.losses import batch_hard_triplet_loss
from encoders.models import EmbeddingNet
from encoders.reid_data import (
    CrossCameraPKSampler,
    ReidAugment,
    ReidDataError,
    ReidSet,
    load_reid_image,
    merge_reid,
    read_reid_folder,
    split_by_identity,
    write_market_layout,
)
from encoders.train import TrainError, _atomic_torch_save, _atomic_write_bytes, _epoch_seed, resolve_device
from pipeline.config import ReidConfig
from pipeline.progress import Progress

log = logging.getLogger(__name__)

CONFIG = "reid_config.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
LOG_JSONL = "log.jsonl"
VALIDATION = "validation"
CHECKPOINT_FORMAT = 1
# Keys that may change on resume: how long and where a run goes, not what it learns.
RESUMABLE: frozenset[str] = frozenset({"epochs", "device", "num_threads", "progress_every_s", "val_every"})


@dataclass(frozen=True)
class ReidTrainConfig(ReidConfig):
    """Everything that decides a re-identification run: the ``[reid]`` section itself
    (:class:`pipeline.config.ReidConfig`: its keys, defaults and checks, made once), with what training reads from it.
    Invalid values raise :class:`~pipeline.config.ConfigError` (a ``ValueError``).

    Attributes:
        backbone: ``"efficientnet-lite0"`` (ImageNet-pretrained, cut after ``stage``) or ``"small-cnn"`` (from
            scratch, for comparison).
        stage: the last EfficientNet-Lite0 stage kept (1-7).
        freeze_stages: EfficientNet-Lite0's stem and stages 1..n stay as ImageNet left them (0: all trained).
        height, width: the input shape (people: about 2 to 1).
        pooling: ``"avg"`` or ``"gem"``.
        id_loss: add the identity classifier (cross-entropy with ``label_smoothing``) behind a BNNeck; without
            it, the triplet loss alone on the L2-normalised embedding.
        margin: the batch-hard triplet margin.
        lr, weight_decay, warmup_fraction: AdamW, linear warm-up, then cosine annealing to 0 over the run.
        epochs: passes over the training images (``len / (p * k)`` batches each).
        p, k: identities per batch and images per identity.
        pad, jitter, erase_p: :class:`~encoders.reid_data.ReidAugment`.
        val_identities: identities of the first data set held out for validation (0: none).
        val_every: validate after every this many epochs (and after the last).
    """

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReidEpoch:
    """One row of ``log.jsonl``; ``rank1`` and ``mAP`` are ``None`` on epochs without validation."""

    epoch: int
    loss: float
    triplet: float
    id_loss: float
    lr: float
    seconds: float
    images_per_s: float
    rank1: float | None = None
    mAP: float | None = None


@dataclass(frozen=True)
class ReidTrainResult:
    out_dir: Path
    epochs: int
    train_seconds: float
    history: tuple[ReidEpoch, ...]
    model_path: Path | None
    train_images: int
    train_identities: int
    validation_identities: int

    @property
    def last_validation(self) -> ReidEpoch | None:
        return next((r for r in reversed(self.history) if r.rank1 is not None), None)


def build_reid_model(cfg: ReidTrainConfig, pretrained: bool = True) -> EmbeddingNet:
    """The twin encoder (trunk, pooling, BNNeck or identity head), untrained."""
    neck = "bn" if cfg.id_loss else "linear"
    if cfg.backbone == "small-cnn":
        net = SmallConvNet(in_channels=3)
        return EmbeddingNet(net, net.out_channels, pooling=cfg.pooling, neck=neck, mean=(0.5,) * 3, std=(0.5,) * 3)
    trunk = EfficientNetLiteTrunk("efficientnet-lite0", stage=cfg.stage, pretrained=pretrained)
    trunk.freeze(cfg.freeze_stages)
    return EmbeddingNet(trunk, trunk.out_channels, pooling=cfg.pooling, neck=neck)


def backbone_label(cfg: ReidTrainConfig) -> str:
    if cfg.backbone == "small-cnn":
        return "small-cnn:rgb:reid"
    return f"efficientnet-lite0:imagenet:stage{cfg.stage}:reid"


def read_reid_data(data: Sequence[Path]) -> ReidSet:
    """Several ``--data`` folders, merged with their folder names as identity prefixes."""
    if not data:
        raise TrainError("no training data given; pass --data with a Market-1501, CUHK03 or identity-folder folder")
    names = [Path(d).name if Path(d).name != "bounding_box_train" else Path(d).parent.name for d in data]
    if len(set(names)) != len(names):
        names = [f"{n}{i}" for i, n in enumerate(names)]
    try:
        return merge_reid([read_reid_folder(Path(d), source=n) for d, n in zip(data, names, strict=True)])
    except ReidDataError as exc:
        raise TrainError(str(exc)) from None


def _load_images(data: ReidSet, size: tuple[int, int], progress: Callable[[str], None]) -> np.ndarray:
    out = np.empty((len(data), size[0], size[1], 3), np.uint8)
    with Progress("reading images", len(data), "image", every_s=10.0) as bar:
        for i, path in enumerate(data.paths):
            try:
                out[i] = load_reid_image(path, size)
            except ReidDataError as exc:
                raise TrainError(str(exc)) from None
            bar.update()
    return out


def _to_input(batch: np.ndarray, device: torch.device) -> Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1], channels-last (faster convolutions on CPU)."""
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def embed_images(model: EmbeddingNet, images: np.ndarray, device: torch.device, batch: int = 128) -> np.ndarray:
    """``(N, D)`` L2-normalised embeddings of uint8 images, in eval mode (restores the model's mode)."""
    was = model.training
    model.eval()
    out = [model(_to_input(images[i:i + batch], device)) for i in range(0, len(images), batch)]
    model.train(was)
    return torch.cat([o if isinstance(o, Tensor) else o[0] for o in out]).float().cpu().numpy()


def validate(model: EmbeddingNet, query: np.ndarray, gallery: np.ndarray, q_ids: np.ndarray, q_cams: np.ndarray,
             g_ids: np.ndarray, g_cams: np.ndarray, device: torch.device) -> tuple[float, float]:
    """Rank-1 and mAP of ``model`` on a held-out query / gallery split (cosine distance, Market protocol)."""
    q = embed_images(model, query, device)
    g = embed_images(model, gallery, device)
    result = rank_gallery(1.0 - q @ g.T, q_ids, q_cams, g_ids, g_cams)
    return result.rank(1), result.mAP


def _schedule(step: int, total: int, warm: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))


def _check_resume(saved: dict[str, Any], cfg: ReidTrainConfig, path: Path) -> None:
    defaults = ReidTrainConfig().as_dict()  # keys a run saved before they existed had their default then
    changed = sorted(k for k, v in cfg.as_dict().items() if k not in RESUMABLE and saved.get(k, defaults[k]) != v)
    if changed:
        raise TrainError(f"{path}: cannot resume, the config differs from the run's ({', '.join(changed)}); only "
                         f"{', '.join(sorted(RESUMABLE))} may change; use the run's config or another --out")


def train_reid(data: Sequence[Path], out_dir: Path, cfg: ReidTrainConfig, resume: bool = False,
               progress: Callable[[str], None] = log.info) -> ReidTrainResult:
    """Train a re-identification encoder on ``data`` (merged) into ``out_dir``; see the module docstring.

    Raises:
        TrainError: unusable data, a run directory in the wrong state, a config that differs on resume, a loss
            that is not finite.
    """
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise TrainError(f"{out_dir}: no {CHECKPOINT} to resume from; train without --resume first")
    if not resume and (ckpt_path.exists() or (out_dir / MODEL).exists()):
        raise TrainError(f"{out_dir}: already holds a training run; pass --resume to continue it or choose another "
                         f"--out")
    for d in data:
        if not Path(d).exists():
            raise TrainError(f"{d}: training data not found")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"{out_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    ckpt: dict[str, Any] | None = None
    if resume:
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise TrainError(f"{ckpt_path}: not a readable checkpoint ({type(exc).__name__}); remove it to start "
                             f"over") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("task") != "reid":
            raise TrainError(f"{ckpt_path}: not a siamstream re-identification checkpoint")
        _check_resume(ckpt["config"], cfg, ckpt_path)

    everything = read_reid_data([Path(d) for d in data])
    try:
        split = split_by_identity(everything, cfg.val_identities, seed=cfg.seed)
    except ReidDataError as exc:
        raise TrainError(str(exc)) from None
    train_set = split.train
    labels, identities = train_set.labels()
    if len(identities) < cfg.p:
        raise TrainError(f"{len(identities)} training identities but [reid] p = {cfg.p} per batch; lower p")
    if cfg.val_identities:
        write_market_layout(split, out_dir / VALIDATION)
    _atomic_write_bytes(out_dir / CONFIG, (json.dumps({"task": "reid", **cfg.as_dict()}, indent=2) + "\n").encode())

    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    progress(f"re-id training: {len(train_set)} images of {len(identities)} identities "
             f"({len(set(train_set.cameras.tolist()))} cameras) from {', '.join(map(str, data))}; "
             f"{len(split.validation_identities)} identities held out ({len(split.query)} queries, "
             f"{len(split.gallery)} gallery); {cfg.height}x{cfg.width}, {cfg.backbone}, device {device}")
    images = _load_images(train_set, cfg.size, progress)
    val = None
    if cfg.val_identities:
        q_img = _load_images(split.query, cfg.size, progress)
        g_img = _load_images(split.gallery, cfg.size, progress)
        names = {n: i for i, n in enumerate(split.validation_identities)}
        val = (q_img, g_img, np.array([names[i] for i in split.query.identities]), split.query.cameras,
               np.array([names[i] for i in split.gallery.identities]), split.gallery.cameras)

    model = build_reid_model(cfg).to(device)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    classifier = nn.Linear(model.embedding_dim, len(identities), bias=False).to(device)
    nn.init.normal_(classifier.weight, std=0.001)
    params = [p for p in (*model.parameters(), *classifier.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)
    batches = max(1, len(train_set) // (cfg.p * cfg.k))
    total = cfg.epochs * batches
    warm = min(int(cfg.warmup_fraction * total), total - 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total, warm))
    history: list[ReidEpoch] = []
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        classifier.load_state_dict(ckpt["classifier"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"])
        history = [ReidEpoch(**row) for row in ckpt["history"]]
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended when resuming
            warnings.simplefilter("ignore")
            for _ in range(start_epoch * batches):  # the (possibly longer) run's schedule, at the step reached
                scheduler.step()
        progress(f"resuming {out_dir} after epoch {start_epoch} of {cfg.epochs}")
    augment = ReidAugment(cfg.pad, cfg.jitter, cfg.erase_p)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        seed = _epoch_seed(cfg.seed, epoch)
        sampler = CrossCameraPKSampler(labels, train_set.cameras, cfg.p, cfg.k, batches, seed=seed)
        rng = np.random.default_rng(seed + 1)
        model.train()
        started = time.perf_counter()
        sums = np.zeros(3)
        lr = cfg.lr
        bar = Progress(f"epoch {epoch}/{cfg.epochs}", batches, "batch", every_s=cfg.progress_every_s)
        for i, batch in enumerate(sampler, start=1):
            x = _to_input(augment(images[batch], rng), device)
            y = torch.from_numpy(labels[batch]).to(device)
            pooled = model.pooled(x)
            if cfg.id_loss:
                triplet = batch_hard_triplet_loss(pooled, y, cfg.margin)
                ident = F.cross_entropy(classifier(model.head(pooled)), y, label_smoothing=cfg.label_smoothing)
            else:
                triplet = batch_hard_triplet_loss(F.normalize(model.head(pooled), dim=1), y, cfg.margin)
                ident = torch.zeros((), device=device)
            loss = triplet + ident
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            sums += (float(loss.detach()), float(triplet.detach()), float(ident.detach()))
            bar.update(1, f"loss {sums[0] / i:.3f}")
        bar.close()
        seconds = time.perf_counter() - started
        mean = sums / batches
        if not math.isfinite(mean[0]):
            raise TrainError(f"mean loss of epoch {epoch} is {mean[0]}: training diverged; lower [reid] lr "
                             f"(now {cfg.lr:g})")
        rank1 = m_ap = None
        if val is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            rank1, m_ap = validate(model, *val, device=device)
        record = ReidEpoch(epoch, float(mean[0]), float(mean[1]), float(mean[2]), float(lr), seconds,
                           batches * cfg.p * cfg.k / seconds, rank1, m_ap)
        history.append(record)
        _atomic_torch_save({"format": CHECKPOINT_FORMAT, "task": "reid", "epoch": epoch, "config": cfg.as_dict(),
                            "model": model.state_dict(), "classifier": classifier.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "history": [dataclasses.asdict(r) for r in history]}, ckpt_path)
        _atomic_write_bytes(out_dir / LOG_JSONL,
                            "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in history).encode())
        progress(f"epoch {epoch}/{cfg.epochs}: loss {mean[0]:.3f} (triplet {mean[1]:.3f}, id {mean[2]:.3f}), "
                 f"{seconds:.0f} s, {record.images_per_s:.0f} images/s"
                 + (f"; validation rank-1 {rank1:.3f}, mAP {m_ap:.3f}" if rank1 is not None else ""))
    model_path = out_dir / MODEL
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    _atomic_write_bytes(model_path, buf.getvalue())
    return ReidTrainResult(out_dir, history[-1].epoch if history else 0, sum(r.seconds for r in history),
                           tuple(history), model_path, len(train_set), len(identities),
                           len(split.validation_identities))


def is_reid_run(run_dir: Path) -> bool:
    return (Path(run_dir) / CONFIG).is_file()


def load_reid_run(run_dir: Path) -> tuple[EmbeddingNet, ReidTrainConfig]:
    """The trained twin encoder (eval mode, CPU) and its config from a finished run."""
    run_dir = Path(run_dir)
    cfg_path, model_path = run_dir / CONFIG, run_dir / MODEL
    if not model_path.is_file():
        hint = "; resume it with siamstream train --recipe reid --resume" if (run_dir / CHECKPOINT).is_file() else ""
        raise TrainError(f"{run_dir}: no {MODEL}; the run has not finished{hint}")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        raw.pop("task", None)
        cfg = ReidTrainConfig(**raw)
    except (ValueError, TypeError) as exc:
        raise TrainError(f"{cfg_path}: not a valid re-identification config ({exc})") from None
    model = build_reid_model(cfg, pretrained=False)
    try:
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    except Exception as exc:  # unreadable file or weights of another architecture
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainError(f"{model_path}: cannot load the trained weights ({first})") from None
    return model.eval(), cfg
