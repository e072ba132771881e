"""Good-only adaptation of the patch trunk: what it trains, that it separates painted patches, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from encoders.adapt import AdaptConfig, AdaptError, _Crops, _patches, adapt_patch_trunk, adapt_to_onnx
from encoders.models import pretrained_lite0


def textures(n: int, side: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Good 'parts': a tread-like stripe pattern with smooth noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    out = []
    for _ in range(n):
        stripes = 0.5 + 0.4 * np.sin((xx + yy * 0.3) / 5.0 + rng.uniform(0, 6.28))
        noise = cv2.GaussianBlur(rng.normal(0, 0.2, (side, side)).astype(np.float32), (0, 0), 2.0)
        grey = np.clip((stripes + noise) * 200, 0, 255).astype(np.uint8)
        out.append(np.repeat(grey[..., None], 3, axis=2))
    return out


def painted_distance(model: torch.nn.Module, cfg: AdaptConfig, images: list[np.ndarray],
                     seed: int) -> tuple[float, float]:
    """Mean squared move of the cells inside painted defects, relative to the clean features' squared norm, and
    the same relative to the move a photometric jitter causes, on batches drawn with ``seed`` (not the training
    seed)."""
    crops = _Crops(images, AdaptConfig(**{**cfg.__dict__, "seed": seed, "batch": 16}))
    moved, jittered, norm = [], [], []
    with torch.no_grad():
        for _ in range(3):
            clean, jit, bad, mask = crops.next()
            fc, fj, fb = _patches(model, clean), _patches(model, jit), _patches(model, bad)
            inside = torch.nn.functional.adaptive_avg_pool2d(mask, tuple(fc.shape[2:])) > 0.25
            moved.append((fb - fc).pow(2).sum(1)[inside[:, 0]])
            jittered.append((fj - fc).pow(2).sum(1).mean())
            norm.append(fc.pow(2).sum(1).mean())
    painted = torch.cat(moved).mean()
    return float(painted / torch.stack(norm).mean()), float(painted / torch.stack(jittered).mean())


def test_adaptation_trains_the_blocks_only_and_separates_painted_patches() -> None:
    images = textures(8)
    cfg = AdaptConfig(steps=40, batch=4, crop=64, lr=1e-3, w_anchor=0.1)
    model = pretrained_lite0(stage=4, patch_stage=4, patch_detail_stage=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    before_distance, before_contrast = painted_distance(model.eval(), cfg, images, seed=99)
    lines: list[str] = []
    result = adapt_patch_trunk(model, images, cfg, progress=lines.append)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("backbone.blocks.") for k in changed)
    assert not any("running_" in k for k in changed)  # BatchNorm statistics stay frozen
    assert not model.training and all(p.requires_grad for p in model.parameters())  # flags as they were
    assert result.steps == 40 and result.images == 8 and result.margin > 0
    assert len(lines) == 1 and lines[0].startswith("adapt: 40 steps in")
    assert set(result.final) == {"invariance", "separation", "locality", "anchor", "loss"}
    # Painted cells of batches the run never drew moved further from their clean selves than before, and further
    # compared with what a lighting change does: the trunk did not just grow more sensitive to everything.
    after_distance, after_contrast = painted_distance(model, cfg, images, seed=99)
    assert after_distance > 1.2 * before_distance and after_contrast > 1.2 * before_contrast


def test_adapt_to_onnx_records_the_adaptation(tmp_path: Path) -> None:
    images = textures(3, side=64)
    path, result = adapt_to_onnx(images, tmp_path / "adapted.onnx", stage=4, pooling="gem", patch_stage=4,
                                 cfg=AdaptConfig(steps=2, batch=2, crop=64))
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["siamstream.backbone"] == "efficientnet-lite0:imagenet+good-only-adapted:stage4"
    assert meta["siamstream.input_size"] == "64x64"
    record = json.loads(meta["siamstream.adaptation"])
    assert record["images"] == 3 and record["config"]["steps"] == 2 and "hole" not in record["config"]["kinds"]
    assert result.seconds > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"),
    ({"crop": 16}, "crop"),
    ({"kinds": ("scuff",)}, "kinds"),
    ({"kinds": ()}, "kinds"),
    ({"w_separation": 0.0}, "w_separation"),
    ({"window_fraction": 1.5}, "window_fraction"),
    ({"device": "gpu"}, "device"),
])
def test_bad_settings_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(AdaptError, match=match):
        AdaptConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_images_and_models_are_named() -> None:
    model = pretrained_lite0(stage=4, patch_stage=4)
    with pytest.raises(AdaptError, match="no good images"):
        adapt_patch_trunk(model, [], AdaptConfig(steps=1))
    with pytest.raises(AdaptError, match="one shape"):
        adapt_patch_trunk(model, [textures(1, 64)[0], textures(1, 80)[0]], AdaptConfig(steps=1))
    with pytest.raises(AdaptError, match="too small"):
        adapt_patch_trunk(model, textures(2, side=20), AdaptConfig(steps=1))
    with pytest.raises(AdaptError, match="patch stage"):
        adapt_patch_trunk(pretrained_lite0(stage=4), textures(2, 64), AdaptConfig(steps=1))
