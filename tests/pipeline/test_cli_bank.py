"""`siamstream bank build / add / info` through the real command line, with the built-in encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.anomaly.bank import Bank
from pipeline.synthetic import KINDS, render_part

REPO = Path(__file__).resolve().parents[2]


def siamstream(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", *args], cwd=REPO,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=timeout)


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def assert_clean_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("siamstream: error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def write_parts(folder: Path, n: int, seed: int) -> Path:
    """``n`` images of good synthetic parts (every kind in turn) on a plain grey background, PNG."""
    folder.mkdir(parents=True)
    for i in range(n):
        good, _ = render_part(KINDS[i % len(KINDS)], None, seed + i)
        image = good.over(np.full(good.bgr.shape, 90.0, np.float32))
        assert cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(image, 0, 255).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("parts")
    return write_parts(root / "first", 12, seed=100), write_parts(root / "more", 6, seed=500)


@pytest.fixture()
def builtin(pretrained_onnx: Path, encoder_cache: Path) -> tuple[str, str]:
    """``--set`` for the built-in encoder of the default config, already exported into the test cache."""
    return "--set", f'encoder.cache_dir="{encoder_cache}"'


def test_build_then_add_then_info(tmp_path: Path, parts: tuple[Path, Path], builtin: tuple[str, str]) -> None:
    first, more = parts
    bank = tmp_path / "bank"
    built = last_json(siamstream("bank", "build", "--source", str(first), "--out", str(bank), *builtin))
    assert built["bank"] == str(bank) and built["level"] == "patch"
    assert built["crops"] == 12 and built["groups"] == 12 and built["threshold"] > 0
    assert 0 < built["vectors"] < 12 * 64  # a coreset of the patch features
    meta_before = Bank.load(bank).meta

    proc = siamstream("bank", "add", str(bank), "--source", str(more), *builtin)
    added = last_json(proc)
    assert set(added) == {"bank", "added", "vectors", "crops", "threshold"}
    assert added["added"] > 0 and added["vectors"] == built["vectors"] + added["added"]
    assert added["crops"] == 12 + 6
    assert added["threshold"] == built["threshold"]
    assert f"{built['vectors']} + {added['added']} vectors from 6 good crops" in proc.stdout

    loaded = Bank.load(bank)
    m = loaded.meta
    assert len(loaded) == added["vectors"] and m.crops == 18
    assert m.sources == [str(first), str(more)]
    assert m.threshold == meta_before.threshold and m.created == meta_before.created
    assert m.updated > meta_before.updated
    assert m.coreset_coverage >= meta_before.coreset_coverage

    info = siamstream("bank", "info", str(bank))
    data = last_json(info)
    assert data == {"bank": str(bank), "vectors": len(loaded), "level": "patch", "dim": m.embedding_dim,
                    "index": "flat", "threshold": round(m.threshold, 6), "crops": 18, "cell_norm": False,
                    "encoder_id": m.encoder_id, "updated": m.updated}
    rows = dict(line.split(None, 1) for line in info.stdout.strip().splitlines()[:-1])
    assert set(rows) == {"vectors", "index", "coreset", "threshold", "k", "scores", "encoder", "sources", "created",
                         "updated"}
    assert rows["scores"] == "k-NN distance"
    assert rows["vectors"].startswith(f"{len(loaded)} (patch features of dimension {m.embedding_dim}; 18 good")
    assert rows["sources"] == f"{first}, {more}" and rows["index"] == "flat"
    assert rows["encoder"].startswith(m.encoder_id[:16])


def test_add_to_a_missing_bank(tmp_path: Path, parts: tuple[Path, Path]) -> None:
    missing = tmp_path / "nope"
    assert_clean_error(siamstream("bank", "add", str(missing), "--source", str(parts[1])),
                       str(missing), "bank not found", f"siamstream bank build --source DIR_OR_VIDEO --out {missing}")
    assert not missing.exists()
    assert_clean_error(siamstream("bank", "info", str(missing)), "bank not found")


def test_add_with_another_encoder_leaves_the_bank_alone(tmp_path: Path, parts: tuple[Path, Path],
                                                        builtin: tuple[str, str]) -> None:
    """A bank built with patch features of stage 3 (40 channels) cannot take stage-4 features (80)."""
    first, more = parts
    bank = tmp_path / "bank"
    last_json(siamstream("bank", "build", "--source", str(first), "--out", str(bank), *builtin,
                         "--set", "encoder.patch_stage=3"))
    before = (bank / "meta.json").read_bytes(), (bank / "index.faiss").read_bytes()
    dim = Bank.load(bank).meta.embedding_dim
    line = assert_clean_error(siamstream("bank", "add", str(bank), "--source", str(more), *builtin),
                              str(bank), "built with another encoder", f"dim {dim}", "siamstream bank build")
    assert "current model" in line
    assert ((bank / "meta.json").read_bytes(), (bank / "index.faiss").read_bytes()) == before
    # With the encoder it was built with, the same bank takes the samples.
    added = last_json(siamstream("bank", "add", str(bank), "--source", str(more), *builtin,
                                 "--set", "encoder.patch_stage=3"))
    assert added["crops"] == 18 and added["added"] > 0


def test_ivf_bank_round_trip(tmp_path: Path, parts: tuple[Path, Path], builtin: tuple[str, str]) -> None:
    first, more = parts
    bank = tmp_path / "bank"
    ivf = ("--set", 'bank.index="ivf-flat"')
    built = last_json(siamstream("bank", "build", "--source", str(first), "--out", str(bank), *builtin, *ivf))
    meta = Bank.load(bank).meta
    assert meta.index_type == "ivf-flat" and meta.nlist >= 1 and len(Bank.load(bank)) == built["vectors"]
    # a few dozen vectors: the automatic cell count keeps at least 39 vectors per cell
    assert meta.nlist == max(1, min(round(4 * np.sqrt(built["vectors"])), built["vectors"] // 39))
    added = last_json(siamstream("bank", "add", str(bank), "--source", str(more), *builtin))
    assert added["vectors"] == built["vectors"] + added["added"] and added["threshold"] == built["threshold"]
    loaded = Bank.load(bank)
    assert loaded.meta.index_type == "ivf-flat" and loaded.meta.nlist == meta.nlist and loaded.trained
    info = siamstream("bank", "info", str(bank))
    assert last_json(info)["index"] == "ivf-flat" and last_json(info)["vectors"] == added["vectors"]
    assert f"ivf-flat (nlist {meta.nlist}, nprobe 8)" in info.stdout

    too_many_cells = assert_clean_error(
        siamstream("bank", "build", "--source", str(first), "--out", str(tmp_path / "b2"), *builtin, *ivf,
                   "--set", "bank.nlist=5000"),
        "ivf-flat index with 5000 cells needs at least 5000 vectors", "bank] nlist", 'index = "flat"')
    assert "Traceback" not in too_many_cells and not (tmp_path / "b2").exists()


def test_cell_norm_bank_build_add_info(tmp_path: Path, parts: tuple[Path, Path], builtin: tuple[str, str]) -> None:
    first, more = parts
    bank = tmp_path / "bank"
    built = last_json(siamstream("bank", "build", "--source", str(first), "--out", str(bank), *builtin,
                                 "--set", "bank.cell_norm=true"))
    m = Bank.load(bank).meta
    assert len(m.cell_mean) == len(m.cell_scale) == m.patches_per_crop == 64  # 8x8 cells per 128 px crop
    assert min(m.cell_scale) > 0 and built["threshold"] == round(m.threshold, 6)
    added = last_json(siamstream("bank", "add", str(bank), "--source", str(more), *builtin))
    assert added["threshold"] == built["threshold"]
    assert Bank.load(bank).meta.cell_mean == m.cell_mean  # the statistics are kept (see append_samples)
    info = siamstream("bank", "info", str(bank))
    assert last_json(info)["cell_norm"] is True
    assert "k-NN distance normalised per cell (64 cells" in info.stdout

    global_level = siamstream("bank", "build", "--source", str(first), "--out", str(tmp_path / "g"), *builtin,
                              "--set", "bank.cell_norm=true", "--set", 'bank.level="global"')
    assert_clean_error(global_level, "cell normalisation needs a patch bank", "cell_norm = false")


def test_a_folder_without_images_is_named_as_such(tmp_path: Path, pretrained_onnx: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["bank", "build", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "bank"),
                 "--set", f'encoder.model="{pretrained_onnx}"']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("siamstream: error: ") and "empty: no images (png, jpg" in err[-1]
    assert not (tmp_path / "bank").exists() or not any((tmp_path / "bank").iterdir())
