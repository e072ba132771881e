"""A bank damaged in each of its fields, and index files that lie about their size: refused with one line naming the
file, the field and the fix (through the real command line, `bank info` and `run`: exit 2), and a crafted index
costs no memory it does not hold."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from pipeline import app
from pipeline.anomaly.bank import Bank, BankError
from pipeline.config import Config, replace
from pipeline.synthetic import KINDS, render_part
from tests.media import square_video

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def good_bank(tmp_path_factory: pytest.TempPathFactory, pretrained_onnx: Path) -> Path:
    """A flat patch bank of 8 synthetic good parts, made with the built-in encoder."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("bank")
    images = root / "good"
    images.mkdir()
    for i in range(8):
        part, _ = render_part(KINDS[i % len(KINDS)], None, 100 + i)
        cv2.imwrite(str(images / f"{i}.png"),
                    np.clip(part.over(np.full(part.bgr.shape, 90.0, np.float32)), 0, 255).astype(np.uint8))
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    app.bank_from_samples(app.good_samples_from_images(images, encoder, "patch"), cfg, encoder,
                          str(images)).save(root / "bank")
    return root / "bank"


def damaged(good: Path, tmp_path: Path, **fields: Any) -> Path:
    bank = tmp_path / "bank"
    shutil.copytree(good, bank)
    meta = json.loads((bank / "meta.json").read_text())
    (bank / "meta.json").write_text(json.dumps({**meta, **fields}))
    return bank


def siamstream(*args: str) -> tuple[int, str, str, int]:
    """Exit code, stdout, stderr and the peak resident memory (KiB) of the command."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "-q", *args], cwd=REPO, stdout=out,
                                stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, with its resource usage
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss


def one_line(code: int, stderr: str, *fragments: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("siamstream: error:")]
    assert len(lines) == 1, stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


BROKEN_FIELDS = [
    ({"k": 0}, "bank field k = 0 is not an integer in 1..1024"),
    ({"k": "1"}, "bank field k = '1' is not an integer"),
    ({"k": True}, "bank field k = True is not an integer"),
    ({"threshold": "abc"}, "bank field threshold = 'abc' is not a finite number"),
    ({"threshold": float("nan")}, "bank field threshold = nan is not a finite number"),
    ({"threshold": -1.0}, "bank field threshold = -1.0 is below 0, but k-NN distances never are"),
    ({"created": "x"}, "bank field created = 'x' is not a Unix time"),
    ({"updated": 1e300}, "bank field updated = 1e+300 is not a Unix time"),
    ({"sample_count": "1644"}, "bank field sample_count = '1644' is not an integer >= 1"),
    ({"embedding_dim": -3}, "bank field embedding_dim = -3 is not an integer"),
    ({"input_size": [48]}, "bank field input_size = [48] is not two integers"),
    ({"level": "pixel"}, "bank field level = 'pixel' is not one of global, patch"),
    ({"index_type": "annoy"}, "bank field index_type = 'annoy' is not one of flat"),
    ({"false_alarm_rate": 2}, "bank field false_alarm_rate = 2 is not a number in (0, 1)"),
    ({"sources": "cam1"}, "bank field sources = 'cam1' is not a list of strings"),
    ({"nprobe": 0}, "bank field nprobe = 0 is not an integer >= 1"),
    ({"k": 5000}, "bank field k = 5000"),
    ({"format": 7}, "bank format 7, this version reads 1"),
    ({"foreign_key": 1}, "not a siamstream bank of this version (unknown keys foreign_key)"),
]


@pytest.mark.parametrize(("fields", "said"), BROKEN_FIELDS, ids=[next(iter(f)) + "=" + repr(next(iter(f.values())))
                                                                 for f, _ in BROKEN_FIELDS])
def test_each_impossible_field_is_refused_naming_it(good_bank: Path, tmp_path: Path, fields: dict[str, Any],
                                                    said: str) -> None:
    bank = damaged(good_bank, tmp_path, **fields)
    with pytest.raises(BankError) as info:
        Bank.load(bank)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(bank / "meta.json")), message
    assert said in message and "rebuild the bank" in message, message


def test_bank_info_refuses_an_impossible_field_in_one_line(good_bank: Path, tmp_path: Path) -> None:
    bank = damaged(good_bank, tmp_path, k=0)
    code, _, stderr, _ = siamstream("bank", "info", str(bank))
    one_line(code, stderr, str(bank / "meta.json"), "bank field k = 0 is not an integer in 1..1024",
             "rebuild the bank")


def test_a_count_contradicting_the_index_says_both_numbers(good_bank: Path, tmp_path: Path) -> None:
    n = json.loads((good_bank / "meta.json").read_text())["sample_count"]
    bank = damaged(good_bank, tmp_path, sample_count=n + 1)
    with pytest.raises(BankError, match=f"index holds {n} vectors, metadata says {n + 1}"):
        Bank.load(bank)


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b"{\"k\": 1", b"[" * 100_000],
                         ids=["empty", "a-list", "cut-json", "deeply-nested"])
def test_meta_json_that_is_not_a_json_object(good_bank: Path, tmp_path: Path, content: bytes) -> None:
    bank = damaged(good_bank, tmp_path)
    (bank / "meta.json").write_bytes(content)
    with pytest.raises(BankError, match=r"corrupt bank metadata.*rebuild the bank"):
        Bank.load(bank)


def test_bank_info_on_random_bytes_is_one_line(good_bank: Path, tmp_path: Path) -> None:
    bank = damaged(good_bank, tmp_path)
    (bank / "meta.json").write_bytes(bytes(range(256)) * 4)
    code, _, stderr, _ = siamstream("bank", "info", str(bank))
    one_line(code, stderr, "corrupt bank metadata, not UTF-8 text", "rebuild the bank")


def test_the_run_refuses_a_corrupt_bank_before_any_frame_and_writes_its_metrics(
        good_bank: Path, tmp_path: Path, pretrained_onnx: Path) -> None:
    bank = damaged(good_bank, tmp_path, threshold=float("nan"))
    video = square_video(tmp_path / "v.avi", frames=20)
    out = tmp_path / "out"
    code, _, stderr, _ = siamstream("run", "--config", str(REPO / "config.toml"), "--source", str(video), "--out",
                                    str(out), "--set", f'encoder.model="{pretrained_onnx}"',
                                    "--set", f'anomaly.bank="{bank}"', "--set", "metrics.enabled=false")
    one_line(code, stderr, "bank field threshold = nan")
    assert (out / "metrics.prom").is_file() and not (out / "tracks.txt").exists()


def test_an_index_claiming_far_more_vectors_than_it_holds_allocates_nothing(good_bank: Path, tmp_path: Path) -> None:
    bank = damaged(good_bank, tmp_path)
    data = bytearray((bank / "index.faiss").read_bytes())
    assert data[:4] == b"IxF2"
    struct.pack_into("<Q", data, 37, 1 << 29)  # the vectors' length field: 2^29 floats (2 GiB) in a small file
    (bank / "index.faiss").write_bytes(bytes(data))
    code, _, stderr, peak_kib = siamstream("bank", "info", str(bank))
    one_line(code, stderr, str(bank / "index.faiss"), "corrupt FAISS index", "states 536870912 elements of 4 bytes",
             "rebuild the bank")
    assert 0 < peak_kib < 1024 * 1024, f"peak RSS {peak_kib} KiB"


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_a_truncated_index_is_refused(good_bank: Path, tmp_path: Path, cut: float) -> None:
    bank = damaged(good_bank, tmp_path)
    data = (bank / "index.faiss").read_bytes()
    (bank / "index.faiss").write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(BankError, match="corrupt FAISS index"):
        Bank.load(bank)


def test_bytes_after_the_index_are_refused(good_bank: Path, tmp_path: Path) -> None:
    bank = damaged(good_bank, tmp_path)
    with (bank / "index.faiss").open("ab") as fh:
        fh.write(b"\0" * 16)
    with pytest.raises(BankError, match="16 bytes follow the end of the index"):
        Bank.load(bank)
