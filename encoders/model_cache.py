"""Where the built-in encoder's ONNX file lives in the cache (no PyTorch needed to find it; only to build it)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_model_path"]


def default_model_path(cache_dir: str | Path, stage: int, pooling: str, input_size: int | tuple[int, int],
                       patch_stage: int = 0, patch_detail_stage: int = 0) -> Path:
    """The cache file of the built-in EfficientNet-Lite0 encoder cut at ``stage`` with this pooling, input size
    (a side in pixels, or ``(height, width)``) and patch stages."""
    size = input_size if isinstance(input_size, int) else "x".join(map(str, input_size))
    name = (f"efficientnet-lite0_s{stage}_{pooling}_{size}" + (f"_p{patch_stage}" if patch_stage else "")
            + (f"d{patch_detail_stage}" if patch_detail_stage else ""))
    return Path(cache_dir).expanduser() / f"{name}.onnx"
