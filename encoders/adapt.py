"""Adapting the pretrained patch trunk to one line's good parts: no defect image needed.

Patch-level anomaly scoring compares a part's local features with those of known-good parts, and ImageNet
features were not made for a tire's tread or a phone's casing. :func:`adapt_patch_trunk` fine-tunes the trunk's
blocks (the stem and every BatchNorm's statistics stay frozen) on random crops of the good images only, with the
terms of :func:`encoders.losses.patch_adaptation_terms`:

- invariance: a photometrically jittered copy of a crop (brightness, contrast, colour, blur) keeps its features:
  lighting drift is not a defect;
- separation: patches under a small synthetic defect painted on the crop (cut-paste, scratch, stain) move at least
  a margin away from the clean crop's features at the same place: the twin network learns what a local change
  looks like;
- locality: patches the defect does not touch keep their features, so the response stays on the defect (without
  it the anomaly maps spread around defects and localisation suffers);
- anchor: clean features stay near the pretrained ones, so the bank's geometry is bent, not rebuilt.

The margin is twice the mean distance the pretrained trunk puts between a painted patch and its clean self; the
other terms are measured in units of the pretrained trunk's invariance distance. ``hole`` defects are left out of
the default kinds: a synthetic hole is then a kind the adaptation never saw, and ``siamstream bench anomaly``
reports how well it is found. Adam at a constant learning rate for a fixed number of steps. On CPU a run is
repeatable from its seed; CUDA kernels (cuDNN convolution gradients, the upsampling's backward pass) are not
deterministic, so a GPU run gives a slightly different model each time. The device used is recorded in the model.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from encoders.data import DEFECT_KINDS, Augment, AugmentConfig, small_defect
from encoders.losses import patch_adaptation_terms
from encoders.models import EmbeddingNet, pretrained_lite0
from pipeline.progress import Progress

log = logging.getLogger(__name__)

# Photometric jitter of the invariance term: what changes between good parts on a line without being a defect.
JITTER = AugmentConfig(rotation_deg=0.0, scale=(1.0, 1.0), translate=0.0, shear_deg=0.0, brightness=0.15,
                       contrast=0.15, saturation=0.1, hue=0.01, blur_p=0.3, blur_sigma=(0.1, 1.0))
MIN_CROP = 32
# Batches the pretrained trunk's units are measured on, at most (until a batch's worth of painted cells is seen).
PROBE_BATCHES = 20


class AdaptError(ValueError):
    """The good images or the settings cannot drive an adaptation; the message says what to change."""


@dataclass(frozen=True)
class AdaptConfig:
    steps: int = 800  # Adam steps (about 300 s on 2 CPU cores with the defaults at 560x420)
    lr: float = 1e-4
    batch: int = 12  # good crops per step (each also jittered and painted: 3x this many through the trunk)
    crop: int = 128  # crop side in pixels (at most the images' shorter side)
    window_fraction: float = 0.4  # a defect is painted inside a window of this share of the crop's sides
    kinds: tuple[str, ...] = ("cutpaste", "scratch", "stain")
    margin_factor: float = 2.0  # separation margin, in multiples of the pretrained trunk's painted-patch distance
    w_invariance: float = 0.1
    w_separation: float = 1.0
    w_locality: float = 0.02
    w_anchor: float = 1.0
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when torch sees it), "cpu" or "cuda"
    progress_every_s: float = 5.0  # seconds between progress lines when stderr is not a terminal

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.progress_every_s < 0:
            raise AdaptError(f"steps and batch must be >= 1 and progress_every_s >= 0; got {self.steps}, "
                             f"{self.batch}, {self.progress_every_s}")
        if self.lr <= 0 or self.margin_factor <= 0:
            raise AdaptError(f"lr and margin_factor must be > 0; got {self.lr}, {self.margin_factor}")
        if self.crop < MIN_CROP:
            raise AdaptError(f"crop must be >= {MIN_CROP} px; got {self.crop}")
        if not 0 < self.window_fraction <= 1:
            raise AdaptError(f"window_fraction must be in (0, 1]; got {self.window_fraction}")
        if not self.kinds or any(k not in DEFECT_KINDS for k in self.kinds):
            raise AdaptError(f"kinds must be a non-empty subset of {DEFECT_KINDS}; got {self.kinds}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise AdaptError(f"device must be 'auto', 'cpu' or 'cuda'; got {self.device!r}")
        weights = (self.w_invariance, self.w_separation, self.w_locality, self.w_anchor)
        if min(weights) < 0 or self.w_separation == 0:
            raise AdaptError(f"loss weights must be >= 0 and w_separation > 0; got {weights}")


@dataclass(frozen=True)
class AdaptResult:
    steps: int
    seconds: float
    images: int
    margin: float  # relative squared distance the separation term asks for
    device: str  # where it ran: "cpu" or "cuda"
    pretrained: dict[str, float]  # invariance and locality distances of the pretrained trunk (probe batches)
    final: dict[str, float]  # the terms averaged over the last tenth of the steps


class _Crops:
    """Batches of (clean, jittered, defective, defect mask) crops of the good images, from one seeded generator."""

    def __init__(self, images: Sequence[np.ndarray], cfg: AdaptConfig) -> None:
        if not images:
            raise AdaptError("no good images to adapt on; pass a folder of good parts' images")
        shape = images[0].shape
        for i, img in enumerate(images):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.shape != shape:
                raise AdaptError(f"good image {i}: expected uint8 (H, W, 3) RGB of one shape {shape}; got "
                                 f"{img.dtype} {img.shape} (resize every image to the encoder's input size)")
        self.side = min(cfg.crop, shape[0], shape[1])
        if self.side < MIN_CROP:
            raise AdaptError(f"good images of {shape[0]}x{shape[1]} px are too small to adapt on; they need at least "
                             f"{MIN_CROP} px on each side")
        self.images = images
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.jitter = Augment(JITTER)

    def next(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cfg, rng, side = self.cfg, self.rng, self.side
        clean, jittered, defective, masks = [], [], [], []
        for _ in range(cfg.batch):
            img = self.images[int(rng.integers(len(self.images)))]
            y, x = int(rng.integers(0, img.shape[0] - side + 1)), int(rng.integers(0, img.shape[1] - side + 1))
            crop = np.ascontiguousarray(img[y:y + side, x:x + side])
            bad, mask = small_defect(crop, rng, cfg.kinds[int(rng.integers(len(cfg.kinds)))], cfg.window_fraction)
            clean.append(crop)
            jittered.append(self.jitter(crop, rng))
            defective.append(bad)
            masks.append(mask)

        def tensor(batch: list[np.ndarray]) -> Tensor:
            return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0

        return tensor(clean), tensor(jittered), tensor(defective), torch.from_numpy(np.stack(masks)).float()[:, None]


def _frozen_bn_train_mode(model: EmbeddingNet) -> None:
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _patches(model: EmbeddingNet, x: Tensor) -> Tensor:
    out = model(x)
    if not isinstance(out, tuple):
        raise AdaptError("the model has no patch output; build it with a patch_stage")
    return out[1]


def adapt_patch_trunk(model: EmbeddingNet, images: Sequence[np.ndarray], cfg: AdaptConfig | None = None,
                      progress: Callable[[str], None] | None = None) -> AdaptResult:
    """Fine-tune ``model``'s trunk blocks in place on crops of ``images`` (good parts only, uint8 RGB ``(H, W, 3)``
    of one size: the size the model will see). Returns what the run measured. The model ends on the CPU in eval
    mode with its parameters' ``requires_grad`` as they were, also when the run fails."""
    cfg = cfg or AdaptConfig()
    if not getattr(model, "patch_stage", 0):
        raise AdaptError("the encoder has no patch stage to adapt; set [encoder] patch_stage (e.g. 4)")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise AdaptError("device = 'cuda' but torch sees no CUDA device (a CPU build of torch, or no driver); use "
                         "device 'auto' or 'cpu'")
    crops = _Crops(images, cfg)
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    flags = [p.requires_grad for p in model.parameters()]
    try:
        return _adapt(model, crops, cfg, device, progress)
    finally:
        model.eval().cpu()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _adapt(model: EmbeddingNet, crops: _Crops, cfg: AdaptConfig, device: torch.device,
           progress: Callable[[str], None] | None) -> AdaptResult:
    torch.manual_seed(cfg.seed)
    model.to(device)
    anchor_model = copy.deepcopy(model).eval()
    for p in (*model.parameters(), *anchor_model.parameters()):
        p.requires_grad_(False)
    blocks = model.backbone.blocks
    if not isinstance(blocks, torch.nn.Module):
        raise AdaptError(f"{type(model.backbone).__name__} has no 'blocks' to adapt; use the EfficientNet-Lite0 trunk")
    trainable = list(blocks.parameters())
    for p in trainable:
        p.requires_grad_(True)

    # Units from the pretrained trunk: the squared feature norm, its invariance distance and how far it moves a
    # painted patch (on batches until some patch lies inside a defect).
    painted: list[Tensor] = []
    probes: list[dict[str, Tensor]] = []
    scale = 0.0
    with torch.no_grad():
        for _ in range(PROBE_BATCHES):
            clean, jittered, defective, mask = (t.to(device) for t in crops.next())
            ref = _patches(anchor_model, clean)
            scale = scale or float(ref.pow(2).sum(1).mean())
            moved = _patches(anchor_model, defective)
            probes.append(patch_adaptation_terms(ref, _patches(anchor_model, jittered), moved, ref, mask, scale,
                                                 margin=1.0))
            inside = torch.nn.functional.adaptive_avg_pool2d(mask, (int(ref.shape[2]), int(ref.shape[3]))) > 0.25
            painted.append(((moved - ref).pow(2).sum(1) / scale)[inside[:, 0]])
            if sum(p.numel() for p in painted) >= cfg.batch:
                break
    unit = float(np.mean([float(p["invariance"]) for p in probes]))
    if torch.cat(painted).numel() == 0:
        raise AdaptError(f"in {len(probes)} batches no feature cell lay inside a painted defect; use larger crops "
                         f"(crop, now {cfg.crop}) or a larger window_fraction (now {cfg.window_fraction})")
    if unit <= 0:
        raise AdaptError("the photometric jitter left every feature unchanged (blank images?); adapt on real images "
                         "of good parts")
    pretrained = {k: float(np.mean([float(p[k]) for p in probes])) for k in ("invariance", "locality")}
    margin = cfg.margin_factor * float(torch.cat(painted).mean())

    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    _frozen_bn_train_mode(model)
    tail = max(1, cfg.steps // 10)
    sums: dict[str, float] = {}
    started = time.perf_counter()
    bar = Progress("adapt", cfg.steps, "step", every_s=cfg.progress_every_s)
    for step in range(1, cfg.steps + 1):
        clean, jittered, defective, mask = (t.to(device) for t in crops.next())
        with torch.no_grad():
            ref = _patches(anchor_model, clean)
        feats = _patches(model, torch.cat([clean, jittered, defective]))
        fc, fj, fd = feats.chunk(3)
        terms = patch_adaptation_terms(fc, fj, fd, ref, mask, scale, margin)
        loss = (cfg.w_invariance * terms["invariance"] / unit + cfg.w_separation * terms["separation"]
                + cfg.w_locality * terms["locality"] / unit + cfg.w_anchor * terms["anchor"] / unit)
        if not torch.isfinite(loss):
            raise AdaptError(f"the adaptation loss is not finite at step {step}; lower lr (now {cfg.lr:g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen = {k: float(v.detach()) for k, v in (*terms.items(), ("loss", loss))}
        if step > cfg.steps - tail:
            for k, v in seen.items():
                sums[k] = sums.get(k, 0.0) + v
        bar.update(1, f"loss {seen['loss']:.3f} (separation {seen['separation']:.3f})")
    bar.close()
    final = {k: v / tail for k, v in sums.items()}
    if progress is not None:
        progress(f"adapt: {cfg.steps} steps in {time.perf_counter() - started:.0f} s, loss {final['loss']:.3f} "
                 f"(separation {final['separation']:.3f}) over the last {tail} steps")
    return AdaptResult(steps=cfg.steps, seconds=time.perf_counter() - started, images=len(crops.images),
                       margin=margin, device=device.type, pretrained=pretrained, final=final)


def adapt_to_onnx(images: Sequence[np.ndarray], out: str | Path, *, stage: int, pooling: str, patch_stage: int,
                  patch_detail_stage: int = 0, cfg: AdaptConfig | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[Path, AdaptResult]:
    """The pretrained EfficientNet-Lite0 cut at ``stage``, adapted to ``images`` (good parts at the model's input
    size ``(H, W)``) and exported to ``out`` with the parity check. The model's metadata records the adaptation."""
    from encoders.export import export_onnx

    cfg = cfg or AdaptConfig()
    if not images:
        raise AdaptError("no good images to adapt on; pass a folder of good parts' images")
    if not 0 < patch_stage <= stage:
        raise AdaptError(f"adaptation needs a patch stage in 1..{stage} (the encoder's stage); got {patch_stage}")
    model = pretrained_lite0(stage=stage, pooling=pooling, patch_stage=patch_stage,
                             patch_detail_stage=patch_detail_stage)
    result = adapt_patch_trunk(model, images, cfg, progress)
    size = (int(images[0].shape[0]), int(images[0].shape[1]))
    record = {"config": {**asdict(cfg), "kinds": list(cfg.kinds)}, "images": result.images, "device": result.device,
              "seconds": round(result.seconds, 1), "final": {k: round(v, 5) for k, v in result.final.items()
                                                            if math.isfinite(v)}}
    report = export_onnx(model, out, size, backbone=f"efficientnet-lite0:imagenet+good-only-adapted:stage{stage}",
                         extra_metadata={"siamstream.stage": str(stage),
                                         "siamstream.adaptation": json.dumps(record, sort_keys=True)})
    return report.path, result
