"""Re-identification training end to end on a tiny synthetic Market folder: the run, its held-out validation,
resumption, export at the person shape and `eval reid` agreeing with the training's own validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from encoders.export import export_run
from encoders.reid_train import build_reid_model, load_reid_run, train_reid
from encoders.train import TrainError
from pipeline.cli import main
from tests.reid_runs import TINY_REID

TINY = TINY_REID


def test_run_holds_out_identities_and_validates(tiny_run: Path) -> None:
    rows = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["rank1"] <= 1 and 0 < r["mAP"] <= 1 for r in rows)
    assert len(list((tiny_run / "validation" / "query").iterdir())) == 4 * 3
    model, cfg = load_reid_run(tiny_run)
    assert cfg == TINY and model.neck == ("bn" if TINY.id_loss else "linear") and not model.training


def test_bn_neck_is_the_exported_embedding() -> None:
    model = build_reid_model(replace(TINY, stage=1, id_loss=True)).eval()  # the BNNeck of the identity recipe
    x = torch.rand(3, 3, 32, 16)
    with torch.no_grad():
        emb = model(x)
        manual = torch.nn.functional.normalize(model.head(model.pooled(x)), dim=1)
    assert isinstance(emb, torch.Tensor)
    torch.testing.assert_close(emb, manual)
    assert not model.head.bias.requires_grad  # type: ignore[union-attr]


def test_frozen_stages_keep_their_imagenet_weights(market_folder: Path, tmp_path: Path) -> None:
    cfg = replace(TINY, freeze_stages=1, epochs=1, val_identities=0)
    before = build_reid_model(cfg).state_dict()
    train_reid([market_folder], tmp_path / "run", cfg)
    model, loaded = load_reid_run(tmp_path / "run")
    after = model.state_dict()
    assert loaded.freeze_stages == 1
    frozen = [k for k in before if k.startswith(("backbone.stem.", "backbone.blocks.0."))]
    trained = [k for k in before if k.startswith("backbone.blocks.1.") and k.endswith("weight")]
    assert frozen and trained
    for key in frozen:  # weights and batch-norm running statistics alike
        torch.testing.assert_close(after[key], before[key])
    assert any(not torch.equal(after[k], before[k]) for k in trained)


def test_freeze_stages_is_checked() -> None:
    with pytest.raises(ValueError, match="freeze_stages"):
        replace(TINY, freeze_stages=2)  # TINY keeps stages 1-2: nothing would be left to train
    with pytest.raises(ValueError, match="small-cnn"):
        replace(TINY, backbone="small-cnn", freeze_stages=1)


def test_rerun_refused_and_resume_checks_the_config(tiny_run: Path, market_folder: Path) -> None:
    with pytest.raises(TrainError, match="already holds a training run"):
        train_reid([market_folder], tiny_run, TINY)
    with pytest.raises(TrainError, match=r"config differs.*lr"):
        train_reid([market_folder], tiny_run, replace(TINY, lr=1e-3), resume=True)


def test_resume_trains_the_extra_epochs(market_folder: Path, tmp_path: Path) -> None:
    first = train_reid([market_folder], tmp_path / "r", replace(TINY, epochs=1))
    assert first.epochs == 1
    more = train_reid([market_folder], tmp_path / "r", replace(TINY, epochs=2), resume=True)
    assert [r.epoch for r in more.history] == [1, 2]


def test_export_at_person_shape_and_eval_reid_agrees(tiny_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    report = export_run(tiny_run, tmp_path / "reid.onnx")
    assert report.parity_max_abs <= 1e-4 and report.input_size == (32, 16)
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["siamstream.input_size"] == "32x16" and meta["siamstream.task"] == "reid"
    assert sess.get_inputs()[0].shape[1:] == [3, 32, 16]
    assert main(["eval", "reid", "--model", str(report.path), "--data", str(tiny_run / "validation"),
                 "--out", str(tmp_path / "eval")]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures) == {"rank1", "rank5", "rank10", "mAP", "queries", "gallery", "threshold_eer", "eer",
                            "threshold_far_1pct", "same_camera_same_p99", "same_camera_different_p1"}
    assert figures["threshold_far_1pct"] <= figures["threshold_eer"] or figures["eer"] <= 0.01
    last = json.loads((tiny_run / "log.jsonl").read_text().splitlines()[-1])
    assert figures["queries"] == 12
    assert abs(figures["rank1"] - last["rank1"]) <= 1 / 12 + 1e-9  # ONNX Runtime vs PyTorch: at most one tie
    assert abs(figures["mAP"] - last["mAP"]) < 0.05
    assert (tmp_path / "eval" / "cmc.png").stat().st_size > 0 and (tmp_path / "eval" / "matches.png").is_file()


def test_reid_export_averages_each_crop_with_its_mirror_image(tiny_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    assert main(["export", str(tiny_run), "--out", str(tmp_path / "flip.onnx")]) == 0
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "plain.onnx"), "--no-flip"]) == 0
    capsys.readouterr()
    sessions = {n: ort.InferenceSession(str(tmp_path / f"{n}.onnx"), providers=["CPUExecutionProvider"])
                for n in ("flip", "plain")}
    meta = {n: s.get_modelmeta().custom_metadata_map for n, s in sessions.items()}
    assert meta["flip"]["siamstream.flip_average"] == "true" and meta["plain"]["siamstream.flip_average"] == "false"
    assert meta["flip"]["siamstream.weights_sha256"] != meta["plain"]["siamstream.weights_sha256"]  # never mixed
    x = np.random.default_rng(0).random((3, 3, 32, 16), dtype=np.float32)
    mirror = np.ascontiguousarray(x[..., ::-1])

    def embed(name: str, batch: np.ndarray) -> np.ndarray:
        return sessions[name].run(None, {"input": batch})[0]

    # A crop and its mirror image get one embedding; the plain model tells them apart.
    assert np.abs(embed("flip", x) - embed("flip", mirror)).max() < 1e-5
    assert np.abs(embed("plain", x) - embed("plain", mirror)).max() > 1e-3
    both = embed("plain", x) + embed("plain", mirror)
    assert np.allclose(embed("flip", x), both / np.linalg.norm(both, axis=1, keepdims=True), atol=1e-5)


def test_cli_train_reid_prints_json(market_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", "--recipe", "reid", "--data", str(market_folder), "--out", str(tmp_path / "run"),
               "--set", "reid.stage=1", "--set", "reid.height=32", "--set", "reid.width=16", "--set", "reid.epochs=1",
               "--set", "reid.p=4", "--set", "reid.k=2", "--set", "reid.val_identities=3"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["epochs"] == 1 and 0 <= out["rank1"] <= 1 and out["train_seconds"] > 0


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/market"], "training data not found"),
    (["--data", "{market}", "--set", "reid.val_identities=30"], "cannot hold out 30"),
    (["--data", "{market}", "--set", "reid.p=30", "--set", "reid.val_identities=0"], "lower p"),
])
def test_cli_train_reid_errors_are_one_line(market_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            args: list[str], message: str) -> None:
    args = [a.replace("{market}", str(market_folder)) for a in args]
    assert main(["train", "--recipe", "reid", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_eval_reid_on_a_folder_without_the_layout(tiny_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model = export_run(tiny_run, tmp_path / "m.onnx").path
    assert main(["eval", "reid", "--model", str(model), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "query" in err and "Market-1501" in err


def test_verification_pairs_are_capped_by_a_seeded_sample() -> None:
    import numpy as np

    from lab.evaluation.reid_eval import pair_verification

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.repeat(np.arange(10), 4)
    ids[:4] = -1  # junk: never in a pair
    full = pair_verification(emb, ids)
    assert full.genuine_pairs + full.impostor_pairs == 36 * 35 // 2
    capped = pair_verification(emb, ids, limit=20)
    assert capped.genuine_pairs + capped.impostor_pairs == 20 * 19 // 2
    assert pair_verification(emb, ids, limit=20).threshold == capped.threshold


def test_scene_distances_use_pairs_of_one_camera_only() -> None:
    import numpy as np

    from lab.evaluation.reid_eval import scene_distances

    # Camera 1: identity 1 twice (distance 1 - cos 60 deg = 0.5) and identity 2 (orthogonal: 1.0 and 1.0).
    # Camera 2: identity 1 once more, exactly like camera 1's first image: across cameras, never counted.
    c60, s60 = np.cos(np.pi / 3), np.sin(np.pi / 3)
    emb = np.array([[1, 0, 0], [c60, s60, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]], np.float32)
    ids, cams = np.array([1, 1, 2, 1, -1]), np.array([1, 1, 1, 2, 2])  # the junk image (-1) is left out too
    s = scene_distances(emb, ids, cams)
    assert (s.same_pairs, s.different_pairs) == (1, 2)
    assert s.same_p99 == pytest.approx(0.5) and s.different_p1 == pytest.approx(1.0)
    seqs = np.array([1, 2, 1, 1, 1])  # camera 1's second image in another recording: no same-identity pair left
    apart = scene_distances(emb, ids, np.stack([cams, seqs], axis=1))
    assert (apart.same_pairs, apart.different_pairs) == (0, 1) and np.isnan(apart.same_p99)
    lone = scene_distances(emb[:1], ids[:1], cams[:1])
    assert lone.same_pairs == lone.different_pairs == 0 and np.isnan(lone.same_p99) and np.isnan(lone.different_p1)


def test_a_run_saved_before_a_key_existed_resumes_with_its_default(tmp_path: Path) -> None:
    from encoders.reid_train import _check_resume

    saved = {k: v for k, v in TINY.as_dict().items() if k != "freeze_stages"}
    _check_resume(saved, TINY, tmp_path / "checkpoint.pt")  # freeze_stages 0 then and now
    with pytest.raises(TrainError, match=r"differs from the run's \(freeze_stages\)"):
        _check_resume(saved, replace(TINY, freeze_stages=1), tmp_path / "checkpoint.pt")
