"""``siamstream eval oneshot`` and ``eval verify``: an exported ONNX encoder on one-shot runs and on identities.

The model runs in ONNX Runtime exactly as the pipeline runs it (:class:`~pipeline.encoder.OnnxEncoder`); images
are read grey or colour as the model was trained (its ``siamstream.grayscale`` metadata) and resized to its
input size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoders.data import ImageFolderClasses, load_image
from encoders.evaluate import (
    EvaluationError,
    OneShotResult,
    VerificationResult,
    evaluate_oneshot,
    evaluate_verification,
    load_oneshot_runs,
    save_roc_png,
)
from pipeline.encoder import OnnxEncoder
from pipeline.types import CropBatch

log = logging.getLogger(__name__)


class OnnxEmbedder:
    """Images (paths or uint8 arrays) -> L2-normalised embeddings with an ONNX encoder."""

    def __init__(self, model: Path, device: str = "auto", threads: int = 0, batch: int = 64) -> None:
        self.encoder = OnnxEncoder(model, device=device, threads=threads, max_batch=batch)
        h, w = self.encoder.input_size
        if h != w:
            raise EvaluationError(f"{model}: input {h}x{w} is not square; evaluation resizes images to a square")
        self.size = h
        self.grayscale = self.encoder.metadata.get("siamstream.grayscale", "false") == "true"

    def load(self, path: Path) -> np.ndarray:
        try:
            return load_image(Path(path), self.grayscale, self.size)
        except ValueError as exc:
            raise EvaluationError(f"{exc}; check the file or remove it") from None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        xyxy = np.tile(np.array([0, 0, self.size, self.size], np.float32), (len(images), 1))
        return self.encoder.embed(CropBatch(np.ascontiguousarray(images), xyxy), with_patches=False).vectors


def oneshot(model: Path, runs_source: Path, cache: Path, threads: int = 0) -> OneShotResult:
    runs = load_oneshot_runs(runs_source, cache)
    embedder = OnnxEmbedder(model, threads=threads)
    log.info("one-shot: %d runs of %d-way from %s with %s", len(runs), runs[0].ways, runs_source, model)
    return evaluate_oneshot(runs, embedder, embedder.load)


@dataclass(frozen=True)
class VerifyReport:
    result: VerificationResult
    identities: int
    images: int
    roc_png: Path | None


def verify(model: Path, data: Path, out_dir: Path | None, threads: int = 0) -> VerifyReport:
    """All pairs of images in ``data`` (a folder of identity folders) through ``model``."""
    embedder = OnnxEmbedder(model, threads=threads)
    try:
        dataset = ImageFolderClasses(Path(data), grayscale=embedder.grayscale, size=embedder.size)
    except ValueError as exc:
        raise EvaluationError(f"{exc}; pass a folder with one sub-folder of images per identity") from None
    images = np.stack([embedder.load(p) for p in dataset.paths])
    embeddings = np.concatenate([embedder(images[i:i + 64]) for i in range(0, len(images), 64)])
    result = evaluate_verification(embeddings, dataset.labels)
    png = None
    if out_dir is not None:
        png = Path(out_dir) / "roc.png"
        save_roc_png(result, png, title=f"{Path(data).name}: {len(dataset.classes)} identities, "
                                        f"{len(dataset)} images")
    return VerifyReport(result, len(dataset.classes), len(dataset), png)
