"""One encoder for many streams: the crops of frames ready across streams go to the model as one batch.

Each stream's thread calls :meth:`SharedEncoder.embed` as it would call its own encoder and waits for its rows. A
single worker thread owns the model (one session, one copy of the weights): it takes the first waiting request,
gathers more until every stream that uses the encoder has one waiting, ``max_batch`` crops are reached or
``max_wait_s`` has passed, runs the model once on all their crops and hands each stream its own rows. A stream has
at most one request in flight (its thread waits on it), so each stream gets its results in frame order.

The rows a crop gets do not depend on which other crops shared its batch (the model embeds each crop on its own;
the float rounding of a batched matrix product may differ in the last bits).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from prometheus_client import Histogram

from pipeline.encoder import Encoder
from pipeline.types import CropBatch, Embeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Request:
    crops: CropBatch
    with_patches: bool
    future: Future[Embeddings]


_CLOSE = object()


class BatchingEncoder:
    """Owns ``encoder`` in a worker thread and batches the requests of its clients (:meth:`client`).

    Args:
        encoder: the model; only the worker thread calls it.
        max_batch: crops gathered for one call at most (a single request larger than this goes alone; the encoder
            splits it into its own ``max_batch`` chunks).
        max_wait_s: how long the first request of a batch may wait for others.
        batch_crops, batch_frames: histograms of crops and of requests (frames) per call, when given.
    """

    def __init__(self, encoder: Encoder, max_batch: int = 64, max_wait_s: float = 0.002,
                 batch_crops: Histogram | None = None, batch_frames: Histogram | None = None) -> None:
        if max_batch < 1 or not max_wait_s >= 0:
            raise ValueError(f"BatchingEncoder: max_batch >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._batch_crops = batch_crops
        self._batch_frames = batch_frames
        self._queue: queue.Queue[object] = queue.Queue()
        self._clients = 0
        self._lock = threading.Lock()
        self._closed = False
        self.calls = 0
        self.crops = 0
        self._thread = threading.Thread(target=self._work, name=f"encoder-{encoder.name}", daemon=True)
        self._thread.start()

    def client(self) -> SharedEncoder:
        """An :class:`~pipeline.encoder.Encoder` for one stream; :meth:`SharedEncoder.close` it when the stream
        ends (the worker then stops waiting for its crops)."""
        with self._lock:
            self._clients += 1
        return SharedEncoder(self)

    def _release(self) -> None:
        with self._lock:
            self._clients -= 1

    def submit(self, crops: CropBatch, with_patches: bool) -> Future[Embeddings]:
        future: Future[Embeddings] = Future()
        if self._closed:
            future.set_exception(RuntimeError("the shared encoder is closed"))
            return future
        self._queue.put(_Request(crops, with_patches, future))
        return future

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, crops = [first], len(first.crops)
        deadline = time.perf_counter() + self.max_wait_s
        while crops < self.max_batch and len(batch) < max(self._clients, 1):
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSE:
                return batch, True
            assert isinstance(item, _Request)
            batch.append(item)
            crops += len(item.crops)
        return batch, False

    def _work(self) -> None:
        closing = False
        while not closing:
            item = self._queue.get()
            if item is _CLOSE:
                break
            assert isinstance(item, _Request)
            batch, closing = self._gather(item)
            self._run(batch)
        # Requests that came after close: refused, not left waiting.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request):
                item.future.set_exception(RuntimeError("the shared encoder is closed"))

    def _run(self, batch: list[_Request]) -> None:
        sizes = [len(r.crops) for r in batch]
        with_patches = any(r.with_patches for r in batch)
        try:
            if len(batch) == 1:
                out = self.encoder.embed(batch[0].crops, with_patches=with_patches)
            else:
                crops = CropBatch(np.concatenate([r.crops.images for r in batch]),
                                  np.concatenate([r.crops.xyxy for r in batch]))
                out = self.encoder.embed(crops, with_patches=with_patches)
        except BaseException as exc:  # every waiting stream gets the error (a model fault is everyone's)
            for r in batch:
                r.future.set_exception(exc)
            return
        self.calls += 1
        self.crops += sum(sizes)
        if self._batch_crops is not None:
            self._batch_crops.observe(sum(sizes))
        if self._batch_frames is not None:
            self._batch_frames.observe(len(batch))
        start = 0
        for r, n in zip(batch, sizes, strict=True):
            rows = slice(start, start + n)
            if len(batch) == 1:
                r.future.set_result(out)
            else:
                patches = out.patches[rows] if out.patches is not None and r.with_patches else None
                r.future.set_result(Embeddings(out.vectors[rows], patches, out.grid if patches is not None else (0, 0)))
            start += n

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the requests already waiting, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_CLOSE)
        self._thread.join(timeout_s)


class SharedEncoder:
    """One stream's view of a :class:`BatchingEncoder`: the :class:`~pipeline.encoder.Encoder` protocol, its
    ``embed`` answered from a shared batch."""

    def __init__(self, owner: BatchingEncoder) -> None:
        self._owner = owner
        enc = owner.encoder
        self.input_size = enc.input_size
        self.embedding_dim = enc.embedding_dim
        self.patch_dim = enc.patch_dim
        self.patch_grid = enc.patch_grid
        self.encoder_id = enc.encoder_id
        self.provider = enc.provider
        self.name = enc.name
        self.metadata = enc.metadata
        self.path = getattr(enc, "path", "")
        self._open = True

    def embed(self, crops: CropBatch, with_patches: bool = True) -> Embeddings:
        return self._owner.submit(crops, with_patches).result()

    def close(self) -> None:
        """This stream needs no more crops embedded (idempotent)."""
        if self._open:
            self._open = False
            self._owner._release()
