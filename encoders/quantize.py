"""Post-training int8 quantisation of an exported re-identification encoder, for CPU hosts.

EfficientNet-Lite was designed to quantise (ReLU6, no squeeze-excitation), and ONNX Runtime's int8 kernels use
the VNNI instructions of current x86 CPUs. The float32 export is kept as the source; this writes a second model
with 8-bit weights (per output channel) and activations (static ranges, min-max over calibration crops), as QDQ
nodes that ONNX Runtime fuses into integer convolutions.

Calibration crops come from the run's own training data, never from its validation identities, so
``siamstream eval reid`` on the run's ``validation/`` split still scores identities the model has not seen. The
quantised graph must agree with the float32 one: the mean cosine distance between their embeddings of held-out
crops (not used for calibration) must stay under :data:`INT8_TOLERANCE`, or nothing is written.

The quantised model keeps the float32 model's metadata, with ``siamstream.precision`` "int8" and its own
``siamstream.weights_sha256`` (derived from the source's and the calibration), so banks and galleries never mix
its vectors with the float32 model's. On a GPU host use the float32 model: ONNX Runtime's CUDA provider runs
QDQ graphs through float kernels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoders.reid_data import ReidDataError, ReidSet, load_reid_image
from pipeline.encoder import OnnxEncoder
from pipeline.types import CropBatch

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 512
CHECK_IMAGES = 256
MIN_CALIBRATION = 64
MIN_CHECK = 32
INT8_TOLERANCE = 0.02
BATCH = 32


class QuantizeError(ValueError):
    """The model or the calibration data cannot give a faithful int8 model; ``str()`` names the fix."""


@dataclass(frozen=True)
class QuantizeReport:
    """An int8 model written by :func:`quantize_int8`.

    Attributes:
        path: the int8 ONNX file.
        calibration_images: crops whose activation ranges set the quantisation.
        check_images: held-out crops the parity check embedded with both models.
        mean_cosine_distance: mean cosine distance between the float32 and int8 embeddings of the check crops.
        max_cosine_distance: the largest of them.
    """

    path: Path
    calibration_images: int
    check_images: int
    mean_cosine_distance: float
    max_cosine_distance: float


def int8_path(model: Path) -> Path:
    """Where the int8 copy of ``model`` goes: ``reid.onnx`` -> ``reid.int8.onnx``."""
    return model.with_name(f"{model.stem}.int8{model.suffix or '.onnx'}")


def calibration_paths(data: ReidSet, exclude: set[Path], seed: int = 0,
                      count: int = CALIBRATION_IMAGES + CHECK_IMAGES) -> list[Path]:
    """A seeded sample of ``count`` images of ``data``, none of an identity with an image in ``exclude``
    (resolved paths: a run's validation links)."""
    held_out = {i for p, i in zip(data.paths, data.identities, strict=True) if Path(p).resolve() in exclude}
    pool = [p for p, i in zip(data.paths, data.identities, strict=True) if i not in held_out]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))[:count]
    return [pool[i] for i in order]


def validation_files(run_dir: Path) -> set[Path]:
    """The images a training run held out for validation (``RUN/validation/**``), as resolved paths."""
    folder = Path(run_dir) / "validation"
    return {p.resolve() for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def _batches(paths: Sequence[Path], size: tuple[int, int]) -> Iterator[np.ndarray]:
    for start in range(0, len(paths), BATCH):
        try:
            yield np.stack([load_reid_image(p, size) for p in paths[start:start + BATCH]])
        except ReidDataError as exc:
            raise QuantizeError(str(exc)) from None


def _input_tensor(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` RGB -> the float32 NCHW [0, 1] tensor every siamstream export takes."""
    return np.ascontiguousarray((images.astype(np.float32) / np.float32(255.0)).transpose(0, 3, 1, 2))


def _embed(encoder: OnnxEncoder, images: np.ndarray) -> np.ndarray:
    h, w = encoder.input_size
    xyxy = np.tile(np.array([0, 0, w, h], np.float32), (len(images), 1))
    return encoder.embed(CropBatch(images, xyxy), with_patches=False).vectors


def _quantize(prepared: Path, out: Path, reader: object) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def quantize_int8(model: str | Path, out: str | Path, images: Sequence[Path], threads: int = 0,
                  tolerance: float = INT8_TOLERANCE) -> QuantizeReport:
    """Write an int8 copy of the float32 re-identification encoder ``model`` to ``out``.

    The first :data:`CALIBRATION_IMAGES` of ``images`` calibrate; the next :data:`CHECK_IMAGES` check parity.

    Raises:
        QuantizeError: not a float32 re-identification model, too few images, or the int8 model disagrees.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, out = Path(model), Path(out)
    source = OnnxEncoder(model, device="cpu", threads=threads)
    if source.metadata.get("siamstream.task") != "reid":
        raise QuantizeError(f"{model}: int8 export is for re-identification encoders (siamstream train --recipe "
                            f"reid); anomaly encoders stay float32 because their patch maps feed the bank")
    if source.metadata.get("siamstream.precision", "float32") != "float32":
        raise QuantizeError(f"{model}: already quantised; export the run again without --int8 and quantise that")
    if len(images) < MIN_CALIBRATION + MIN_CHECK:
        raise QuantizeError(f"{len(images)} calibration image(s) of identities outside the validation split; "
                            f"--int8 needs at least {MIN_CALIBRATION + MIN_CHECK}: pass the run's training data")
    n_check = max(MIN_CHECK, min(CHECK_IMAGES, len(images) // 3))
    calib, check = list(images[:len(images) - n_check][:CALIBRATION_IMAGES]), list(images[-n_check:])
    size = source.input_size
    input_name = source.contract.input_name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(calib, size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: _input_tensor(batch)}

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out.parent) as tmp:
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # the quantiser logs a line per rescaled bias to the root logger
        try:
            quant_pre_process(str(model), str(prepared))
            _quantize(prepared, quantised, Reader())
        finally:
            root.setLevel(level)
        graph = onnx.load(str(quantised))
        digest = hashlib.sha256()
        digest.update(source.encoder_id.encode())
        for p in calib:
            digest.update(str(Path(p).name).encode())
        del graph.metadata_props[:]
        for key, value in {**source.metadata, "siamstream.precision": "int8",
                           "siamstream.int8_calibration_images": str(len(calib)),
                           "siamstream.weights_sha256": digest.hexdigest()}.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(quantised))
        int8 = OnnxEncoder(quantised, device="cpu", threads=threads)
        distances = np.concatenate([1.0 - np.sum(_embed(source, b) * _embed(int8, b), axis=1)
                                    for b in _batches(check, size)])
        mean, worst = float(distances.mean()), float(distances.max())
        if mean > tolerance:
            raise QuantizeError(f"{model}: the int8 model's embeddings differ from float32 by a mean cosine distance "
                                f"of {mean:.4f} > {tolerance}; keep the float32 model (nothing was written)")
        os.replace(quantised, out)
    log.info("int8 model %s: mean cosine distance to float32 %.4f (max %.4f) on %d held-out crops",
             out, mean, worst, len(check))
    return QuantizeReport(out, len(calib), len(check), mean, worst)
