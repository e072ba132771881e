"""The twin (Siamese) encoder: one backbone applied to both inputs, plus an embedding head."""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.nn import functional as F

from encoders.backbones import LITE_MEAN, LITE_STD, EfficientNetLiteTrunk, make_pooling


class EmbeddingNet(nn.Module):
    """Image -> L2-normalised embedding (and, optionally, local patch features).

    Input ``(N, 3, H, W)`` float32 RGB in [0, 1] (the ONNX contract: callers scale uint8 by 1/255);
    the backbone's own normalisation is part of the graph. Output ``(N, D)`` float32, unit L2 norm.
    ``embedding_dim=0`` keeps the pooled backbone features (D = backbone channels).
    With ``patch_stage`` > 0 (EfficientNet trunks only) a second output ``(N, C, h, w)`` holds that stage's
    features averaged over each 3x3 neighbourhood (PatchCore's local aggregation): one descriptor per patch
    for patch-level anomaly scoring. With ``patch_detail_stage`` (an earlier stage, finer grid) the two stages
    are concatenated on the finer grid, the deeper one upsampled bilinearly (PatchCore's layer2 + layer3):
    small defects show in the fine features, their context in the deep ones.
    ``neck = "bn"`` replaces the linear head by a batch-norm neck (BNNeck, Luo et al. 2019, "Bag of Tricks and a
    Strong Baseline for Deep Person Re-identification"): the triplet loss sees the pooled features
    (:meth:`pooled`), an identity classifier and the exported embedding see them after the batch norm.
    """

    def __init__(self, backbone: nn.Module, out_channels: int, pooling: str = "gem", embedding_dim: int = 0,
                 mean: tuple[float, ...] = LITE_MEAN, std: tuple[float, ...] = LITE_STD,
                 patch_stage: int = 0, patch_detail_stage: int = 0, neck: str = "linear") -> None:
        super().__init__()
        if neck not in ("linear", "bn"):
            raise ValueError(f"neck must be 'linear' or 'bn', got {neck!r}")
        if patch_stage and not isinstance(backbone, EfficientNetLiteTrunk):
            raise ValueError("patch_stage needs an EfficientNetLiteTrunk backbone")
        if patch_detail_stage and not 0 < patch_detail_stage < patch_stage:
            raise ValueError(f"patch_detail_stage ({patch_detail_stage}) must come before patch_stage ({patch_stage})")
        self.patch_stage = patch_stage
        self.patch_detail_stage = patch_detail_stage
        self.backbone = backbone
        self.pool = make_pooling(pooling)
        self.pooling = pooling
        self.head: nn.Module = nn.Identity() if embedding_dim == 0 else nn.Linear(out_channels, embedding_dim)
        self.embedding_dim = out_channels if embedding_dim == 0 else embedding_dim
        self.neck = neck
        if neck == "bn":
            if embedding_dim not in (0, out_channels):
                raise ValueError(f"a batch-norm neck keeps the backbone's {out_channels} channels; embedding_dim must "
                                 f"be 0, got {embedding_dim}")
            bn = nn.BatchNorm1d(out_channels)
            bn.bias.requires_grad_(False)  # no shift: the features stay centred for the cosine distance
            self.head = bn
            self.embedding_dim = out_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.norm_mean = mean
        self.norm_std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = (x - self.get_buffer("mean")) / self.get_buffer("std")
        if isinstance(self.backbone, EfficientNetLiteTrunk) and self.patch_stage:
            stages = (self.patch_detail_stage, self.patch_stage) if self.patch_detail_stage else (self.patch_stage,)
            feats, taps = self.backbone.forward_stages(x, stages)
        else:
            feats, taps = self.backbone(x), {}
        z = F.normalize(self.head(self.pool(feats)), p=2.0, dim=1, eps=1e-12)
        if not self.patch_stage:
            return z
        local = F.avg_pool2d(taps[self.patch_stage], kernel_size=3, stride=1, padding=1, count_include_pad=False)
        if not self.patch_detail_stage:
            return z, local
        detail = F.avg_pool2d(taps[self.patch_detail_stage], kernel_size=3, stride=1, padding=1,
                              count_include_pad=False)
        up = F.interpolate(local, size=(int(detail.shape[2]), int(detail.shape[3])), mode="bilinear",
                           align_corners=False)
        return z, torch.cat([detail, up], dim=1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled backbone features before the head: ``(N, 3, H, W)`` -> ``(N, C)`` (what a triplet loss
        sees under a batch-norm neck)."""
        x = (x - self.get_buffer("mean")) / self.get_buffer("std")
        return self.pool(self.backbone(x))

    def unnormalised(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding before its L2 normalisation (the head's output): ``(N, 3, H, W)`` -> ``(N, D)``.
        For fitting a new head in closed form (:func:`encoders.whiten.whiten_head`)."""
        x = (x - self.get_buffer("mean")) / self.get_buffer("std")
        return self.head(self.pool(self.backbone(x)))


class FlipAveraged(nn.Module):
    """An embedding network whose embedding of an image is the L2-normalised sum of its embeddings of the image and
    of its mirror image (left-right), both in one batch: test-time flip augmentation, as person re-identification
    evaluations commonly use, carried inside the exported graph so that every consumer gets the same vectors.
    Global embeddings only (``patch_stage`` 0). Its state dict is the wrapped network's under ``net.``, so its
    weights hash differs from the plain network's: banks and galleries never mix the two models' vectors."""

    def __init__(self, net: EmbeddingNet) -> None:
        super().__init__()
        if net.patch_stage:
            raise ValueError("FlipAveraged is for global embeddings: the network has patch outputs")
        self.net = net
        self.norm_mean, self.norm_std = net.norm_mean, net.norm_std
        self.embedding_dim, self.pooling = net.embedding_dim, net.pooling
        self.patch_stage = self.patch_detail_stage = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        z = self.net(torch.cat([x, torch.flip(x, dims=[3])], dim=0))
        assert isinstance(z, torch.Tensor)  # no patch output (checked when built)
        return F.normalize(z[:n] + z[n:], p=2.0, dim=1, eps=1e-12)


class SiameseNet(nn.Module):
    """Twin network with shared weights: ``forward_once`` is the single encoder used for both inputs."""

    def __init__(self, encoder: EmbeddingNet) -> None:
        super().__init__()
        self.encoder = encoder

    def forward_once(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_once(a), self.forward_once(b)


def pretrained_lite0(stage: int = 5, pooling: str = "gem", embedding_dim: int = 0,
                     patch_stage: int = 0, patch_detail_stage: int = 0) -> EmbeddingNet:
    """ImageNet-pretrained EfficientNet-Lite0 truncated after ``stage``, as an embedding network."""
    if patch_stage > stage:
        raise ValueError(f"patch_stage {patch_stage} must not be after stage {stage}")
    trunk = EfficientNetLiteTrunk("efficientnet-lite0", stage=stage, pretrained=True)
    return EmbeddingNet(trunk, trunk.out_channels, pooling=pooling, embedding_dim=embedding_dim,
                        patch_stage=patch_stage, patch_detail_stage=patch_detail_stage)


def weights_sha256(model: nn.Module) -> str:
    """Hash of every parameter and buffer (name, dtype, shape, bytes), in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
