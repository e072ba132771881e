"""`siamstream anomaly fit` through the real command line: recipes scored on probe defects, the chosen one written
as a config, an encoder and a bank that `eval anomaly` and `bank info` then use as they are."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from tests.anomaly_manifests import write_manifest
from tests.pipeline.test_cli_bank import assert_clean_error, last_json, siamstream

RECIPES = "s4+s3 1x sigma2,s4 1x sigma4"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, encoder_cache: Path) -> tuple[Path, Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("fit")
    manifest = write_manifest(root / "data")
    out = root / "fitted"
    proc = siamstream("anomaly", "fit", "--manifest", str(manifest), "--out", str(out), "--recipes", RECIPES,
                      "--no-adapt", "--per-image", "2", "--defect-size", "0.15",
                      "--set", f'encoder.cache_dir="{encoder_cache}"', "--set", "bank.false_alarm_rate=0.2",
                      timeout=900)
    return manifest, out, last_json(proc)


def test_fit_scores_every_recipe_and_writes_the_chosen_one(fitted: tuple[Path, Path, dict[str, object]]) -> None:
    _manifest, out, figures = fitted
    assert set(figures["candidates"]) == set(RECIPES.split(","))  # type: ignore[arg-type]
    report = json.loads((out / "fit.json").read_text())
    assert report["chosen"] == figures["chosen"]
    assert report["images"]["working_size"] == [128, 128] and report["images"]["resized"] == 0
    assert report["probes"]["defective"] == 12 and report["probes"]["good"] == 6
    assert report["probes"]["objects_found"] == 6
    assert report["reference"]["timings"] >= 2 * 3
    for c in report["candidates"].values():
        assert 0.0 <= c["probe_image_auroc"] <= 1.0 and c["ms_per_image"] > 0 and c["cost_ratio"] > 0
        assert c["within_budget"] == (c["ms_per_image"] <= report["budget_ms"] * (1 - report["budget_margin"]))
    inside = [n for n, c in report["candidates"].items() if c["within_budget"]]
    best = max(inside, key=lambda n: (round(report["candidates"][n]["probe_image_auroc"], 3),
                                      report["candidates"][n]["probe_pixel_ap"]))
    assert report["chosen"] == best
    assert (out / "fit.md").read_text().count("| chosen |") == 1
    cfg = load_config(out / "config.toml")
    assert cfg.encoder.model == str((out / "encoder.onnx").resolve())
    assert cfg.anomaly.bank == str((out / "bank").resolve())
    assert cfg.bank.false_alarm_rate == 0.2  # the base config's keys are kept
    assert cfg.bank.level == "patch"


def test_eval_anomaly_with_the_fitted_config_scores_with_exactly_those_settings(
        fitted: tuple[Path, Path, dict[str, object]]) -> None:
    manifest, out, figures = fitted
    ev = last_json(siamstream("eval", "anomaly", "--config", str(out / "config.toml"), "--manifest", str(manifest)))
    assert ev["threshold"] == pytest.approx(figures["threshold"], rel=1e-6)
    assert ev["image_auroc"] >= 0.8  # the scratches of the test split are found
    info = last_json(siamstream("bank", "info", str(out / "bank")))
    assert info["threshold"] == pytest.approx(figures["threshold"], rel=1e-6)


def test_without_validation_images_it_says_so(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "data")
    rows = list(csv.reader(manifest.open()))
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([r for r in rows if r[0] != "validation" or r[3].startswith("validation/12.")])
    proc = siamstream("anomaly", "fit", "--manifest", str(manifest), "--out", str(tmp_path / "o"))
    assert_clean_error(proc, "needs at least 3 validation rows", "split=validation")


def test_an_unknown_recipe_is_one_line(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "data")
    proc = siamstream("anomaly", "fit", "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--recipes", "s9")
    assert_clean_error(proc, "no recipe 's9'", "choose among")


def test_an_output_folder_in_use_is_refused(tmp_path: Path) -> None:
    from pipeline.outlock import OutputLock

    manifest = write_manifest(tmp_path / "data")
    (tmp_path / "o").mkdir()
    with OutputLock(tmp_path / "o", "another command"):
        proc = siamstream("anomaly", "fit", "--manifest", str(manifest), "--out", str(tmp_path / "o"))
    assert_clean_error(proc, str(tmp_path / "o"))
