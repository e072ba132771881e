"""Encoder runtime: an ONNX Runtime session that embeds a frame's crops as one batch.

The input/output contract is read from the model file and checked at load time:

- one image input, rank 4, ``(batch, 3, H, W)`` (NCHW) or ``(batch, H, W, 3)`` (NHWC), fixed H and W;
  dtype float32/float16 (fed RGB scaled to [0, 1] by the uint8 dtype range) or uint8 (fed raw);
- a first output ``(batch, D)`` with a fixed D: the embedding;
- optionally an output named ``patches`` ``(batch, C, h, w)``: local features for patch-level anomaly scoring.

Preprocessing scales by dtype (uint8 -> /255), never by pixel values.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.types import CropBatch, Embeddings

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


class EncoderContractError(ValueError):
    """The ONNX model does not fit the encoder contract. ``str()`` names the model, the problem and the fix."""


class ModelFileError(EncoderContractError):
    """The model file itself is unreadable (truncated, not ONNX): not a matter of the device or the config."""


class Encoder(Protocol):
    """Anything that embeds a batch of crops."""

    input_size: tuple[int, int]  # (H, W)
    embedding_dim: int
    patch_dim: int  # channels of the patch output, 0 without one
    patch_grid: tuple[int, int]  # (h, w) of the patch output, (0, 0) without one
    encoder_id: str
    provider: str  # what runs it, e.g. "CPUExecutionProvider" or "torch-cuda"
    name: str  # for logs: the model file's name, or the built-in network's
    metadata: dict[str, str]

    def embed(self, crops: CropBatch, with_patches: bool = True) -> Embeddings: ...


@dataclass(frozen=True)
class ModelContract:
    input_name: str
    layout: str  # "NCHW" | "NHWC"
    height: int
    width: int
    dtype: type
    fixed_batch: int  # 0 when the batch axis is dynamic
    output_name: str
    embedding_dim: int
    patch_output: str = ""  # "" when the model has no patch output
    patch_channels: int = 0
    patch_grid: tuple[int, int] = (0, 0)


def _dim(d: object) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def read_contract(session: object, path: str) -> ModelContract:
    """Check an ONNX Runtime session's inputs/outputs against the encoder contract."""
    inputs = session.get_inputs()  # type: ignore[attr-defined]
    outputs = session.get_outputs()  # type: ignore[attr-defined]
    need = ("siamstream needs one image input (batch, 3, H, W) or (batch, H, W, 3) with fixed H and W, and a first "
            "output (batch, D); re-export the model with those shapes")
    if len(inputs) != 1:
        raise EncoderContractError(f"{path}: model has {len(inputs)} inputs "
                                   f"({', '.join(i.name for i in inputs)}); {need}")
    inp = inputs[0]
    shape = list(inp.shape)
    if inp.type not in _ORT_DTYPES:
        raise EncoderContractError(f"{path}: input {inp.name!r} has type {inp.type}; allowed: "
                                   f"{', '.join(_ORT_DTYPES)}")
    if len(shape) != 4:
        raise EncoderContractError(f"{path}: input {inp.name!r} has shape {shape} (rank {len(shape)}); {need}")
    if shape[1] == 3 and _dim(shape[2]) and _dim(shape[3]):
        layout, h, w = "NCHW", int(shape[2]), int(shape[3])
    elif shape[3] == 3 and _dim(shape[1]) and _dim(shape[2]):
        layout, h, w = "NHWC", int(shape[1]), int(shape[2])
    else:
        raise EncoderContractError(f"{path}: input {inp.name!r} has shape {shape}: no 3-channel axis with a "
                                   f"fixed height and width; {need}")
    if not outputs:
        raise EncoderContractError(f"{path}: model has no outputs; {need}")
    out = outputs[0]
    oshape = list(out.shape)
    if len(oshape) != 2 or _dim(oshape[1]) is None:
        raise EncoderContractError(f"{path}: output {out.name!r} has shape {oshape}; {need}")
    patch = next((o for o in outputs[1:] if o.name == "patches"), None)
    pc, grid = 0, (0, 0)
    if patch is not None:
        ps = list(patch.shape)
        if len(ps) != 4 or not all(_dim(d) for d in ps[1:]):
            raise EncoderContractError(f"{path}: output 'patches' has shape {ps}; expected (batch, C, h, w) "
                                       f"with fixed C, h, w")
        pc, grid = int(ps[1]), (int(ps[2]), int(ps[3]))
    return ModelContract(inp.name, layout, h, w, _ORT_DTYPES[inp.type], _dim(shape[0]) or 0,
                         out.name, int(oshape[1]), patch.name if patch is not None else "", pc, grid)


def elf_needed(path: str | Path) -> list[str]:
    """The ``DT_NEEDED`` entries of a 64-bit little-endian ELF shared library: the libraries the loader must find
    for it to load. Reads the program headers, the dynamic segment and its string table only.

    Raises:
        ValueError: not such an ELF file, or no dynamic segment.
    """
    try:
        return _elf_needed(path)
    except struct.error as exc:  # a field read past the end: a truncated or damaged file
        raise ValueError(f"{path}: truncated or damaged ELF file ({exc})") from None


def _elf_needed(path: str | Path) -> list[str]:
    with open(path, "rb") as fh:
        head = fh.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
        if phentsize < 56 or len(table) < phentsize * phnum:
            raise ValueError(f"{path}: truncated program header table")
        segments = [struct.unpack_from("<IIQQQQQQ", table, i * phentsize) for i in range(phnum)]
        dynamic = next((seg for seg in segments if seg[0] == 2), None)  # PT_DYNAMIC
        if dynamic is None:
            raise ValueError(f"{path}: no dynamic segment")
        fh.seek(dynamic[2])
        raw = fh.read(dynamic[5])
        entries = [struct.unpack_from("<qQ", raw, i) for i in range(0, len(raw) - 15, 16)]
        strtab = next((val for tag, val in entries if tag == 5), None)  # DT_STRTAB (a virtual address)
        strsz = next((val for tag, val in entries if tag == 10), 0)  # DT_STRSZ
        load = next((seg for seg in segments if seg[0] == 1 and seg[3] <= (strtab or -1) < seg[3] + seg[5]), None)
        if strtab is None or load is None:
            raise ValueError(f"{path}: no string table for its dynamic segment")
        fh.seek(strtab - load[3] + load[2])  # virtual address -> file offset, through its PT_LOAD segment
        strings = fh.read(strsz)
    names = []
    for tag, val in entries:
        if tag == 0:  # DT_NULL ends the table
            break
        if tag == 1:  # DT_NEEDED
            names.append(strings[val:strings.index(b"\0", val)].decode())
    return names


# cuDNN is opened by the CUDA provider at run time rather than linked; onnxruntime-gpu 1.19 and later use cuDNN 9.
_CUDNN = "libcudnn.so.9"


def cuda_libraries() -> tuple[str, ...]:
    """The CUDA libraries ONNX Runtime's CUDA provider needs: those its provider library links (read from the
    library itself, so they follow the CUDA version onnxruntime was built for; 1.31 links CUDA 13's), and cuDNN."""
    import onnxruntime as ort

    provider = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        linked = [n for n in elf_needed(provider) if n.startswith(("libcu", "libnv"))]
    except (OSError, ValueError):  # no provider library (a CPU build), or an unreadable one: the check says so
        linked = []
    if not linked:
        return ()
    cudnn = () if any(n.startswith("libcudnn") for n in linked) else (_CUDNN,)
    return tuple(dict.fromkeys(("libcuda.so.1", *linked, *cudnn)))  # the driver always, first


def cuda_usable() -> tuple[bool, str]:
    """Whether the CUDA libraries ONNX Runtime's CUDA provider loads are present (no CUDA error spam)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider"
    libraries = cuda_libraries()
    if not libraries:
        return False, "the CUDA provider library of this onnxruntime build is missing or unreadable"
    for lib in libraries:
        try:
            ctypes.CDLL(lib)
        except OSError:
            return False, f"{lib} not found"
    return True, ""


def select_providers(device: str, stage: str = "encoder") -> list[str]:
    """ONNX Runtime execution providers for ``device``, shared by every stage that runs an ONNX model.

    Args:
        device: "auto" (CUDA when usable, else CPU), "cpu" or "cuda".
        stage: the config section that asked (``"encoder"``, ``"detector"``), for the log line and errors.

    Returns:
        ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when CUDA is usable and wanted, else
        ``["CPUExecutionProvider"]``. With "auto" on a machine without CUDA, logs one line saying why.

    Raises:
        EncoderContractError: ``device = "cuda"`` and CUDA is not usable.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    ok, why = cuda_usable()
    if ok:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise EncoderContractError(f"[{stage}] device = 'cuda' but CUDA is not usable ({why}); "
                                   f"use device = 'auto' or 'cpu'")
    log.info("%s on CPU: CUDA not usable (%s)", stage, why)
    return ["CPUExecutionProvider"]


def session_options(threads: int = 0) -> Any:
    """ONNX Runtime session options shared by every stage that runs an ONNX model.

    Graph-optimiser warnings are silenced (not the user's business), ``threads`` sets the intra-op pool (0: ONNX
    Runtime decides), and the pool's threads do not spin-wait after a run: by default they busy-wait for the next
    one, taking the cores that decoding, detection and tracking need between two encoder calls (on 2 cores the
    tracker ran 1.6 to 2.3 times slower behind a spinning encoder, docs/benchmarks/reid.md).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_finite(path: Path, out: np.ndarray, patches: np.ndarray | None) -> None:
    """A model that outputs NaN or infinity is broken: nothing it gave may be scored or tracked."""
    bad = ~np.isfinite(out).all(axis=1)
    if patches is not None:
        bad |= ~np.isfinite(patches).all(axis=(1, 2))
    if bad.any():
        raise EncoderContractError(f"{path}: the encoder output NaN or infinite values for {int(bad.sum())} of "
                                   f"{len(out)} crops; the model is broken (check its weights, or re-export it with "
                                   f"`siamstream export`)")


class OnnxEncoder:
    """Embeds crops with an ONNX model.

    Args:
        path: the ONNX file.
        device: "auto" (CUDA when usable, else CPU), "cpu" or "cuda" (fails if CUDA is not usable).
        threads: intra-op threads for the CPU provider; 0 lets ONNX Runtime decide.
        max_batch: crops per session run; larger batches are split.
        setting: the config key that named the model, for the message when it is missing (default: ``[encoder]
            model``).
    """

    def __init__(self, path: str | Path, device: str = "auto", threads: int = 0, max_batch: int = 64,
                 setting: str = "") -> None:
        import onnxruntime as ort

        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        self.path = Path(path)
        self.name = self.path.name
        if not self.path.is_file():
            raise EncoderContractError(f"{self.path}: encoder model not found; " + (
                f"set {setting} to an existing ONNX file" if setting else
                "set [encoder] model to an ONNX file, or leave it empty for the built-in pretrained encoder"))
        opts = session_options(threads)
        providers = select_providers(device, "encoder")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({first})") from None
        self.provider = self.session.get_providers()[0]
        if providers[0] == "CUDAExecutionProvider":
            log.info("encoder on %s", self.provider)
        self.contract = read_contract(self.session, str(self.path))
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.provider == "CUDAExecutionProvider" and self.metadata.get("siamstream.precision") == "int8":
            log.warning("%s: an int8 model on the GPU runs through float kernels, slower than its float32 "
                        "export; use the float32 model on GPU hosts", self.path.name)
        self.input_size = (self.contract.height, self.contract.width)
        self.embedding_dim = self.contract.embedding_dim
        self.patch_dim = self.contract.patch_channels
        self.patch_grid = self.contract.patch_grid
        self.max_batch = self.contract.fixed_batch or max_batch
        declared = self.metadata.get("siamstream.embedding_dim")
        if declared is not None and (not re.fullmatch(r"[0-9]{1,9}", declared) or int(declared) != self.embedding_dim):
            raise EncoderContractError(f"{self.path}: metadata says embedding_dim={declared[:20]!r} but the output "
                                       f"has D={self.embedding_dim}; re-export the model (siamstream export)")
        # Identity of the encoder for banks: the weights hash when exported by siamstream, else the file hash.
        weights = self.metadata.get("siamstream.weights_sha256")
        if weights is not None and not re.fullmatch(r"[0-9a-f]{64}", weights):
            raise EncoderContractError(f"{self.path}: metadata siamstream.weights_sha256 = {weights[:20]!r} is not a "
                                       f"SHA-256 hex digest; re-export the model (siamstream export)")
        self.encoder_id = weights or file_sha256(self.path)

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 RGB -> the model's input tensor (scaled by dtype, not by content)."""
        c = self.contract
        x = images
        if c.dtype != np.uint8:
            x = x.astype(np.float32) * np.float32(1.0 / np.iinfo(np.uint8).max)
            x = x.astype(c.dtype, copy=False)
        if c.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    def embed(self, crops: CropBatch, with_patches: bool = True) -> Embeddings:
        """Embed a frame's crops: ``(N, D)`` float32 rows with unit L2 norm, plus ``(N, P, C)`` patch
        features when the model has them and ``with_patches`` is set."""
        c = self.contract
        want_patches = with_patches and bool(c.patch_output)
        n = len(crops)
        h, w = self.patch_grid
        p = h * w
        out = np.empty((n, self.embedding_dim), np.float32)
        patches = np.empty((n, p, self.patch_dim), np.float32) if want_patches else None
        if n and crops.images.shape[1:3] != self.input_size:
            raise ValueError(f"crops are {crops.images.shape[1:3]}, the encoder needs {self.input_size}")
        names = [c.output_name, c.patch_output] if want_patches else [c.output_name]
        step = self.max_batch
        for start in range(0, n, step):
            chunk = crops.images[start:start + step]
            real = len(chunk)
            if c.fixed_batch and real < c.fixed_batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], c.fixed_batch - real, axis=0)])
            ys = self.session.run(names, {c.input_name: self._prepare(chunk)})
            out[start:start + real] = np.asarray(ys[0], dtype=np.float32)[:real]
            if patches is not None:
                # (B, C, h, w) -> (B, h*w, C): one row per patch, row-major over the grid
                pt = np.asarray(ys[1], dtype=np.float32)[:real]
                patches[start:start + real] = pt.reshape(real, self.patch_dim, p).transpose(0, 2, 1)
        _check_finite(self.path, out, patches)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return Embeddings(out, patches, (h, w) if patches is not None else (0, 0))
