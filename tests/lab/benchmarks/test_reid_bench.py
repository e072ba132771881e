"""`siamstream bench reid` end to end on a tiny Market-style folder: it trains, exports, scores both encoders on
the held-out identities and times them; the last line is its figures."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from pipeline.cli import main


def test_bench_reid_prints_a_table_then_its_figures(market_folder: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "reid").mkdir(parents=True)
    (data / "reid" / "market1501_train").symlink_to(market_folder)
    monkeypatch.setenv("SIAMSTREAM_DATA", str(data))
    out = tmp_path / "bench"
    rc = main(["bench", "reid", "--out", str(out), "--epochs", "1", "--threads", "1",
               "--set", "reid.stage=1", "--set", "reid.height=32", "--set", "reid.width=16", "--set", "reid.p=4",
               "--set", "reid.k=2", "--set", "reid.val_identities=4", "--set", "reid.progress_every_s=0",
               "--set", f'encoder.cache_dir="{tmp_path / "cache"}"'])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert "siamstream re-id (trained here, mirror-averaged)" in "\n".join(lines)
    assert "built-in ImageNet encoder" in "\n".join(lines)
    for key in ("rank1", "mAP", "train_seconds", "baseline_rank1", "crops_per_s", "threshold_eer"):
        assert key in figures, key
    assert 0 <= figures["rank1"] <= 1 and 0 <= figures["baseline_rank1"] <= 1
    assert figures["crops_per_s"] > 0 and figures["epochs"] == 1 and figures["validation_identities"] == 4
    assert (out / "reid.onnx").is_file() and (out / "run" / "validation" / "query").is_dir()
    assert (out / "reid.int8.onnx").is_file() and "its int8 export" in "\n".join(lines)
    assert 0 <= figures["rank1_int8"] <= 1 and 0 <= figures["mAP_int8"] <= 1 and figures["crops_per_s_int8"] > 0
    assert 0 <= figures["int8_mean_cosine_distance"] <= 0.02
    assert figures["model"] == str(out / "reid.onnx")
    meta = ort.InferenceSession(str(out / "reid.onnx"), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert meta.custom_metadata_map["siamstream.flip_average"] == "true"  # scored as `siamstream export` writes it


def test_bench_reid_without_the_data_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SIAMSTREAM_DATA", str(tmp_path))
    assert main(["bench", "reid"]) == 2
    err = capsys.readouterr().err
    assert "market1501_train" in err and "SIAMSTREAM_DATA" in err
