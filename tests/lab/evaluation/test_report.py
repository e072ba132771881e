from __future__ import annotations

import json
import math
from pathlib import Path

from lab.benchmarks.encoder import run as run_encoder_bench
from lab.evaluation.report import json_line, table


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    text = table(["name", "value"], [["a", 1.5], ["longer", 12345.678]])
    lines = text.splitlines()
    assert lines[0].startswith("name  ") and set(lines[1]) <= {"-", " "}
    assert lines[2].endswith("1.5") and lines[3].endswith("12,346")
    assert len({len(line) for line in lines[1:]}) == 1  # every row as wide as the rule


def test_json_line_is_one_line_without_nan() -> None:
    line = json_line({"a": 0.5, "b": math.nan, "c": {"d": [1, math.inf]}})
    assert "\n" not in line
    assert json.loads(line) == {"a": 0.5, "b": None, "c": {"d": [1, None]}}


def test_encoder_bench_measures_both_engines_on_the_same_batch(pretrained_onnx: Path) -> None:
    result = run_encoder_bench(batch=2, threads=1, repeats=1, cache_dir=pretrained_onnx.parent)
    assert result.model == str(pretrained_onnx)
    assert result.parity_max_abs <= 1e-4  # the same network in both engines
    assert result.ort_seconds > 0 and result.torch_seconds > 0
    assert result.ort_crops_per_s == 2 / result.ort_seconds
