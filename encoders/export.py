"""ONNX export with metadata and a parity guarantee.

The exported graph takes ``input`` ``(batch, 3, H, W)`` float32 RGB in [0, 1] (dynamic batch) and returns
``embedding`` ``(batch, D)`` float32, L2-normalised, and, for models with a patch stage, ``patches``
``(batch, C, h, w)`` local features for patch-level anomaly scoring. The metadata the pipeline reads is stored in the
model's ``metadata_props`` under ``siamstream.*`` keys. After writing the file, the same batch runs
through PyTorch and ONNX Runtime; export fails if they differ by more than ``tolerance`` (max abs).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from encoders.backbones import BackboneError
from encoders.model_cache import default_model_path
from encoders.models import EmbeddingNet, FlipAveraged, pretrained_lite0, weights_sha256

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4


class ExportParityError(RuntimeError):
    """PyTorch and ONNX Runtime disagree on the same batch by more than the tolerance."""

    def __init__(self, max_abs: float, tolerance: float, path: Path) -> None:
        super().__init__(f"{path}: ONNX Runtime and PyTorch embeddings differ by {max_abs:.3g} (max abs) "
                         f"> {tolerance:g}; the exported graph is not faithful, the file was removed")
        self.max_abs = max_abs
        self.tolerance = tolerance


@dataclass(frozen=True)
class ExportReport:
    path: Path
    parity_max_abs: float
    embedding_dim: int
    input_size: int | tuple[int, int]
    metadata: dict[str, str]


def _hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    return (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))


def model_metadata(model: EmbeddingNet | FlipAveraged, input_size: int | tuple[int, int], backbone: str,
                   extra: dict[str, str] | None = None) -> dict[str, str]:
    meta = {
        "siamstream.format": "1",
        "siamstream.input_size": str(input_size) if isinstance(input_size, int) else "x".join(map(str, input_size)),
        "siamstream.input_layout": "NCHW",
        "siamstream.input_range": "0..1 RGB (uint8 / 255)",
        "siamstream.normalization": json.dumps({"mean": list(model.norm_mean), "std": list(model.norm_std)}),
        "siamstream.embedding_dim": str(model.embedding_dim),
        "siamstream.backbone": backbone,
        "siamstream.pooling": model.pooling,
        "siamstream.weights_sha256": weights_sha256(model),
        "siamstream.patch_stage": str(model.patch_stage),
        "siamstream.patch_detail_stage": str(getattr(model, "patch_detail_stage", 0)),
    }
    meta.update(extra or {})
    return meta


def _ort_session(path: Path, threads: int = 0):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_onnx(model: EmbeddingNet | FlipAveraged, path: str | Path, input_size: int | tuple[int, int], backbone: str,
                extra_metadata: dict[str, str] | None = None, tolerance: float = PARITY_TOLERANCE,
                parity_batch: int = 4, seed: int = 0) -> ExportReport:
    """Export ``model`` to ``path`` and check ONNX Runtime parity on a seeded batch.

    Raises:
        ExportParityError: the embeddings differ by more than ``tolerance``; the file is removed.
    """
    import onnx

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackboneError(f"{path.parent}: cannot create the model folder ({exc.strerror or exc}); set a writable "
                            f"[encoder] cache_dir or --out") from None
    model = model.eval().cpu()
    h, w = _hw(input_size)
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        outputs = ["embedding", "patches"] if model.patch_stage else ["embedding"]
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(raw), input_names=["input"], output_names=outputs,
                              dynamic_axes={"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                              opset_version=17, dynamo=False)
        proto = onnx.load(str(raw))
        # The exporter may leave non-batch output dims symbolic (e.g. after Resize + Concat); the pipeline's
        # contract needs them fixed, and they are: fill them in from a real forward pass.
        with torch.no_grad():
            shapes = model(example)
        for value, tensor in zip(proto.graph.output, shapes if isinstance(shapes, tuple) else (shapes,),
                                 strict=True):
            for dim, size in zip(list(value.type.tensor_type.shape.dim)[1:], tensor.shape[1:], strict=True):
                dim.dim_value = int(size)
        meta = model_metadata(model, input_size, backbone, extra_metadata)
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        staged = Path(tmp) / "model.onnx"
        onnx.save(proto, str(staged))

        batch = torch.rand(parity_batch, 3, h, w, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            ref = model(batch)
        refs = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
        got = _ort_session(staged).run(None, {"input": batch.numpy()})
        max_abs = max(float(np.max(np.abs(r - g))) for r, g in zip(refs, got, strict=True))
        if max_abs > tolerance:
            raise ExportParityError(max_abs, tolerance, path)
        staged.replace(path)  # atomic: a reader never sees a half-written model
    log.info("exported %s (D=%d, %dx%d px) parity max abs %.2e", path, model.embedding_dim, h, w, max_abs)
    return ExportReport(path, max_abs, model.embedding_dim, input_size, meta)


def ensure_pretrained_onnx(cache_dir: str | Path, stage: int = 5, pooling: str = "gem",
                           input_size: int | tuple[int, int] = 128, patch_stage: int = 4,
                           patch_detail_stage: int = 0) -> Path:
    """The built-in encoder: ImageNet EfficientNet-Lite0 (offline weights) exported once into the cache.

    ``input_size`` is a side in pixels or ``(height, width)`` (whole images at their own aspect ratio)."""
    path = default_model_path(cache_dir, stage, pooling, input_size, patch_stage, patch_detail_stage)
    if path.is_file():
        return path
    log.info("building the default encoder (EfficientNet-Lite0, stage %d, %s pooling, patches from stage %d%s, "
             "%s px) -> %s", stage, pooling, patch_stage,
             f" + {patch_detail_stage}" if patch_detail_stage else "", input_size, path)
    model = pretrained_lite0(stage=stage, pooling=pooling, patch_stage=patch_stage,
                             patch_detail_stage=patch_detail_stage)
    export_onnx(model, path, input_size, backbone=f"efficientnet-lite0:imagenet:stage{stage}",
                extra_metadata={"siamstream.stage": str(stage)})
    return path


def export_run(run_dir: str | Path, out: str | Path, tolerance: float = PARITY_TOLERANCE,
               flip: bool = True) -> ExportReport:
    """Export the trained network of a finished ``siamstream train`` run to ONNX, with the parity check.

    A re-identification run (``siamstream train --recipe reid``) exports its twin encoder at the run's
    ``height`` x ``width`` (``siamstream.input_size`` "HxW", ``siamstream.task`` "reid"); with ``flip`` its
    embedding of a crop is averaged with that of the crop's mirror image (:class:`~encoders.models.FlipAveraged`,
    ``siamstream.flip_average`` "true").
    Besides the metadata every export has (input size, normalisation, embedding dimension, backbone, weights
    hash), the model records the training loss, the input channels the network was trained on and the whole
    training config as JSON.

    Raises:
        TrainError: ``run_dir`` is not a finished run.
        ExportParityError: ONNX Runtime and PyTorch differ by more than ``tolerance``; nothing is written.
    """
    from encoders.reid_train import backbone_label, is_reid_run, load_reid_run
    from encoders.train import backbone_name, load_run

    if is_reid_run(Path(run_dir)):
        reid, rcfg = load_reid_run(Path(run_dir))
        net = FlipAveraged(reid) if flip else reid
        return export_onnx(net, out, rcfg.size, backbone=backbone_label(rcfg), tolerance=tolerance, extra_metadata={
            "siamstream.task": "reid", "siamstream.grayscale": "false", "siamstream.flip_average": str(flip).lower(),
            "siamstream.train_config": json.dumps({"task": "reid", **rcfg.as_dict()}, sort_keys=True)})
    model, cfg = load_run(Path(run_dir))
    extra = {
        "siamstream.loss": cfg.loss,
        "siamstream.grayscale": str(cfg.grayscale).lower(),
        "siamstream.train_config": json.dumps(cfg.as_dict(), sort_keys=True),
    }
    return export_onnx(model, out, cfg.input_size, backbone=backbone_name(cfg), extra_metadata=extra,
                       tolerance=tolerance)
