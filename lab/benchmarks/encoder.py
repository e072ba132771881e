"""``siamstream bench encoder``: the pipeline's two encoder engines, ONNX Runtime and PyTorch, on the same network.

Same model (the built-in EfficientNet-Lite0 with its patch output), same crops (real crops of the synthetic
production line, no files needed), same batch, same number of CPU threads. The two engines run in alternation,
one batch each, so that load from other processes hits both alike; the figure is the median over repetitions.
Both sides take uint8 crops from host memory and return features to host memory, as the pipeline does.
``--device cuda`` puts PyTorch on the GPU, and ONNX Runtime on its CUDA provider when it has one (the table
says where each ran).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.evaluation.report import json_line, table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderBenchResult:
    model: str
    batch: int
    threads: int
    repeats: int
    parity_max_abs: float
    ort_provider: str
    torch_device: str
    ort_seconds: float  # median per batch
    torch_seconds: float

    @property
    def ort_crops_per_s(self) -> float:
        return self.batch / self.ort_seconds

    @property
    def torch_crops_per_s(self) -> float:
        return self.batch / self.torch_seconds


def scene_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` real crops, uint8 RGB ``(n, size, size, 3)``, of parts on the synthetic production line."""
    from pipeline.crops import crop_batch
    from pipeline.synthetic import ProductionLineScene, SceneConfig
    from pipeline.types import Detections

    scene = ProductionLineScene(SceneConfig(seed=seed))
    crops: list[np.ndarray] = []
    for index in range(0, len(scene), 5):
        boxes = [xyxy for _, xyxy in scene.boxes_at(index, min_visible=1.0)]
        if boxes:
            dets = Detections(np.stack(boxes).astype(np.float32), np.ones(len(boxes), np.float32),
                              np.full(len(boxes), -1, np.int64))
            crops.extend(crop_batch(scene.render(index), dets, (size, size)).images)
        if len(crops) >= n:
            return np.stack(crops[:n])
    raise RuntimeError(f"the synthetic scene shows fewer than {n} whole parts")


def run(batch: int = 32, threads: int = 2, repeats: int = 20, device: str = "cpu",
        cache_dir: Path | None = None) -> EncoderBenchResult:
    """Time the built-in encoder (the ``[encoder]`` defaults: EfficientNet-Lite0 with its patch output) in both
    engines. ``device`` is given to both: on ``"cuda"`` ONNX Runtime takes its CUDA provider when it has one."""
    import torch

    from encoders.export import ensure_pretrained_onnx
    from encoders.models import pretrained_lite0
    from pipeline.config import EncoderConfig
    from pipeline.encoder import OnnxEncoder
    from pipeline.encoder_torch import TorchEncoder
    from pipeline.types import CropBatch

    ecfg = EncoderConfig()
    cache = Path(cache_dir or Path(ecfg.cache_dir).expanduser())
    model_path = ensure_pretrained_onnx(cache, ecfg.stage, ecfg.pooling, ecfg.input_size, ecfg.patch_stage)
    net = pretrained_lite0(stage=ecfg.stage, pooling=ecfg.pooling, patch_stage=ecfg.patch_stage)
    size = ecfg.input_size
    torch.set_num_threads(threads)
    ort_device = "auto" if device == "cuda" else device  # without a CUDA provider: one log line, and the CPU
    encoder = OnnxEncoder(model_path, device=ort_device, threads=threads, max_batch=batch)
    # the pipeline's max_batch: a batch is padded up to its CUDA graph bucket as in a run
    engine = TorchEncoder(net, (size, size), device=device, threads=threads, max_batch=ecfg.max_batch)
    if engine.encoder_id != encoder.encoder_id:
        raise RuntimeError("the PyTorch network and the exported ONNX model have different weights")
    crops = scene_crops(batch, size)
    xyxy = np.zeros((batch, 4), np.float32)
    xyxy[:, 2:] = size
    crop_batch = CropBatch(crops, xyxy)

    ref = engine.embed(crop_batch)
    got = encoder.embed(crop_batch)
    parity = float(np.max(np.abs(ref.vectors - got.vectors)))
    if ref.patches is not None and got.patches is not None:
        parity = max(parity, float(np.max(np.abs(ref.patches - got.patches))))

    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        encoder.embed(crop_batch)
        engine.embed(crop_batch)
    ort_times, torch_times = [], []
    for i in range(repeats):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate who goes first
            start = time.perf_counter()
            if which == 0:
                encoder.embed(crop_batch)
                ort_times.append(time.perf_counter() - start)
            else:
                engine.embed(crop_batch)  # returns host arrays: the device work is finished
                torch_times.append(time.perf_counter() - start)
    return EncoderBenchResult(model=str(model_path), batch=batch, threads=threads, repeats=repeats,
                              parity_max_abs=parity, ort_provider=encoder.provider, torch_device=engine.device,
                              ort_seconds=statistics.median(ort_times),
                              torch_seconds=statistics.median(torch_times))


def main(batch: int = 32, threads: int = 2, repeats: int = 20, device: str = "cpu") -> int:
    result = run(batch=batch, threads=threads, repeats=repeats, device=device)
    print(f"encoder benchmark: {result.model}, batch {result.batch}, {result.threads} CPU threads, "
          f"median of {result.repeats} alternating runs (crops in host memory, features back in host memory)")
    print(table(["engine", "runs on", "ms per batch", "crops/s"], [
        ["ONNX Runtime", result.ort_provider, result.ort_seconds * 1e3, result.ort_crops_per_s],
        ["PyTorch (engine = 'torch')", result.torch_device, result.torch_seconds * 1e3, result.torch_crops_per_s],
    ]))
    print(f"parity (max abs difference of embeddings and patch features): {result.parity_max_abs:.2e}")
    print(json_line({"parity_max_abs": result.parity_max_abs, "ort_crops_per_s": round(result.ort_crops_per_s, 1),
                     "torch_crops_per_s": round(result.torch_crops_per_s, 1), "batch": result.batch,
                     "threads": result.threads, "ort_provider": result.ort_provider,
                     "torch_device": result.torch_device}))
    return 0
