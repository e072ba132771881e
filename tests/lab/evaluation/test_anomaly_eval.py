from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lab.evaluation.anomaly_eval import evaluate_anomaly
from pipeline.anomaly.manifest import ManifestError, load_manifest
from tests.anomaly_manifests import write_manifest


def test_evaluation_finds_scratches_and_localises_them(tmp_path: Path, pretrained_onnx: Path) -> None:
    from pipeline.encoder import OnnxEncoder

    rows = load_manifest(write_manifest(tmp_path))
    encoder = OnnxEncoder(pretrained_onnx, device="cpu", threads=2)
    ev, bank = evaluate_anomaly(rows, encoder, coreset_fraction=0.5, false_alarm_rate=0.2)
    assert ev.counts == {"train": 12, "validation": 6, "test": 10, "test_defective": 5}
    assert ev.image_auroc.value >= 0.9
    assert ev.pixel_ap > 0.2 and ev.pixel_auroc > 0.9  # the map is high on the scratch, not just anywhere
    assert ev.test_maps.shape == (10, 128, 128)
    # The threshold is the quantile of the held-out good scores (6 validation + 12 train out of fold) and the
    # verdicts follow from it.
    assert ev.calibration_images == len(ev.calibration_scores) == 18
    assert ev.threshold == pytest.approx(np.quantile(ev.calibration_scores, 0.8, method="higher"))
    assert ev.recall.value == pytest.approx(float((ev.test_scores[5:] > ev.threshold).mean()))
    assert bank.meta.threshold == pytest.approx(ev.threshold) and bank.meta.calibration_samples == 18
    only_validation, _ = evaluate_anomaly(rows, encoder, coreset_fraction=0.5, false_alarm_rate=0.2,
                                          calibration_folds=0, border_px=8)
    assert only_validation.calibration_images == 6
    for m in only_validation.test_maps:  # the border band is left out: it holds each map's minimum
        assert m[:8].max() == m[:, -8:].max() == m.min() < m.max()
    figures = ev.figures()
    assert set(figures) >= {"image_auroc", "pixel_auroc", "pixel_ap", "recall_at_threshold", "fpr_at_threshold",
                            "ms_per_image"}
    json.dumps(figures)


def test_evaluation_with_cell_norm(tmp_path: Path, pretrained_onnx: Path) -> None:
    from pipeline.anomaly.bank import BankError, build_bank
    from pipeline.anomaly.calibrate import group_folds
    from pipeline.anomaly.cellnorm import fit_cell_norm
    from pipeline.anomaly.images import patch_features
    from pipeline.encoder import OnnxEncoder

    rows = load_manifest(write_manifest(tmp_path))
    encoder = OnnxEncoder(pretrained_onnx, device="cpu", threads=2)
    raw, raw_bank = evaluate_anomaly(rows, encoder, coreset_fraction=0.5, false_alarm_rate=0.2)
    ev, bank = evaluate_anomaly(rows, encoder, coreset_fraction=0.5, false_alarm_rate=0.2, cell_norm=True)
    norm = bank.cell_norm
    assert raw_bank.cell_norm is None and norm is not None and norm.cells == 64
    # Scored in per-cell units: still finds the scratches, against a threshold in those units.
    assert ev.image_auroc.value >= 0.9 and ev.pixel_auroc > 0.9
    assert ev.threshold != pytest.approx(raw.threshold) and 0 < ev.threshold < raw.threshold
    assert ev.calibration_images == 18
    # The statistics are those of the train images scored out of fold, recomputed here from the same folds.
    train = patch_features([r for r in rows if r.split == "train"], encoder)
    oof = np.empty(train.shape[:2], np.float32)
    for fold in group_folds(np.arange(len(train)), 5, 0):
        rest = np.setdiff1d(np.arange(len(train)), fold)
        fold_bank = build_bank(train[rest], np.arange(len(rest)), encoder.encoder_id, encoder.input_size,
                               level="patch", folds=0, max_vectors=200_000, coreset_fraction=0.5)
        oof[fold] = fold_bank.raw_patch_scores(train[fold])
    expected = fit_cell_norm(oof)
    np.testing.assert_allclose(norm.mean, expected.mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(norm.scale, expected.scale, rtol=1e-4, atol=1e-4)
    with pytest.raises(BankError, match=r"needs \[bank\] folds >= 2"):
        evaluate_anomaly(rows, encoder, coreset_fraction=0.5, calibration_folds=0, cell_norm=True)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda rows: [r[:2] + r[3:] for r in rows], "missing column"),
    (lambda rows: [*rows[:1], ["training", *rows[1][1:]], *rows[2:]], "split 'training'"),
    (lambda rows: [*rows[:1], [rows[1][0], rows[1][1], "yes", *rows[1][3:]], *rows[2:]], "is_anomaly 'yes'"),
    (lambda rows: [*rows[:1], ["train", "scratch", "1", *rows[1][3:]], *rows[2:]], "defects belong in 'test'"),
    (lambda rows: [*rows[:1], [*rows[1][:3], "train/nope.png", ""], *rows[2:]], "missing, e.g."),
    (lambda rows: [r for r in rows if r[0] != "validation"], "no 'validation' rows"),
    (lambda rows: [r for r in rows if r[2] != "1"], "both good"),
])
def test_manifest_errors_name_the_problem(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = write_manifest(tmp_path, 2, 2, 1, 1)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(edit(rows))
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "none.csv")


def test_eval_anomaly_command_writes_its_files_and_ends_with_json(tmp_path: Path, pretrained_onnx: Path) -> None:
    import subprocess
    import sys

    manifest = write_manifest(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "eval", "anomaly", "--manifest", str(manifest),
                           "--model", str(pretrained_onnx), "--out", str(out), "--set", "bank.coreset_fraction=0.5",
                           "--set", "anomaly.map_border=4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["image_auroc"] >= 0.9 and 0 <= figures["fpr_at_threshold"] <= 1
    assert "image AUROC" in proc.stdout and "pixel AP" in proc.stdout
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 10 and {r["label"] for r in rows} == {"good", "scratch"}
    assert len((out / "calibration.csv").read_text().splitlines()) == 1 + 6 + 12  # header, validation, train folds
    for png in ("histograms.png", "maps.png"):
        assert cv2.imread(str(out / png)) is not None
    assert (out / "bank" / "meta.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "eval", "anomaly", "--manifest",
                          str(tmp_path / "nope.csv")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "manifest not found" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_anomaly_synthetic_needs_good_images_only(tmp_path: Path, pretrained_onnx: Path) -> None:
    import subprocess
    import sys

    manifest = write_manifest(tmp_path)
    good_only = tmp_path / "good_only.csv"  # a new line: no defect image yet, no test split at all
    lines = manifest.read_text().splitlines()
    good_only.write_text("\n".join([lines[0], *(ln for ln in lines[1:] if not ln.startswith("test,"))]) + "\n")
    repo = Path(__file__).resolve().parents[3]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "eval", "anomaly", "--model",
                               str(pretrained_onnx), *args], cwd=repo, capture_output=True, text=True, timeout=300)

    full = run("--manifest", str(good_only))
    assert full.returncode == 2 and "test split needs both" in full.stderr and "--synthetic" in full.stderr
    proc = run("--manifest", str(good_only), "--synthetic", "--set", "bank.coreset_fraction=0.5")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(figures) == {"synthetic_image_auroc", "synthetic_pixel_ap", "per_kind_auroc", "bank_vectors"}
    assert 0.5 < figures["synthetic_image_auroc"] <= 1.0 and figures["bank_vectors"] > 0
    assert set(figures["per_kind_auroc"]) == {"crack", "spot", "smear", "chip"}  # the probes of anomaly fit
    assert "image AUROC" in proc.stdout
