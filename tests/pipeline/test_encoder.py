"""The encoder contract, on real ONNX Runtime sessions over small models built here and the real encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.encoder import EncoderContractError, OnnxEncoder
from pipeline.types import CropBatch


def save_model(path: Path, inputs: list, outputs: list, nodes: list) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def pooled_model(path: Path, shape: list, dtype: int = TensorProto.FLOAT, out_shape: list | None = None) -> Path:
    """(N, 3, H, W) -> (N, 3) channel means: a real, checkable 3-D 'embedding'."""
    x = helper.make_tensor_value_info("x", dtype, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or ["N", 3])
    nodes = []
    src = "x"
    if dtype == TensorProto.UINT8:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        src = "xf"
    axes = [1, 2] if shape[-1] == 3 else [2, 3]
    nodes.append(helper.make_node("ReduceMean", [src, "axes"], ["y"], keepdims=0))
    graph = helper.make_graph(nodes, "g", [x], [y],
                              initializer=[helper.make_tensor("axes", TensorProto.INT64, [2], axes)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def crops(n: int, size: int, value: int | None = None) -> CropBatch:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) if value is None else \
        np.full((n, size, size, 3), value, np.uint8)
    return CropBatch(imgs, np.tile(np.array([[0, 0, size, size]], np.float32), (n, 1)))


def test_float_nchw_model_scaled_by_dtype(tmp_path: Path) -> None:
    enc = OnnxEncoder(pooled_model(tmp_path / "m.onnx", ["N", 3, 16, 16]), device="cpu")
    assert enc.input_size == (16, 16) and enc.embedding_dim == 3 and enc.contract.layout == "NCHW"
    assert enc.provider == "CPUExecutionProvider"
    # A dark image is scaled by 1/255 whatever its content: (10/255)*(1,1,1), normalised -> 1/sqrt(3) each.
    img = np.zeros((1, 16, 16, 3), np.uint8)
    img[..., 0] = 10  # R channel only
    out = enc.embed(CropBatch(img, np.array([[0, 0, 16, 16]])))
    np.testing.assert_allclose(out.vectors, [[1.0, 0.0, 0.0]], atol=1e-6)


def test_uint8_nhwc_model_gets_raw_pixels(tmp_path: Path) -> None:
    enc = OnnxEncoder(pooled_model(tmp_path / "m.onnx", ["N", 8, 8, 3], TensorProto.UINT8), device="cpu")
    assert enc.contract.layout == "NHWC" and enc.contract.dtype == np.uint8
    assert enc.embed(crops(5, 8)).vectors.shape == (5, 3)


def test_fixed_batch_model_is_chunked_and_padded(tmp_path: Path) -> None:
    enc = OnnxEncoder(pooled_model(tmp_path / "m.onnx", [2, 3, 8, 8], out_shape=[2, 3]), device="cpu")
    batch = crops(5, 8)
    together = enc.embed(batch).vectors
    alone = np.concatenate([enc.embed(CropBatch(batch.images[i:i + 1], batch.xyxy[i:i + 1])).vectors
                            for i in range(5)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "out_shape", "fragment"),
    [
        (["N", 3, 16], ["N", 3], "rank 3"),
        (["N", 4, 16, 16], ["N", 3], "no 3-channel axis"),
        (["N", 3, "H", "W"], ["N", 3], "no 3-channel axis with a fixed height and width"),
        (["N", 3, 16, 16], ["N", 3, 1], "output 'y' has shape"),
    ],
)
def test_wrong_shapes_rejected_with_clear_message(tmp_path: Path, shape: list, out_shape: list,
                                                  fragment: str) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    path = save_model(tmp_path / "bad.onnx", [x], [y], [helper.make_node("Identity", ["x"], ["y"])])
    with pytest.raises(EncoderContractError) as err:
        OnnxEncoder(path, device="cpu")
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_two_inputs_and_bad_dtype_rejected(tmp_path: Path) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    path = save_model(tmp_path / "two.onnx", [a, b], [y], [helper.make_node("Add", ["a", "b"], ["y"])])
    with pytest.raises(EncoderContractError, match="2 inputs"):
        OnnxEncoder(path, device="cpu")
    d = helper.make_tensor_value_info("d", TensorProto.DOUBLE, ["N", 3, 8, 8])
    z = helper.make_tensor_value_info("z", TensorProto.DOUBLE, ["N", 3, 8, 8])
    path = save_model(tmp_path / "dbl.onnx", [d], [z], [helper.make_node("Identity", ["d"], ["z"])])
    with pytest.raises(EncoderContractError, match="tensor\\(double\\)"):
        OnnxEncoder(path, device="cpu")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(EncoderContractError, match="not found"):
        OnnxEncoder(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(EncoderContractError, match="not a loadable ONNX model"):
        OnnxEncoder(bad)


def test_cuda_request_fails_cleanly_without_cuda(tmp_path: Path) -> None:
    from pipeline.encoder import cuda_usable

    if cuda_usable()[0]:
        pytest.skip("CUDA is usable on this machine")
    with pytest.raises(EncoderContractError, match="CUDA is not usable"):
        OnnxEncoder(pooled_model(tmp_path / "m.onnx", ["N", 3, 8, 8]), device="cuda")


def test_pretrained_encoder_contract_and_batch_invariance(pretrained_onnx: Path) -> None:
    enc = OnnxEncoder(pretrained_onnx, device="cpu", max_batch=3)
    assert enc.input_size == (128, 128) and enc.embedding_dim == 112
    assert enc.metadata["siamstream.backbone"].startswith("efficientnet-lite0")
    assert enc.encoder_id == enc.metadata["siamstream.weights_sha256"]
    batch = crops(7, 128)
    v = enc.embed(batch).vectors
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    first = enc.embed(CropBatch(batch.images[:1], batch.xyxy[:1])).vectors
    np.testing.assert_allclose(v[:1], first, atol=1e-5)
    assert enc.embed(CropBatch(np.zeros((0, 128, 128, 3), np.uint8), np.zeros((0, 4)))).vectors.shape == (0, 112)


def test_elf_needed_reads_the_dynamic_table(tmp_path: Path) -> None:
    import glob
    import shutil
    import subprocess

    import onnxruntime

    from pipeline.encoder import elf_needed

    ext = glob.glob(str(Path(onnxruntime.__file__).parent / "capi" / "onnxruntime_pybind11_state*.so"))[0]
    needed = elf_needed(ext)
    assert "libc.so.6" in needed and "libstdc++.so.6" in needed
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-d", ext], capture_output=True, text=True, check=True).stdout
        assert needed == [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    (tmp_path / "x.so").write_bytes(b"not an ELF file at all, but long enough to hold a header" * 2)
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF"):
        elf_needed(tmp_path / "x.so")
    data = Path(ext).read_bytes()
    damaged = {"cut.so": data[:100], "cut2.so": data[:4096],
               "phentsize0.so": data[:0x36] + b"\0\0" + data[0x38:]}  # e_phentsize = 0
    for name, blob in damaged.items():  # a damaged library is a ValueError (the CPU is used), never a crash
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError):
            elf_needed(tmp_path / name)


def test_cuda_libraries_checked_are_the_ones_the_cuda_provider_links() -> None:
    """The CUDA check must look for exactly the libraries this onnxruntime build loads (CUDA 13's for
    onnxruntime-gpu 1.31, curand included), or a GPU host runs the encoder on the CPU without saying why."""
    import onnxruntime

    from pipeline.encoder import cuda_libraries, elf_needed

    lib = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not lib.is_file():
        pytest.skip("this onnxruntime build has no CUDA provider library")
    checked = cuda_libraries()
    assert checked[0] == "libcuda.so.1" and set(checked) <= {*elf_needed(lib), "libcudnn.so.9"}
    if onnxruntime.__version__ == "1.31.1":  # what the project installs: CUDA 13's runtime, cuBLAS, and curand 10
        assert checked == ("libcuda.so.1", "libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10",
                           "libcudart.so.13", "libcudnn.so.9")  # not libcudart.so.12: in its strings, not linked


def test_metadata_that_cannot_be_right_is_a_contract_error(tmp_path: Path) -> None:
    path = pooled_model(tmp_path / "m.onnx", ["N", 3, 16, 16])
    for key, value, said in (("siamstream.embedding_dim", "abc", "embedding_dim='abc'"),
                             ("siamstream.embedding_dim", "7", "embedding_dim='7' but the output has D=3"),
                             ("siamstream.weights_sha256", "not-a-hash", "is not a SHA-256")):
        model = onnx.load(str(path))
        helper.set_model_props(model, {key: value})
        onnx.save(model, str(tmp_path / "meta.onnx"))
        with pytest.raises(EncoderContractError, match=f"meta.onnx: metadata .*{said}.*re-export"):
            OnnxEncoder(tmp_path / "meta.onnx", device="cpu")


def test_an_encoder_that_outputs_nan_is_named_and_nothing_is_returned(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             helper.make_node("Neg", ["m"], ["n"]), helper.make_node("Sqrt", ["n"], ["y"])]  # sqrt(-mean): NaN
    graph = helper.make_graph(nodes, "g", [x], [y],
                              initializer=[helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "nan.onnx"))
    enc = OnnxEncoder(tmp_path / "nan.onnx", device="cpu")
    assert enc.embed(crops(2, 8, value=0)).vectors.shape == (2, 3)  # black crops: sqrt(-0) = 0, finite
    with pytest.raises(EncoderContractError, match=r"nan.onnx: the encoder output NaN or infinite values for 4 of "
                                                   r"4 crops; the model is broken"):
        enc.embed(crops(4, 8))


def test_a_damaged_cached_built_in_encoder_is_built_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from encoders.model_cache import default_model_path
    from pipeline import app
    from pipeline.config import EncoderConfig

    cfg = EncoderConfig(cache_dir=str(tmp_path), input_size=64)
    path = default_model_path(tmp_path, cfg.stage, cfg.pooling, cfg.input_size, cfg.patch_stage,
                              cfg.patch_detail_stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x08\x07 half of a model")  # what a copy cut short leaves
    encoder = app.build_encoder(cfg)
    assert isinstance(encoder, OnnxEncoder) and encoder.path == path and encoder.input_size == (64, 64)
    assert "cached built-in encoder cannot be used" in caplog.text
    # A device that is not there is not a damaged cache: the good file stays.
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        built = path.stat().st_mtime_ns
        with pytest.raises(EncoderContractError, match="cuda"):
            app.build_encoder(EncoderConfig(cache_dir=str(tmp_path), input_size=64, device="cuda"))
        assert path.stat().st_mtime_ns == built


def test_sessions_do_not_spin_wait_between_runs(tmp_path: Path) -> None:
    # ONNX Runtime's pool threads would otherwise busy-wait after each run, taking the cores the other stages need
    enc = OnnxEncoder(pooled_model(tmp_path / "m.onnx", ["N", 3, 16, 16]), device="cpu", threads=2)
    options = enc.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
