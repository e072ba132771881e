"""int8 export of a re-identification encoder: calibrated on training identities only, checked against float32,
and refused with one line where it cannot be faithful."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from encoders.quantize import QuantizeError, calibration_paths, int8_path, quantize_int8, validation_files
from encoders.reid_data import ReidSet
from encoders.reid_train import read_reid_data
from pipeline.cli import main
from pipeline.encoder import OnnxEncoder
from pipeline.types import CropBatch


def _embed(model: Path, images: np.ndarray) -> np.ndarray:
    enc = OnnxEncoder(model, device="cpu", threads=1)
    h, w = enc.input_size
    return enc.embed(CropBatch(images, np.tile(np.array([0, 0, w, h], np.float32), (len(images), 1))),
                     with_patches=False).vectors


def test_calibration_leaves_out_every_identity_with_a_held_out_image(tmp_path: Path) -> None:
    paths = tuple(tmp_path / f"{i}.png" for i in range(8))
    data = ReidSet(paths, ("s/a", "s/a", "s/b", "s/b", "s/c", "s/c", "s/d", "s/d"), np.zeros(8, np.int64))
    picked = calibration_paths(data, {paths[2].resolve()}, count=100)
    assert sorted(picked) == sorted(set(paths) - {paths[2], paths[3]})
    assert calibration_paths(data, set(), count=3, seed=1) == calibration_paths(data, set(), count=3, seed=1)
    assert len(calibration_paths(data, set(), count=3)) == 3


def test_export_int8_writes_a_quantised_model_close_to_float32(tiny_run: Path, market_folder: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reid.onnx"
    assert main(["export", str(tiny_run), "--out", str(out), "--int8", "--data", str(market_folder)]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    q = int8_path(out)
    assert figures["int8"] == str(q) and q.name == "reid.int8.onnx"
    assert 0 <= figures["int8_mean_cosine_distance"] <= figures["int8_max_cosine_distance"]
    graph = onnx.load(str(q))
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    meta = {p.key: p.value for p in graph.metadata_props}
    fp32 = OnnxEncoder(out, device="cpu")
    assert meta["siamstream.precision"] == "int8" and meta["siamstream.task"] == "reid"
    assert meta["siamstream.input_size"] == "32x16"
    assert OnnxEncoder(q, device="cpu").encoder_id != fp32.encoder_id  # banks and galleries never mix the two
    # calibrated on training identities only: the held-out ones are still unseen, and they embed alike
    held_out = sorted(p for p in validation_files(tiny_run))
    assert held_out
    calib = calibration_paths(read_reid_data([market_folder]), validation_files(tiny_run))
    assert not {p.resolve() for p in calib} & set(held_out)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 16, 3), dtype=np.uint8)
    cos = np.sum(_embed(out, images) * _embed(q, images), axis=1)
    assert float(np.mean(1 - cos)) < 0.05


def test_a_disagreeing_int8_model_is_refused_and_nothing_written(tiny_run: Path, market_folder: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "reid.onnx"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    images = calibration_paths(read_reid_data([market_folder]), validation_files(tiny_run))
    with pytest.raises(QuantizeError, match="cosine distance"):
        quantize_int8(out, tmp_path / "q.onnx", images, tolerance=-1.0)
    assert not (tmp_path / "q.onnx").exists() and not list(tmp_path.glob(".int8-*"))
    with pytest.raises(QuantizeError, match="at least"):
        quantize_int8(out, tmp_path / "q.onnx", images[:10])


def test_export_int8_errors_are_one_line(tiny_run: Path, market_folder: Path, tmp_path: Path, pretrained_onnx: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m.onnx"), "--int8"]) == 2
    assert "--int8 needs --data" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m.onnx"), "--data", str(market_folder)]) == 2
    assert "add --int8" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m.onnx"), "--int8", "--data",
                 str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()  # a wrong --data fails before the float32 model is written
    with pytest.raises(QuantizeError, match="re-identification encoders"):
        quantize_int8(pretrained_onnx, tmp_path / "q.onnx", [])
