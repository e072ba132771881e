"""Bad input through the real command line: one clear line on stderr, no traceback, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[2]


def siamstream(*args: str, cwd: Path = REPO, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("siamstream: error:")]
    assert len(err) == 1, proc.stderr
    for f in fragments:
        assert f in err[0], err[0]


def test_config_check_ok_and_bad(tmp_path: Path) -> None:
    ok = siamstream("config", "check", str(REPO / "config.toml"))
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[tracker]\nmin_hits = 'x'\n")
    assert_clean_error(siamstream("config", "check", str(bad)), str(bad), "min_hits", "expected an integer")
    assert_clean_error(siamstream("config", "check", str(REPO / "config.toml"), "--set", "bank.k=0"),
                       "[bank] k", "allowed range")
    assert_clean_error(siamstream("config", "check", str(REPO / "config.toml"), "--set", "anomaly.k=256"),
                       "[anomaly] k is now [bank] k", "rebuild the bank")
    assert_clean_error(siamstream("config", "check", str(REPO / "config.toml"), "--set", "reid.stage=3",
                                  "--set", "reid.freeze_stages=3"), "[reid] freeze_stages = 3", "0 .. stage - 1")


def test_run_missing_video(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    assert_clean_error(siamstream("run", "--config", str(REPO / "config.toml"), "--source", str(missing),
                                  "--out", str(tmp_path / "out")), str(missing), "not found")


def test_run_corrupt_video(tmp_path: Path) -> None:
    fake = tmp_path / "broken.avi"
    fake.write_bytes(b"RIFF" + os.urandom(4096))
    assert_clean_error(siamstream("run", "--config", str(REPO / "config.toml"), "--source", str(fake),
                                  "--out", str(tmp_path / "out")), str(fake))


def test_run_wrong_shape_model(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 64])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "wrong.onnx"
    onnx.save(model, str(path))
    video = tmp_path / "v.avi"
    import cv2

    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        w.write(np.full((48, 64, 3), i * 10, np.uint8))
    w.release()
    assert_clean_error(siamstream("run", "--config", str(REPO / "config.toml"), "--source", str(video),
                                  "--out", str(tmp_path / "out"), "--set", f"encoder.model=\"{path}\""),
                       str(path), "rank 3")


def test_run_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    video = tmp_path / "v.avi"
    import cv2

    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        w.write(np.full((48, 64, 3), i * 10, np.uint8))
    w.release()
    proc = siamstream("run", "--config", str(REPO / "config.toml"), "--source", str(video),
                      "--out", str(blocker / "out"), "--set", "metrics.enabled=false")
    assert_clean_error(proc, str(blocker))


def test_run_bank_missing(tmp_path: Path, pretrained_onnx: Path) -> None:
    video = tmp_path / "v.avi"
    import cv2

    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    w.write(np.zeros((48, 64, 3), np.uint8))
    w.release()
    proc = siamstream("run", "--config", str(REPO / "config.toml"), "--source", str(video),
                      "--out", str(tmp_path / "out"), "--set", f"encoder.model=\"{pretrained_onnx}\"",
                      "--set", f"anomaly.bank=\"{tmp_path / 'nobank'}\"", "--set", "metrics.enabled=false")
    assert_clean_error(proc, "bank not found", "siamstream bank build")


@pytest.mark.parametrize("args", [["run"], ["bank", "build"], ["train"], ["export"], ["nonsense"]])
def test_usage_errors(args: list[str]) -> None:
    proc = siamstream(*args)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr


def test_bank_build_errors_before_the_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(siamstream("bank", "build", "--source", str(tmp_path), "--out", str(blocker / "bank")),
                       str(blocker))
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    assert_clean_error(siamstream("bank", "build", "--source", str(tmp_path), "--out", str(folder)),
                       "not a bank")
    assert (folder / "notes.txt").read_text() == "keep"


def test_bank_build_from_one_image_is_a_clear_error(tmp_path: Path, pretrained_onnx: Path) -> None:
    import cv2

    good = tmp_path / "good"
    good.mkdir()
    cv2.imwrite(str(good / "a.png"), np.full((64, 64, 3), 120, np.uint8))
    proc = siamstream("bank", "build", "--source", str(good), "--out", str(tmp_path / "bank"),
                      "--set", f'encoder.model="{pretrained_onnx}"')
    assert_clean_error(proc, "only one part or image")


def test_unwritable_encoder_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = siamstream("bank", "build", "--source", str(tmp_path), "--out", str(tmp_path / "bank"),
                      "--set", f'encoder.cache_dir="{blocker / "cache"}"')
    assert_clean_error(proc, "cache_dir")


def test_sigterm_while_live_source_is_down_exits_and_flushes(tmp_path: Path, pretrained_onnx: Path) -> None:
    import signal
    import socket
    import time

    with socket.socket() as s:  # a loopback port with nothing listening: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(REPO / "config.toml"), "--source",
         f"rtsp://127.0.0.1:{port}/line", "--out", str(out), "--set", f'encoder.model="{pretrained_onnx}"',
         "--set", "metrics.enabled=false", "--set", "source.reconnect_initial_s=0.1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120  # a busy machine may take a while to load the models
    while time.monotonic() < deadline:  # until the source is down and retrying with backoff
        line = proc.stderr.readline()
        seen.append(line)
        if "retrying" in line or not line:
            break
    assert proc.poll() is None, "".join(seen)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    stderr = "".join(seen) + stderr
    assert proc.returncode == 130, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["frames"] == 0
    assert (out / "tracks.txt").exists() and (out / "events.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------
# train and export

TINY_TRAIN = ("--set", "train.input_size=28", "--set", "train.embedding_dim=16", "--set", "train.epochs=2",
              "--set", "train.batches_per_epoch=3", "--set", "train.p=4", "--set", "train.k=3",
              "--set", 'train.device="cpu"')


def test_train_then_export_end_to_end(tmp_path: Path, shapes_dataset: Path) -> None:
    from pipeline.encoder import OnnxEncoder
    from pipeline.types import CropBatch

    run = tmp_path / "run"
    proc = siamstream("train", "--data", str(shapes_dataset), "--out", str(run), *TINY_TRAIN)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["out"] == str(run) and summary["train_seconds"] > 0
    assert np.isfinite(summary["final_loss"])
    assert (run / "model.pt").is_file() and len((run / "log.csv").read_text().splitlines()) == 3

    onnx_path = tmp_path / "trained.onnx"
    proc = siamstream("export", str(run), "--out", str(onnx_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["out"] == str(onnx_path) and report["parity_max_abs"] <= 1e-4
    assert report["embedding_dim"] == 16 and report["input_size"] == 28

    encoder = OnnxEncoder(onnx_path, device="cpu")
    assert encoder.input_size == (28, 28) and encoder.embedding_dim == 16
    crops = CropBatch(np.zeros((2, 28, 28, 3), np.uint8), np.array([[0, 0, 28, 28]] * 2, np.float32))
    assert encoder.embed(crops).vectors.shape == (2, 16)

    # The same run, resumed with another learning rate, is refused before any work.
    assert_clean_error(siamstream("train", "--data", str(shapes_dataset), "--out", str(run), "--resume",
                                  *TINY_TRAIN, "--set", "train.lr=0.01"), "cannot resume", "lr: 0.001 -> 0.01")


def test_train_errors_are_one_line(tmp_path: Path) -> None:
    import cv2

    missing = tmp_path / "nope"
    assert_clean_error(siamstream("train", "--data", str(missing), "--out", str(tmp_path / "a")), str(missing),
                       "not found")
    data = tmp_path / "data"
    for name, n in (("a", 2), ("b", 1)):
        (data / name).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(data / name / f"{i}.png"), np.zeros((8, 8), np.uint8))
    assert_clean_error(siamstream("train", "--data", str(data), "--out", str(tmp_path / "b"), "--set", "train.p=2"),
                       "class 'b'", "1 image(s)")
    assert_clean_error(siamstream("export", str(tmp_path / "b")), "no train_config.json")
    assert_clean_error(siamstream("export", str(tmp_path / "nope")), "nope")
    assert not (tmp_path / "nope").exists()  # no folder made for a run that is not there


def _shape_runs(shapes_dataset: Path, root: Path) -> Path:
    """Two 6-way one-shot runs in Lake's layout from the shapes data set: support image 0 of each shape,
    queries image 1 (run01) and image 2 (run02)."""
    import shutil

    classes = sorted(d.name for d in shapes_dataset.iterdir() if d.is_dir())
    for r, q in ((1, 1), (2, 2)):
        run = root / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        lines = []
        for c, name in enumerate(classes):
            shutil.copy(shapes_dataset / name / "0.png", run / "training" / f"class{c + 1:02d}.png")
            shutil.copy(shapes_dataset / name / f"{q}.png", run / "test" / f"item{c + 1:02d}.png")
            lines.append(f"run{r:02d}/test/item{c + 1:02d}.png run{r:02d}/training/class{c + 1:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def test_eval_oneshot_and_verify_with_a_trained_model(tmp_path: Path, shapes_dataset: Path) -> None:
    run = tmp_path / "run"
    assert siamstream("train", "--data", str(shapes_dataset), "--out", str(run), *TINY_TRAIN).returncode == 0
    model = tmp_path / "m.onnx"
    assert siamstream("export", str(run), "--out", str(model)).returncode == 0

    proc = siamstream("eval", "oneshot", "--model", str(model), "--runs", str(_shape_runs(shapes_dataset,
                                                                                          tmp_path / "runs")))
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["runs"] == 2 and figures["trials"] == 12
    assert 0.0 <= figures["accuracy_ci95"][0] <= figures["accuracy"] <= figures["accuracy_ci95"][1] <= 1.0
    assert "run01" in proc.stdout and "run02" in proc.stdout

    proc = siamstream("eval", "verify", "--model", str(model), "--data", str(shapes_dataset), "--out",
                      str(tmp_path / "verify"))
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["genuine_pairs"] == 6 * 15 and figures["impostor_pairs"] == 36 * 35 // 2 - 90
    assert 0.0 <= figures["eer"] <= 1.0 and 0.0 <= figures["auc"] <= 1.0
    assert (tmp_path / "verify" / "roc.png").stat().st_size > 1000


def test_eval_errors_are_one_line(tmp_path: Path, shapes_dataset: Path, pretrained_onnx: Path) -> None:
    assert_clean_error(siamstream("eval", "oneshot", "--model", str(pretrained_onnx), "--runs",
                                  str(tmp_path / "none")), "not found")
    assert_clean_error(siamstream("eval", "verify", "--model", str(tmp_path / "none.onnx"), "--data",
                                  str(shapes_dataset)), "encoder model not found")
    one = tmp_path / "one"
    (one / "solo").mkdir(parents=True)
    for i in range(2):
        (one / "solo" / f"{i}.png").write_bytes((shapes_dataset / "circle" / f"{i}.png").read_bytes())
    assert_clean_error(siamstream("eval", "verify", "--model", str(pretrained_onnx), "--data", str(one)),
                       "genuine and impostor")


def test_bench_without_data_is_a_clear_error(tmp_path: Path) -> None:
    env_data = tmp_path / "nowhere"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "bench", "oneshot"], cwd=tmp_path,
                          env={**os.environ, "SIAMSTREAM_DATA": str(env_data)}, capture_output=True, text=True,
                          timeout=120)
    assert_clean_error(proc, "benchmark data not found", "SIAMSTREAM_DATA")


def test_adapt_end_to_end_and_its_errors(tmp_path: Path) -> None:
    import cv2

    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = cv2.GaussianBlur(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8), (0, 0), 1.5)
        cv2.imwrite(str(good / f"{i}.png"), img)
    out = tmp_path / "models" / "adapted.onnx"
    proc = siamstream("adapt", "--good", str(good), "--out", str(out), "--size", "64x80", "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["steps"] == 2 and figures["images"] == 3 and Path(figures["out"]) == out and out.is_file()
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["siamstream.input_size"] == "64x80"

    (tmp_path / "empty").mkdir()
    assert_clean_error(siamstream("adapt", "--good", str(tmp_path / "empty"), "--out", str(out)), "no images")
    assert_clean_error(siamstream("adapt", "--good", str(tmp_path / "nope"), "--out", str(out)), "not a folder")
    assert_clean_error(siamstream("adapt", "--good", str(good), "--out", str(out), "--steps", "0"), "steps")
    assert_clean_error(siamstream("adapt", "--good", str(good), "--out", str(out), "--size", "12x12"), "--size")
    assert_clean_error(siamstream("adapt", "--good", str(good), "--out", str(out), "--set",
                                  "encoder.patch_stage=0"), "patch_stage")


@pytest.mark.parametrize("seed", ["-1", "abc"])
def test_demo_refuses_a_bad_seed_before_any_work(seed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import build_parser

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["demo", "--seed", seed, "--out", str(tmp_path / "demo")])
    assert done.value.code == 2 and "is not a seed; give a whole number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["bench", "streams", "--streams", "1,x"], "--streams '1,x': expected whole numbers"),
    (["bench", "streams", "--streams", "0,2"], "give counts >= 1"),
    (["bench", "bank", "--sizes", "abc"], "--sizes 'abc': expected whole numbers"),
    (["bench", "bank", "--sizes", "10"], "vector counts >= 1000"),
    (["run", "--config", str(REPO / "config.toml"), "--shard", "5/3"], "0 .. 2 for 3 shards"),
    (["run", "--config", str(REPO / "config.toml"), "--shard", "0/2", "--source", "x.mp4"], "does not go with"),
])
def test_bad_stream_counts_sizes_and_shards_are_one_line_and_exit_2(args: list[str], fragment: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


@pytest.mark.parametrize("args", [["demo", "--frames", "-1"], ["bench", "encoder", "--batch", "0"],
                                  ["bench", "encoder", "--repeats", "0"],
                                  ["eval", "reid", "--model", "m.onnx", "--data", "d", "--threads", "99999"]])
def test_numbers_out_of_range_are_refused_when_parsed(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert "give a whole number" in capsys.readouterr().err.strip().splitlines()[-1]


def test_onnx_outputs_refuse_a_folder_or_another_kind_of_file(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    for out, message in ((tmp_path, "is a folder; --out names the .onnx file"),
                         (other, "--out must name an .onnx file")):
        assert_clean_error(siamstream("export", str(tmp_path / "run"), "--out", str(out)), message)
        assert_clean_error(siamstream("adapt", "--good", str(tmp_path), "--out", str(out)), message)
    assert other.read_text() == "keep me"


def test_a_manifest_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xff\xfe\x00split,is_anomaly,image\n")
    assert_clean_error(siamstream("eval", "anomaly", "--manifest", str(manifest)), "not UTF-8 text")
