"""Encoder runtime on PyTorch: the built-in encoder run by torch, on a GPU when torch sees one.

For hosts whose torch has CUDA but whose ONNX Runtime has no CUDA provider (the onnxruntime-gpu wheel must
match the host's CUDA major version; torch brings its own CUDA libraries). It runs the same network as the
ONNX export of the built-in encoder, so its ``encoder_id`` is the same weights hash: a bank built with one
engine is searched with the other. Its outputs match the ONNX model's within float32 rounding (see
``siamstream bench encoder``).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.encoder import EncoderContractError
from pipeline.types import CropBatch, Embeddings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def torch_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a CUDA device, else ``"cpu"``; ``"cuda"`` without one is an
    error naming the fix."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise EncoderContractError("[encoder] device = 'cuda' with engine = 'torch', but torch sees no CUDA device "
                                   f"(torch {torch.__version__}: a CPU build, or no driver); install a CUDA build "
                                   "of torch or set device = 'cpu'")
    return "cpu"


MIN_BUCKET = 8  # the smallest captured batch: fewer shapes to prepare, and 8 crops cost little more than 1
# Graphs are captured for buckets up to this many input pixels (64 crops of 128 x 128, the default); larger
# batches, e.g. whole images, run eagerly: their kernels are big enough that launching them costs little,
# and a graph would hold their activations' memory for the life of the process.
MAX_GRAPH_PIXELS = 64 * 128 * 128


def _bucket(n: int, max_batch: int) -> int:
    """The captured batch size that holds ``n`` crops: the next power of two from :data:`MIN_BUCKET`, at most
    ``max_batch``."""
    return min(max(MIN_BUCKET, 1 << max(0, n - 1).bit_length()), max_batch)


def buckets(max_batch: int) -> list[int]:
    """Every batch size :func:`_bucket` gives for 1..``max_batch`` crops."""
    return sorted({_bucket(n, max_batch) for n in (1 << k for k in range(max_batch.bit_length() + 1))} |
                  {_bucket(max_batch, max_batch)})


def graph_buckets(max_batch: int, input_size: tuple[int, int]) -> list[int]:
    """The buckets captured as CUDA graphs: those of at most :data:`MAX_GRAPH_PIXELS` input pixels."""
    return [b for b in buckets(max_batch) if b * input_size[0] * input_size[1] <= MAX_GRAPH_PIXELS]


class TorchEncoder:
    """Embeds crops with a PyTorch :class:`encoders.models.EmbeddingNet` (the same contract as
    :class:`pipeline.encoder.OnnxEncoder`: uint8 RGB crops in, unit-norm embeddings and patch features out).

    On CUDA the network runs as CUDA graphs, one per batch size bucket (powers of two from 8 up to
    ``max_batch``, as long as a bucket holds at most :data:`MAX_GRAPH_PIXELS` input pixels; a batch is padded up
    to its bucket), all captured when the encoder is built. A frame's handful of crops is otherwise bound by the
    launch of a hundred small kernels one by one: on an H100, about 4 ms per call whatever the batch, against
    1 ms for a frame's crops as a graph (``siamstream bench encoder --device cuda``). Each new batch shape also
    costs about 2 s the first time it runs (kernel loading and selection); capturing at build time pays that
    before the stream starts instead of stalling it. Larger batches run eagerly. TF32 is off, so the features
    match the ONNX model's on the CPU to float32 rounding and banks stay interchangeable between engines.

    Args:
        net: the network; it is put in eval mode and moved to the device.
        input_size: ``(height, width)`` of the crops it takes.
        device: "auto" (CUDA when torch sees it, else CPU), "cpu" or "cuda" (fails without CUDA).
        threads: torch's CPU threads when it runs on the CPU; 0 leaves torch's default.
        max_batch: crops per forward pass; larger batches are split.
    """

    def __init__(self, net: object, input_size: tuple[int, int], device: str = "auto", threads: int = 0,
                 max_batch: int = 64) -> None:
        import threading

        import torch

        from encoders.models import EmbeddingNet, weights_sha256

        if not isinstance(net, EmbeddingNet):
            raise TypeError(f"TorchEncoder needs an encoders.models.EmbeddingNet, got {type(net).__name__}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch_device(device)
        if self.device == "cpu" and threads:
            torch.set_num_threads(threads)
        self.encoder_id = weights_sha256(net)  # before the move: the hash reads CPU tensors either way
        self.net = net.eval().to(self.device)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.max_batch = max_batch
        self.provider = f"torch-{self.device}"
        self.name = f"{type(net.backbone).__name__} (PyTorch)"
        self.metadata: dict[str, str] = {}
        self._lock = threading.Lock()  # graphs replay into shared buffers: one batch at a time
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.device == "cuda" else None
        self._graph_buckets: list[int] = []
        with self._exact(), torch.inference_mode():
            out = self.net(torch.zeros(1, 3, *self.input_size, device=self.device))
        emb, patches = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
        self.embedding_dim = int(emb.shape[1])
        self.patch_dim = int(patches.shape[1]) if patches is not None else 0
        self.patch_grid = (int(patches.shape[2]), int(patches.shape[3])) if patches is not None else (0, 0)
        if self.device == "cuda":
            start = time.perf_counter()
            self._graph_buckets = graph_buckets(max_batch, self.input_size)
            for bucket in self._graph_buckets:
                self._graph(bucket)
            torch.cuda.empty_cache()  # the warm-ups' memory; the graphs keep their own pool
            log.info("encoder on PyTorch cuda (%s): CUDA graphs for batches of %s captured in %.1f s%s",
                     torch.cuda.get_device_name(0), ", ".join(map(str, self._graph_buckets)) or "none",
                     time.perf_counter() - start,
                     "" if self._graph_buckets and self._graph_buckets[-1] == max_batch else
                     f"; larger batches (up to {max_batch}) run eagerly")
        else:
            log.info("encoder on PyTorch cpu (%d threads)", torch.get_num_threads())

    @staticmethod
    def _exact() -> AbstractContextManager[Any]:
        """cuDNN without TF32 (PyTorch allows it for convolutions by default: 3e-2 off the CPU's patch features)."""
        import torch

        cudnn = torch.backends.cudnn
        return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                           allow_tf32=False)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 NHWC on the device -> the network's outputs (scaling by 1/255 and the layout change included)."""
        y = self.net(x.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0))
        return y if isinstance(y, tuple) else (y,)

    def _graph(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]:
        import torch

        if bucket not in self._graphs:
            static_in = torch.zeros(bucket, *self.input_size, 3, dtype=torch.uint8, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with self._exact(), torch.inference_mode():
                with torch.cuda.stream(side):  # warm-up outside the capture: cuDNN picks its kernels here
                    for _ in range(2):
                        self._run(static_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    static_out = self._run(static_in)
            self._graphs[bucket] = (graph, static_in, static_out)
        return self._graphs[bucket]

    def _forward(self, chunk: np.ndarray, want_patches: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One chunk of at most ``max_batch`` uint8 crops -> embeddings, and patch features if wanted."""
        import torch

        host = torch.from_numpy(chunk)
        n = len(chunk)
        bucket = _bucket(n, self.max_batch)
        with torch.inference_mode():
            if self.device == "cuda" and bucket in self._graph_buckets:
                graph, static_in, static_out = self._graph(bucket)
                static_in[:n].copy_(host)
                graph.replay()
                outs = [t[:n] for t in static_out]
            elif self.device == "cuda":
                with self._exact():
                    outs = list(self._run(host.to(self.device)))
            else:
                outs = list(self._run(host))
            emb = outs[0].float().cpu().numpy()
            if not want_patches or len(outs) < 2:
                return emb, None
            # (B, C, h, w) -> (B, h*w, C): one row per patch, row-major over the grid
            return emb, outs[1].flatten(2).transpose(1, 2).float().cpu().numpy()

    def embed(self, crops: CropBatch, with_patches: bool = True) -> Embeddings:
        """Embed a frame's crops: ``(N, D)`` float32 rows with unit L2 norm, plus ``(N, P, C)`` patch
        features when the network has them and ``with_patches`` is set."""
        n = len(crops)
        want_patches = with_patches and self.patch_dim > 0
        h, w = self.patch_grid
        out = np.empty((n, self.embedding_dim), np.float32)
        patches = np.empty((n, h * w, self.patch_dim), np.float32) if want_patches else None
        if n and crops.images.shape[1:3] != self.input_size:
            raise ValueError(f"crops are {crops.images.shape[1:3]}, the encoder needs {self.input_size}")
        with self._lock:
            for start in range(0, n, self.max_batch):
                chunk = np.ascontiguousarray(crops.images[start:start + self.max_batch])
                emb, local = self._forward(chunk, want_patches)
                out[start:start + len(chunk)] = emb
                if patches is not None and local is not None:
                    patches[start:start + len(chunk)] = local
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return Embeddings(out, patches, (h, w) if patches is not None else (0, 0))
