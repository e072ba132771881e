"""The PyTorch encoder engine against the ONNX Runtime one, on the real built-in network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoders.export import ensure_pretrained_onnx
from encoders.models import pretrained_lite0
from pipeline import app
from pipeline.config import ConfigError, EncoderConfig
from pipeline.encoder import EncoderContractError, OnnxEncoder
from pipeline.encoder_torch import TorchEncoder
from pipeline.types import CropBatch

SIZE = 64  # small crops keep the test quick; the network is the built-in one at any size


def crops(n: int, seed: int = 0) -> CropBatch:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    return CropBatch(imgs, np.tile(np.array([[0, 0, SIZE, SIZE]], np.float32), (n, 1)))


@pytest.fixture(scope="module")
def onnx_patch_model(encoder_cache: Path) -> Path:
    return ensure_pretrained_onnx(encoder_cache, stage=5, pooling="gem", input_size=SIZE, patch_stage=4)


def torch_engine(device: str = "cpu", max_batch: int = 64) -> TorchEncoder:
    net = pretrained_lite0(stage=5, pooling="gem", patch_stage=4)
    return TorchEncoder(net, (SIZE, SIZE), device=device, threads=1, max_batch=max_batch)


def test_torch_engine_matches_the_onnx_export(onnx_patch_model: Path) -> None:
    ort = OnnxEncoder(onnx_patch_model, device="cpu", threads=1)
    engine = torch_engine(max_batch=2)  # 5 crops in batches of 2, 2 and 1
    assert engine.encoder_id == ort.encoder_id  # a bank built by one engine is accepted by the other
    assert (engine.input_size, engine.embedding_dim, engine.patch_dim, engine.patch_grid) == \
        (ort.input_size, ort.embedding_dim, ort.patch_dim, ort.patch_grid)
    assert engine.provider == "torch-cpu"
    batch = crops(5)
    a, b = engine.embed(batch), ort.embed(batch)
    assert a.patches is not None and b.patches is not None and a.grid == b.grid == (4, 4)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-4)
    np.testing.assert_allclose(a.patches, b.patches, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    assert engine.embed(batch, with_patches=False).patches is None
    assert engine._forward(batch.images[:2], want_patches=False)[1] is None  # not even copied out
    empty = engine.embed(CropBatch(np.zeros((0, SIZE, SIZE, 3), np.uint8), np.zeros((0, 4), np.float32)))
    assert empty.vectors.shape == (0, engine.embedding_dim)


def test_torch_engine_rejects_crops_of_another_size() -> None:
    engine = torch_engine()
    wrong = CropBatch(np.zeros((1, SIZE + 8, SIZE, 3), np.uint8), np.array([[0, 0, SIZE, SIZE + 8]], np.float32))
    with pytest.raises(ValueError, match="the encoder needs"):
        engine.embed(wrong)


def test_engine_torch_with_a_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="engine = 'onnxruntime'"):  # however the section is built
        EncoderConfig(engine="torch", model=str(tmp_path / "mine.onnx"), cache_dir=str(tmp_path))


def test_build_encoder_runs_the_builtin_network_in_torch(tmp_path: Path) -> None:
    cfg = EncoderConfig(engine="torch", device="cpu", input_size=SIZE, cache_dir=str(tmp_path))
    engine = app.build_encoder(cfg, size=(SIZE, SIZE + 32))  # whole images of another shape, as `bank build`
    assert isinstance(engine, TorchEncoder) and engine.input_size == (SIZE, SIZE + 32)
    assert engine.patch_grid == (SIZE // 16, (SIZE + 32) // 16)  # stage 4 has stride 16
    assert not list(tmp_path.iterdir())  # nothing exported: the torch engine needs no ONNX file


def test_cuda_without_cuda_names_the_fix() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    with pytest.raises(EncoderContractError, match="device = 'cpu'"):
        torch_engine(device="cuda")
    assert torch_engine(device="auto").provider == "torch-cpu"


def test_batches_are_padded_to_power_of_two_buckets() -> None:
    from pipeline.encoder_torch import _bucket, buckets

    assert [_bucket(n, 64) for n in (1, 2, 3, 5, 8, 9, 33, 64)] == [8, 8, 8, 8, 8, 16, 64, 64]
    assert [_bucket(n, 48) for n in (17, 33, 48)] == [32, 48, 48]  # max_batch itself is the last bucket
    assert buckets(64) == [8, 16, 32, 64] and buckets(48) == [8, 16, 32, 48] and buckets(4) == [4]
    assert buckets(1) == [1]


def test_only_batches_of_crops_are_captured_as_graphs() -> None:
    from pipeline.encoder_torch import graph_buckets

    assert graph_buckets(64, (128, 128)) == [8, 16, 32, 64]  # the default crops: every bucket
    assert graph_buckets(4096, (128, 128)) == [8, 16, 32, 64]  # larger batches run eagerly
    assert graph_buckets(64, (420, 560)) == []  # whole tire images at 560x420: eagerly, no graph memory held
    assert graph_buckets(64, (224, 224)) == [8, 16]


@pytest.mark.gpu
def test_torch_engine_on_cuda_matches_cpu() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch sees none)")
    gpu, cpu = torch_engine(device="cuda", max_batch=16), torch_engine(device="cpu")
    assert gpu.provider == "torch-cuda" and gpu.encoder_id == cpu.encoder_id
    assert sorted(gpu._graphs) == [8, 16]  # captured when built
    for n in (19, 1, 9):  # 16 + 3 padded to 8; 1 padded to 8; 9 padded to 16
        batch = crops(n, seed=n)
        a, b = gpu.embed(batch), cpu.embed(batch)
        assert a.patches is not None and b.patches is not None
        # TF32 off: the same float32 features up to summation order, as ONNX Runtime's on the CPU
        np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-4)
        np.testing.assert_allclose(a.patches, b.patches, atol=2e-4)
    assert sorted(gpu._graphs) == [8, 16]
    # Images too large for a graph bucket run eagerly, with the same numerics.
    big_gpu = TorchEncoder(pretrained_lite0(stage=5, pooling="gem", patch_stage=4), (512, 512), device="cuda",
                           max_batch=8)
    big_cpu = TorchEncoder(pretrained_lite0(stage=5, pooling="gem", patch_stage=4), (512, 512), device="cpu",
                           threads=1)
    assert not big_gpu._graphs
    rng = np.random.default_rng(3)
    images = CropBatch(rng.integers(0, 256, (3, 512, 512, 3), dtype=np.uint8),
                       np.tile(np.array([[0, 0, 512, 512]], np.float32), (3, 1)))
    a, b = big_gpu.embed(images), big_cpu.embed(images)
    assert a.patches is not None and b.patches is not None
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-4)
    np.testing.assert_allclose(a.patches, b.patches, atol=2e-4)
    assert big_gpu.embed(images, with_patches=False).patches is None


def test_config_rejects_engine_torch_with_a_model_file(tmp_path: Path) -> None:
    from pipeline.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('[encoder]\nengine = "torch"\nmodel = "mine.onnx"\n')
    with pytest.raises(ConfigError, match=r"\[encoder\] engine = 'torch' runs the built-in encoder"):
        load_config(path)
    assert load_config(path, ['encoder.engine="onnxruntime"']).encoder.model == "mine.onnx"
