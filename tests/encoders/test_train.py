"""Training the twin encoder: the small CNN, runs, checkpoints and resumption, determinism, export of a run."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from encoders.backbones import SMALL_CNN_MEAN, SMALL_CNN_STD, SmallConvNet
from encoders.data import ImageFolderClasses, to_tensor
from encoders.export import export_onnx, export_run
from encoders.losses import LABEL_LOSSES
from encoders.models import EmbeddingNet
from encoders.train import (
    CHECKPOINT,
    LOG_FIELDS,
    TrainConfig,
    TrainError,
    TrainResult,
    backbone_name,
    build_model,
    load_run,
    train,
)
from encoders.whiten import fit_whitening, head_outputs
from pipeline.app import train_config
from pipeline.config import TRAIN_LOSSES, Config, ConfigError, TrainingConfig, load_config
from pipeline.encoder import OnnxEncoder
from pipeline.types import CropBatch

# 2 epochs x 3 batches of 4 classes x 3 images, 28 px grey: about a second on one CPU core.
TINY = TrainConfig(input_size=28, embedding_dim=16, epochs=2, batches_per_epoch=3, p=4, k=3, device="cpu",
                   progress_every_s=0.0)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def read_log(run_dir: Path) -> tuple[list[dict[str, str]], list[dict[str, float]]]:
    with open(run_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lines = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()]
    return rows, lines


@pytest.fixture(scope="module")
def tiny_run(shapes_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(shapes_dataset, tmp_path_factory.mktemp("run") / "tiny", TINY)


@pytest.fixture(scope="module")
def three_epoch_run(shapes_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(shapes_dataset, tmp_path_factory.mktemp("run") / "straight", dataclasses.replace(TINY, epochs=3))


# ---------------------------------------------------------------------------------------------------------------
# The small CNN


def test_small_cnn_shapes_and_grey_channel_average() -> None:
    torch.manual_seed(0)
    net = SmallConvNet().eval()
    assert net.out_channels == 256
    grey = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        out = net(grey.expand(-1, 3, -1, -1))  # grey replicated to 3 channels, as to_tensor delivers it
        torch.testing.assert_close(out, net.features(grey))
    assert out.shape == (2, 256, 3, 3)  # 28 -> 14 -> 7 -> 3: pooled after the first three blocks

    rgb = SmallConvNet(in_channels=3, widths=(8, 16)).eval()
    with torch.no_grad():
        assert rgb(torch.rand(1, 3, 32, 32)).shape == (1, 16, 16, 16)


@pytest.mark.parametrize(("kwargs", "message"), [({"in_channels": 2}, "in_channels"),
                                                  ({"widths": ()}, "widths"),
                                                  ({"widths": (8, 0)}, "widths")])
def test_small_cnn_rejects_bad_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SmallConvNet(**kwargs)  # type: ignore[arg-type]


def test_small_cnn_embedding_net_exports_to_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallConvNet()
    model = EmbeddingNet(net, net.out_channels, pooling="gem", embedding_dim=32, mean=SMALL_CNN_MEAN,
                         std=SMALL_CNN_STD).eval()
    report = export_onnx(model, tmp_path / "small.onnx", 32, backbone="small-cnn")
    assert report.parity_max_abs <= 1e-4 and report.embedding_dim == 32
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [3, 32, 32]  # the 3-channel contract, also for a grey net
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["siamstream.normalization"]) == {"mean": [0.5] * 3, "std": [0.5] * 3}


# ---------------------------------------------------------------------------------------------------------------
# Configuration


def test_config_section_mirrors_train_config() -> None:
    section = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    assert section == TrainConfig().as_dict()  # same keys, same defaults
    assert train_config(Config().train) == TrainConfig()
    assert TRAIN_LOSSES == LABEL_LOSSES


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backbone": "resnet"}, "backbone must be one of 'small-cnn', 'efficientnet-lite0'"),
        ({"loss": "contrastive"}, "loss must be one of"),
        ({"device": "tpu"}, "device"),
        ({"k": 1}, "k must be >= 2"),
        ({"p": 1}, "p must be >= 2"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"epochs": 0}, r"epochs must be >= 1 \(0 only with whiten = true"),
        ({"stage": 8}, "stage must be in 1..7"),
        ({"whiten": True, "whiten_shrinkage": -1.0}, "whiten_shrinkage must be >= 0"),
    ],
)
def test_train_config_rejects_bad_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainConfig(), **changes)


def test_train_config_round_trips_and_rejects_unknown_keys() -> None:
    assert TrainConfig.from_dict(TINY.as_dict()) == TINY
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({**TINY.as_dict(), "momentum": 0.9})


# ---------------------------------------------------------------------------------------------------------------
# Runs


def test_run_writes_checkpoint_logs_and_model(tiny_run: TrainResult) -> None:
    out = tiny_run.out_dir
    assert tiny_run.epochs == 2 and math.isfinite(tiny_run.final_loss) and tiny_run.final_loss >= 0
    assert tiny_run.model_path == out / "model.pt"
    for name in ("checkpoint.pt", "model.pt", "train_config.json", "log.csv", "log.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no staging files
    rows, lines = read_log(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [ln["epoch"] for ln in lines] == [1, 2]
    assert tuple(rows[0]) == LOG_FIELDS and tuple(lines[0]) == LOG_FIELDS
    assert float(rows[-1]["loss"]) == pytest.approx(tiny_run.final_loss)
    assert all(ln["images_per_s"] > 0 and ln["seconds"] > 0 and 0 < ln["lr"] <= TINY.lr for ln in lines)
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6 and ckpt["config"] == TINY.as_dict()
    assert {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(ckpt)
    assert json.loads((out / "train_config.json").read_text()) == TINY.as_dict()


def test_same_seed_gives_identical_weights(tiny_run: TrainResult, shapes_dataset: Path, tmp_path: Path) -> None:
    again = train(shapes_dataset, tmp_path / "again", TINY)
    assert same_weights(weights(tiny_run.out_dir), weights(again.out_dir))
    assert again.final_loss == tiny_run.final_loss
    other = train(shapes_dataset, tmp_path / "other", dataclasses.replace(TINY, seed=1))
    assert not same_weights(weights(tiny_run.out_dir), weights(other.out_dir))


def test_stopped_and_resumed_run_equals_a_straight_run(three_epoch_run: TrainResult, shapes_dataset: Path,
                                                       tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, epochs=3)
    stopped = train(shapes_dataset, tmp_path / "run", cfg, until_epoch=2)
    assert stopped.epochs == 2 and stopped.model_path is None and not (tmp_path / "run" / "model.pt").exists()
    resumed = train(shapes_dataset, tmp_path / "run", cfg, resume=True)
    assert resumed.epochs == 3
    # The checkpoint holds all the state: optimizer moments, schedule position, random generators.
    assert same_weights(weights(tmp_path / "run"), weights(three_epoch_run.out_dir))
    assert [r.loss for r in resumed.history] == [r.loss for r in three_epoch_run.history]


def test_resume_with_more_epochs_continues_from_the_checkpoint(shapes_dataset: Path, tmp_path: Path) -> None:
    first = train(shapes_dataset, tmp_path / "run", TINY)
    longer = train(shapes_dataset, tmp_path / "run", dataclasses.replace(TINY, epochs=3), resume=True)
    assert longer.epochs == 3 and longer.history[:2] == first.history
    rows, lines = read_log(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and len(lines) == 3
    assert longer.train_seconds == pytest.approx(sum(r.seconds for r in longer.history))
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["epoch"] == 3


@pytest.mark.parametrize(
    ("setup", "changes", "resume", "fragments"),
    [
        ("run", {"lr": 0.01}, True, ["cannot resume", "lr: 0.001 -> 0.01"]),
        ("run", {"input_size": 32, "seed": 3}, True, ["input_size: 28 -> 32", "seed: 0 -> 3"]),
        ("run", {}, False, ["already holds a training run", "--resume"]),
        ("empty", {}, True, ["no checkpoint.pt to resume from"]),
    ],
)
def test_run_directory_in_the_wrong_state_is_refused(shapes_dataset: Path, tmp_path: Path, setup: str,
                                                     changes: dict[str, object], resume: bool,
                                                     fragments: list[str]) -> None:
    out = tmp_path / "run"
    if setup == "run":
        train(shapes_dataset, out, dataclasses.replace(TINY, epochs=1, batches_per_epoch=1))
        changes = {"epochs": 1, "batches_per_epoch": 1, **changes}
    before = sorted(p.name for p in out.iterdir()) if out.exists() else []
    with pytest.raises(TrainError) as err:
        train(shapes_dataset, out, dataclasses.replace(TINY, **changes), resume=resume)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert "\n" not in str(err.value)
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) == before


def _one_image_class(root: Path) -> Path:
    import cv2

    for name, n in (("a", 3), ("b", 1)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{i}.png"), np.full((8, 8), 40 * i, np.uint8))
    return root


@pytest.mark.parametrize(
    ("data", "changes", "fragments"),
    [
        ("missing", {}, ["training data not found"]),
        ("one-image", {"p": 2}, ["class 'b'", "has 1 image(s)", "at least 2"]),
        ("shapes", {"p": 7}, ["p = 7", "6 classes"]),
        ("shapes", {"depth": 2}, ["no class directories", "[train] depth"]),
    ],
)
def test_unusable_data_is_a_clear_error(shapes_dataset: Path, tmp_path: Path, data: str,
                                        changes: dict[str, object], fragments: list[str]) -> None:
    root = {"missing": tmp_path / "nope", "one-image": _one_image_class(tmp_path / "one"),
            "shapes": shapes_dataset}[data]
    with pytest.raises(TrainError) as err:
        train(root, tmp_path / "run", dataclasses.replace(TINY, **changes))
    for fragment in fragments:
        assert fragment in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Export of a run


def test_no_flip_on_a_run_that_is_not_re_identification_is_one_line(tiny_run: TrainResult, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["export", str(tiny_run.out_dir), "--out", str(tmp_path / "m.onnx"), "--no-flip"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-flip is for re-identification runs" in err[0]
    assert not (tmp_path / "m.onnx").exists()


def test_export_run_matches_torch_and_loads_in_the_pipeline(tiny_run: TrainResult, shapes_dataset: Path,
                                                            tmp_path: Path) -> None:
    report = export_run(tiny_run.out_dir, tmp_path / "trained.onnx")
    assert report.parity_max_abs <= 1e-4 and report.embedding_dim == 16 and report.input_size == 28
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["siamstream.embedding_dim"] == "16" and meta["siamstream.input_size"] == "28"
    assert meta["siamstream.loss"] == "triplet_batch_hard" and meta["siamstream.backbone"].startswith("small-cnn")
    assert json.loads(meta["siamstream.train_config"]) == TINY.as_dict()

    # Real images of the data set, through the same path as training: uint8 grey -> (N, 3, H, W) in [0, 1].
    data = ImageFolderClasses(shapes_dataset, grayscale=True, size=28)
    pixels = data.load_batch(range(0, len(data), 5))
    model, cfg = load_run(tiny_run.out_dir)
    assert cfg == TINY
    with torch.no_grad():
        ref = model(to_tensor(pixels))
    assert isinstance(ref, torch.Tensor)
    (got,) = sess.run(None, {"input": to_tensor(pixels).numpy()})
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4)

    encoder = OnnxEncoder(report.path, device="cpu")
    assert encoder.input_size == (28, 28) and encoder.embedding_dim == 16
    rgb = np.repeat(pixels, 3, axis=3)
    boxes = np.tile(np.array([[0, 0, 28, 28]], np.float32), (len(rgb), 1))
    emb = encoder.embed(CropBatch(rgb, boxes))
    np.testing.assert_allclose(emb.vectors, ref.numpy(), atol=1e-4)


def test_load_run_of_an_unfinished_run_is_refused(shapes_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="not a training run directory"):
        load_run(tmp_path)
    train(shapes_dataset, tmp_path / "run", TINY, until_epoch=1)
    with pytest.raises(TrainError, match=r"has not finished.*--resume"):
        export_run(tmp_path / "run", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_efficientnet_backbone_builds_with_lite_normalisation() -> None:
    model = build_model(dataclasses.replace(TINY, backbone="efficientnet-lite0", input_size=32), pretrained=False)
    assert model.norm_mean != SMALL_CNN_MEAN and model.embedding_dim == 16
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 16)


def test_efficientnet_stage_sets_the_trunk_and_the_backbone_name() -> None:
    cfg = dataclasses.replace(TINY, backbone="efficientnet-lite0", input_size=64, embedding_dim=0, stage=6)
    model = build_model(cfg, pretrained=False)
    assert model.embedding_dim == 192  # stage 6 of EfficientNet-Lite0: 192 channels
    assert backbone_name(cfg) == "efficientnet-lite0:imagenet:stage6:trained"
    closed_form = dataclasses.replace(cfg, epochs=0, whiten=True)
    assert backbone_name(closed_form) == "efficientnet-lite0:imagenet:stage6:whitened"


# ---------------------------------------------------------------------------------------------------------------
# Whitened heads


def within_class_covariance(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    within = np.concatenate([z[labels == c] - z[labels == c].mean(axis=0) for c in np.unique(labels)])
    return within.T @ within / len(z)


def test_closed_form_run_whitens_the_pretrained_features_and_exports(shapes_dataset: Path, tmp_path: Path) -> None:
    # No epochs: the network keeps its initial weights; only the head is fitted, in closed form.
    cfg = dataclasses.replace(TINY, epochs=0, embedding_dim=0, whiten=True, whiten_shrinkage=0.2, whiten_mirror=False)
    result = train(shapes_dataset, tmp_path / "run", cfg)
    assert result.epochs == 0 and result.history == () and result.model_path == tmp_path / "run" / "model.pt"
    model, loaded = load_run(result.out_dir)
    assert loaded == cfg and isinstance(model.head, torch.nn.Linear)

    data = ImageFolderClasses(shapes_dataset, grayscale=True, size=28)
    images = data.load_batch(range(len(data)))
    z = head_outputs(model, images)
    d = z.shape[1]
    # Centred on the training mean; within-class variance equal in every direction up to the shrinkage.
    np.testing.assert_allclose(z.mean(axis=0), np.zeros(d), atol=1e-3)
    eigenvalues = np.linalg.eigvalsh(within_class_covariance(z, data.labels))
    assert eigenvalues.max() <= 1.0 + 1e-6
    # ...of the features of the untrained network built with the same seed (the head started as the identity).
    torch.manual_seed(cfg.seed)
    raw = head_outputs(build_model(cfg), images)
    mean, projection = fit_whitening(raw, data.labels, 0.2)
    np.testing.assert_allclose(z, (raw - mean) @ projection, rtol=1e-3, atol=1e-3)

    report = export_run(result.out_dir, tmp_path / "whitened.onnx")
    assert report.parity_max_abs <= 1e-4 and report.embedding_dim == d
    meta = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert meta.custom_metadata_map["siamstream.backbone"] == "small-cnn:grey:whitened"


def test_whitening_that_cannot_be_fitted_is_a_clear_error(shapes_dataset: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, epochs=0, embedding_dim=0, whiten=True, whiten_shrinkage=0.0, whiten_mirror=False)
    with pytest.raises(TrainError, match=r"cannot fit the whitening head.*whiten_shrinkage"):
        train(shapes_dataset, tmp_path / "run", cfg)  # 36 images, 256 features: singular without shrinkage


def test_whitening_after_training_keeps_the_trained_head_size(shapes_dataset: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, whiten=True, whiten_shrinkage=0.5)
    result = train(shapes_dataset, tmp_path / "run", cfg)
    assert result.epochs == 2 and math.isfinite(result.final_loss)
    model, _ = load_run(result.out_dir)
    assert model.embedding_dim == 16
    # The checkpoint keeps the trained, unwhitened network (a resumed run whitens again at its end).
    ckpt = torch.load(result.out_dir / CHECKPOINT, weights_only=True)
    assert not torch.equal(ckpt["model"]["head.weight"], weights(result.out_dir)["head.weight"])
    data = ImageFolderClasses(shapes_dataset, grayscale=True, size=28)
    z = head_outputs(model, data.load_batch(range(len(data))))
    np.testing.assert_allclose(z.mean(axis=0), np.zeros(16), atol=0.2)  # centred over images and mirror images


def test_train_command_reports_a_closed_form_run(shapes_dataset: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    code = main(["train", "--data", str(shapes_dataset), "--out", str(tmp_path / "run"), "--set", "train.epochs=0",
                 "--set", "train.whiten=true", "--set", "train.embedding_dim=0", "--set", "train.input_size=28",
                 "--set", "train.p=4", "--set", "train.device=\"cpu\""])
    out = capsys.readouterr().out
    assert code == 0 and "no epochs" in out and "whitened head" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epochs"] == 0 and summary["final_loss"] is None and summary["train_seconds"] > 0


@pytest.mark.parametrize("sets", [["train.epochs=0"], ["train.epochs=0", "train.whiten=true"]])
def test_config_rejects_a_run_that_would_train_nothing_useful(sets: list[str]) -> None:
    # epochs = 0 without whiten trains nothing; with the default embedding_dim (128) the head would be random.
    with pytest.raises(ConfigError, match=r"\[train\] epochs = 0 trains nothing.*whiten = true and embedding_dim = 0"):
        load_config(None, sets)
    with pytest.raises(ValueError, match="embedding_dim must be 0 when epochs = 0"):
        TrainConfig(epochs=0, whiten=True, embedding_dim=128)


def test_a_run_saved_before_the_whitening_keys_existed_resumes(shapes_dataset: Path, tmp_path: Path) -> None:
    train(shapes_dataset, tmp_path / "run", TINY, until_epoch=1)
    ckpt_path = tmp_path / "run" / CHECKPOINT
    ckpt = torch.load(ckpt_path, weights_only=True)
    for key in ("stage", "whiten", "whiten_shrinkage", "whiten_mirror"):
        del ckpt["config"][key]
    torch.save(ckpt, ckpt_path)
    assert train(shapes_dataset, tmp_path / "run", TINY, resume=True).epochs == 2


# ---------------------------------------------------------------------------------------------------------------
# Real data


@pytest.mark.data
def test_small_cnn_trains_on_omniglot_zip(shared_data: Callable[..., Path], tmp_path: Path) -> None:
    archive = shared_data("omniglot", "images_background_small1.zip")
    cfg = TrainConfig(input_size=32, grayscale=True, depth=2, epochs=1, batches_per_epoch=5, device="cpu")
    result = train(archive, tmp_path / "run", cfg)
    assert result.epochs == 1 and math.isfinite(result.final_loss)
    assert (tmp_path / "run" / "data" / "images_background_small1").is_dir()  # extracted inside the run
    model, _ = load_run(tmp_path / "run")
    assert model.embedding_dim == cfg.embedding_dim


# ---------------------------------------------------------------------------------------------------------------
# Rotations as classes, several sources, inversion


def test_rotated_classes_quadruple_the_classes_a_batch_can_draw(shapes_dataset: Path, tmp_path: Path) -> None:
    many = dataclasses.replace(TINY, p=12, epochs=1)  # the shapes set has 6 classes
    with pytest.raises(TrainError, match="p = 12 classes per batch but the data has 6 classes"):
        train(shapes_dataset, tmp_path / "plain", many)
    result = train(shapes_dataset, tmp_path / "turned", dataclasses.replace(many, rotate_classes=True))
    assert result.epochs == 1 and math.isfinite(result.final_loss)


def test_two_sources_are_merged_without_duplicates(shapes_dataset: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(shapes_dataset / "circle", other / "circle")  # the same class, the same files
    shutil.copytree(shapes_dataset / "ring", other / "disc")  # a new class
    result = train([shapes_dataset, other], tmp_path / "run", dataclasses.replace(TINY, p=7, epochs=1))
    assert result.epochs == 1
    with pytest.raises(TrainError, match="p = 8 classes per batch but the data has 7 classes"):
        train([shapes_dataset, other], tmp_path / "run2", dataclasses.replace(TINY, p=8, epochs=1))


def test_inverted_model_sees_one_minus_the_image() -> None:
    plain = build_model(dataclasses.replace(TINY, invert=False))
    inverted = build_model(dataclasses.replace(TINY, invert=True))
    state = {k: v for k, v in plain.state_dict().items() if k != "std"}
    inverted.load_state_dict(state, strict=False)
    plain.eval()
    inverted.eval()
    x = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(inverted(x), plain(1.0 - x), atol=1e-5, rtol=1e-5)
