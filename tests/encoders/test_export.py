"""The twin model and ONNX export: shared weights, metadata, parity enforced by the export itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from encoders.backbones import EfficientNetLiteTrunk, GeM
from encoders.export import ExportParityError, export_onnx
from encoders.models import EmbeddingNet, SiameseNet, weights_sha256


@pytest.fixture(scope="module")
def small_net() -> EmbeddingNet:
    torch.manual_seed(0)
    trunk = EfficientNetLiteTrunk(stage=3, pretrained=False)
    return EmbeddingNet(trunk, trunk.out_channels, pooling="gem", embedding_dim=16, patch_stage=2).eval()


def test_trunk_stages_and_pretrained_weights_load_offline() -> None:
    trunk = EfficientNetLiteTrunk(stage=5, pretrained=True)
    assert trunk.out_channels == 112 and trunk.stage_channels(4) == 80
    assert trunk.weights_source.endswith(".pth")
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        final, taps = trunk.forward_stages(x, (4,))
    assert final.shape == (1, 112, 8, 8) and taps[4].shape == (1, 80, 8, 8)
    random = EfficientNetLiteTrunk(stage=5, pretrained=False)
    assert weights_sha256(random) != weights_sha256(trunk)


def test_twin_shares_one_encoder(small_net: EmbeddingNet) -> None:
    twin = SiameseNet(small_net)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = twin(x, x)
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 16)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    # One set of parameters: the twin holds no copy.
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in small_net.parameters())


def test_gem_p1_is_average_pooling() -> None:
    x = torch.rand(2, 4, 3, 3) + 0.1
    gem = GeM(p=1.0)
    torch.testing.assert_close(gem(x), x.mean(dim=(2, 3)))


def test_export_writes_metadata_dynamic_batch_and_parity(small_net: EmbeddingNet, tmp_path: Path) -> None:
    report = export_onnx(small_net, tmp_path / "m.onnx", 64, backbone="test:stage3")
    assert report.parity_max_abs <= 1e-4
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["siamstream.embedding_dim"] == "16" and meta["siamstream.input_size"] == "64"
    assert meta["siamstream.weights_sha256"] == weights_sha256(small_net)
    assert meta["siamstream.patch_stage"] == "2"
    for n in (1, 5):  # dynamic batch axis
        x = np.random.default_rng(n).random((n, 3, 64, 64), dtype=np.float32)
        emb, patches = sess.run(None, {"input": x})
        with torch.no_grad():
            ref_emb, ref_patches = small_net(torch.from_numpy(x))
        np.testing.assert_allclose(emb, ref_emb.numpy(), atol=1e-4)
        np.testing.assert_allclose(patches, ref_patches.numpy(), atol=1e-4)
        assert patches.shape == (n, 24, 16, 16)


def test_export_fails_and_removes_file_when_parity_breaks(small_net: EmbeddingNet, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous model")
    with pytest.raises(ExportParityError, match="differ by") as err:
        export_onnx(small_net, path, 64, backbone="t", tolerance=-1.0)  # a tolerance nothing can meet
    assert err.value.tolerance == -1.0
    assert path.read_bytes() == b"previous model"  # the file in place is not replaced by an unfaithful export
    assert not list(tmp_path.glob("tmp*"))  # no staging leftovers


def test_two_stage_patches_on_a_non_square_input_export_with_fixed_shapes(tmp_path: Path) -> None:
    from pipeline.encoder import OnnxEncoder

    torch.manual_seed(0)
    trunk = EfficientNetLiteTrunk(stage=3, pretrained=False)
    net = EmbeddingNet(trunk, trunk.out_channels, pooling="avg", patch_stage=3, patch_detail_stage=2).eval()
    with torch.no_grad():
        _, patches = net(torch.rand(1, 3, 96, 64))
    # Stage 2 (stride 4, 24 channels) + stage 3 (stride 8, 40 channels) upsampled to the stride-4 grid.
    assert tuple(patches.shape) == (1, 24 + 40, 24, 16)
    report = export_onnx(net, tmp_path / "m.onnx", (96, 64), backbone="test")
    assert report.parity_max_abs < 1e-4 and report.metadata["siamstream.input_size"] == "96x64"
    enc = OnnxEncoder(tmp_path / "m.onnx", device="cpu")
    assert enc.input_size == (96, 64) and enc.patch_grid == (24, 16) and enc.patch_dim == 64
    with pytest.raises(ValueError, match="must come before"):
        EmbeddingNet(trunk, trunk.out_channels, patch_stage=2, patch_detail_stage=2)
