"""``siamstream bench encoder``: the pipeline's encoder in ONNX Runtime against the same network in PyTorch eager.

Same model (the built-in EfficientNet-Lite0 with its patch output, or a trained run), same crops (real crops of
the synthetic production line, no files needed), same batch, same number of CPU threads. The two engines run
in alternation, one batch each, so that load from other processes hits both alike; the figure is the median
over repetitions. Both sides include turning uint8 crops into the model's float input.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.benchmarks.report import json_line, table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderBenchResult:
    model: str
    batch: int
    threads: int
    repeats: int
    parity_max_abs: float
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


def run(batch: int = 32, threads: int = 2, repeats: int = 20, cache_dir: Path | None = None) -> EncoderBenchResult:
    """Time the built-in encoder (the ``[encoder]`` defaults: EfficientNet-Lite0 with its patch output)."""
    import torch

    from encoders.data import to_tensor
    from encoders.export import ensure_pretrained_onnx
    from encoders.models import pretrained_lite0
    from pipeline.config import EncoderConfig
    from pipeline.encoder import OnnxEncoder
    from pipeline.types import CropBatch

    ecfg = EncoderConfig()
    cache = Path(cache_dir or Path(ecfg.cache_dir).expanduser())
    model_path = ensure_pretrained_onnx(cache, ecfg.stage, ecfg.pooling, ecfg.input_size, ecfg.patch_stage)
    net = pretrained_lite0(stage=ecfg.stage, pooling=ecfg.pooling, patch_stage=ecfg.patch_stage).eval()
    size = ecfg.input_size
    torch.set_num_threads(threads)
    encoder = OnnxEncoder(model_path, device="cpu", threads=threads, max_batch=batch)
    crops = scene_crops(batch, size)
    xyxy = np.zeros((batch, 4), np.float32)
    xyxy[:, 2:] = size
    crop_batch = CropBatch(crops, xyxy)

    def torch_embed() -> tuple[np.ndarray, np.ndarray | None]:
        with torch.inference_mode():
            out = net(to_tensor(crops))
        if isinstance(out, tuple):
            emb, patches = out
            p = patches.flatten(2).transpose(1, 2).numpy()  # (N, h*w, C), as the pipeline's records
            return emb.numpy(), p
        return out.numpy(), None

    ref_emb, ref_patches = torch_embed()
    got = encoder.embed(crop_batch)
    parity = float(np.max(np.abs(ref_emb - got.vectors)))
    if ref_patches is not None and got.patches is not None:
        parity = max(parity, float(np.max(np.abs(ref_patches - got.patches))))

    for _ in range(2):  # warm-up: first runs allocate and pick kernels
        encoder.embed(crop_batch)
        torch_embed()
    ort_times, torch_times = [], []
    for i in range(repeats):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate who goes first
            start = time.perf_counter()
            if which == 0:
                encoder.embed(crop_batch)
                ort_times.append(time.perf_counter() - start)
            else:
                torch_embed()
                torch_times.append(time.perf_counter() - start)
    return EncoderBenchResult(model=str(model_path), batch=batch, threads=threads, repeats=repeats,
                              parity_max_abs=parity, ort_seconds=statistics.median(ort_times),
                              torch_seconds=statistics.median(torch_times))


def main(batch: int = 32, threads: int = 2, repeats: int = 20) -> int:
    result = run(batch=batch, threads=threads, repeats=repeats)
    print(f"encoder benchmark: {result.model}, batch {result.batch}, {result.threads} CPU threads, "
          f"median of {result.repeats} alternating runs")
    print(table(["engine", "ms per batch", "crops/s"], [
        ["ONNX Runtime (CPU)", result.ort_seconds * 1e3, result.ort_crops_per_s],
        ["PyTorch eager", result.torch_seconds * 1e3, result.torch_crops_per_s],
    ]))
    print(f"parity (max abs difference of embeddings and patch features): {result.parity_max_abs:.2e}")
    print(json_line({"parity_max_abs": result.parity_max_abs, "ort_crops_per_s": round(result.ort_crops_per_s, 1),
                     "torch_crops_per_s": round(result.torch_crops_per_s, 1), "batch": result.batch,
                     "threads": result.threads}))
    return 0
