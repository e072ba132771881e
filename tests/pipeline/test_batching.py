"""One real encoder shared by several streams' threads: batched calls, each stream's own rows, in order."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.batching import BatchingEncoder
from pipeline.encoder import OnnxEncoder
from pipeline.types import CropBatch, Embeddings


class Recording:
    """The real encoder, with the size of every call it gets recorded."""

    def __init__(self, encoder: OnnxEncoder, fail: bool = False) -> None:
        self._enc = encoder
        self.calls: list[int] = []
        self.fail = fail

    def __getattr__(self, name: str) -> object:
        return getattr(self._enc, name)

    def embed(self, crops: CropBatch, with_patches: bool = True) -> Embeddings:
        self.calls.append(len(crops))
        if self.fail:
            raise RuntimeError("the model produced NaN")
        return self._enc.embed(crops, with_patches)


def _crops(rng: np.random.Generator, n: int) -> CropBatch:
    return CropBatch(rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
                     np.tile(np.array([[0, 0, 128, 128]], np.float32), (n, 1)))


@pytest.fixture(scope="module")
def encoder(pretrained_onnx: Path) -> OnnxEncoder:
    return OnnxEncoder(pretrained_onnx, device="cpu", threads=1)


def test_streams_get_their_own_rows_in_order_from_shared_calls(encoder: OnnxEncoder) -> None:
    rec = Recording(encoder)
    shared = BatchingEncoder(rec, max_batch=64, max_wait_s=0.05)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    streams = 4
    inputs = [[_crops(rng, int(rng.integers(0, 5))) for _ in range(6)] for _ in range(streams)]
    got: list[list[Embeddings]] = [[] for _ in range(streams)]
    barrier = threading.Barrier(streams)

    def stream(i: int) -> None:
        client = shared.client()
        barrier.wait()
        for j, crops in enumerate(inputs[i]):
            got[i].append(client.embed(crops, with_patches=j % 2 == 0))
        client.close()

    clients = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    shared.close()
    # fewer model calls than frames: frames of several streams went together
    assert len(rec.calls) < streams * 6 and shared.calls == len(rec.calls)
    assert sum(rec.calls) == sum(len(c) for per in inputs for c in per) == shared.crops
    for i in range(streams):
        for j, (crops, emb) in enumerate(zip(inputs[i], got[i], strict=True)):
            alone = encoder.embed(crops, with_patches=j % 2 == 0)
            assert emb.vectors.shape == alone.vectors.shape
            np.testing.assert_allclose(emb.vectors, alone.vectors, atol=1e-5)
            if j % 2 == 0:
                assert emb.patches is not None and alone.patches is not None and emb.grid == alone.grid
                np.testing.assert_allclose(emb.patches, alone.patches, atol=1e-4)
            else:
                assert emb.patches is None and emb.grid == (0, 0)


def test_one_stream_alone_does_not_wait_for_others(encoder: OnnxEncoder) -> None:
    rec = Recording(encoder)
    shared = BatchingEncoder(rec, max_batch=64, max_wait_s=30.0)  # type: ignore[arg-type]
    client = shared.client()
    emb = client.embed(_crops(np.random.default_rng(1), 3))  # would hang for 30 s if it waited for company
    assert len(emb) == 3 and rec.calls == [3]
    client.close()
    shared.close()


def test_a_model_error_reaches_every_waiting_stream(encoder: OnnxEncoder) -> None:
    shared = BatchingEncoder(Recording(encoder, fail=True), max_batch=64, max_wait_s=0.01)  # type: ignore[arg-type]
    client = shared.client()
    with pytest.raises(RuntimeError, match="NaN"):
        client.embed(_crops(np.random.default_rng(2), 2))
    shared.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.embed(_crops(np.random.default_rng(2), 1))


def test_the_client_speaks_for_the_encoder(encoder: OnnxEncoder) -> None:
    shared = BatchingEncoder(encoder, max_batch=8, max_wait_s=0.0)
    client = shared.client()
    assert (client.input_size, client.embedding_dim, client.patch_grid, client.encoder_id) == (
        encoder.input_size, encoder.embedding_dim, encoder.patch_grid, encoder.encoder_id)
    client.close()
    shared.close()
