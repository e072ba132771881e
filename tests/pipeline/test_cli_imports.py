"""`siamstream run` loads the product, not the lab: no training, evaluation or benchmark module, and none of the
libraries only they use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.media import square_video

REPO = Path(__file__).resolve().parents[2]
LAB = ("encoders.train", "encoders.adapt", "encoders.reid_train", "encoders.evaluate", "lab.evaluation",
       "lab.benchmarks", "trackeval", "motmetrics", "sklearn", "matplotlib")

PROBE = """
import json, sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def modules_after_run(tmp_path: Path, encoder_setting: str) -> list[str]:
    """The modules a `siamstream run` of a short video has loaded when it ends (it must succeed)."""
    video = square_video(tmp_path / "v.avi", frames=20)
    proc = subprocess.run([sys.executable, "-c", PROBE, "-q", "run", "--config", str(REPO / "config.toml"),
                           "--source", str(video), "--out", str(tmp_path / "out"), "--set", encoder_setting,
                           "--set", "metrics.enabled=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["code"] == 0
    return list(probe["modules"])


def test_run_imports_no_lab_module(tmp_path: Path, pretrained_onnx: Path) -> None:
    loaded = [m for m in modules_after_run(tmp_path, f'encoder.model="{pretrained_onnx}"') if m.startswith(LAB)]
    assert loaded == [], loaded


def test_run_on_the_cached_built_in_encoder_loads_no_pytorch(tmp_path: Path, pretrained_onnx: Path) -> None:
    """The built-in encoder needs PyTorch to be built into the cache once; a run that finds it there does not pay
    for importing PyTorch (over a second of start-up on 2 cores)."""
    modules = modules_after_run(tmp_path, f'encoder.cache_dir="{pretrained_onnx.parent}"')
    assert "onnxruntime" in modules and "torch" not in modules and "encoders.export" not in modules


def test_an_error_of_a_lab_module_is_still_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "train", "--config", str(REPO / "config.toml"),
                           "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("siamstream: error: ")


def test_a_lab_command_without_the_lab_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import cli

    def needs(name: str) -> Callable[[object], int]:
        def command(_args: object) -> int:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)  # what `import NAME` raises
        return command

    monkeypatch.setattr(cli, "cmd_config_check", needs("trackeval"))
    assert cli.main(["config", "check", "x.toml"]) == 2
    assert capsys.readouterr().err.strip() == ("siamstream: error: this command needs trackeval, which comes with "
                                               "the evaluation tools: pip install 'siamstream[lab]'")
    monkeypatch.setattr(cli, "cmd_config_check", needs("not_a_lab_package"))
    with pytest.raises(ModuleNotFoundError):  # any other missing module is a bug, shown as such
        cli.main(["config", "check", "x.toml"])


def test_the_product_does_not_import_the_lab() -> None:
    """`pipeline/` is the product, `lab/` the evaluation and benchmarks: only the CLI (the entry point of every
    command) reaches into the lab, and only inside the commands that need it. Evaluation does not import the
    benchmarks built on it."""
    pattern = re.compile(r"^\s*(from|import)\s+lab(\.|\s|$)", re.M)
    product = [p for p in (REPO / "pipeline").rglob("*.py") if p.name != "cli.py"]
    assert len(product) > 30
    assert [str(p) for p in product if pattern.search(p.read_text())] == []
    cli = (REPO / "pipeline" / "cli.py").read_text()
    assert all(line.startswith("    ") for line in cli.splitlines() if pattern.match(line))  # inside functions
    below = re.compile(r"^\s*(from|import)\s+lab\.benchmarks", re.M)
    assert [p.name for p in (REPO / "lab" / "evaluation").glob("*.py") if below.search(p.read_text())] == []


def test_a_run_starts_without_faiss_loader_noise(tmp_path: Path, pretrained_onnx: Path) -> None:
    """FAISS logs every CPU build it fails to load, with the import error; a user's start-up log shows none."""
    video = square_video(tmp_path / "v.avi", frames=5)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(REPO / "config.toml"),
                           "--source", str(video), "--out", str(tmp_path / "out"), "--set",
                           f'encoder.model="{pretrained_onnx}"', "--set", "metrics.enabled=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "INFO pipeline.encoder: encoder on" in proc.stderr  # INFO lines are shown
    assert "faiss.loader" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr, proc.stderr
