"""Grafana dashboard and provisioning (deploy/grafana): every query asks for series siamstream really exports,
parses as PromQL (promtool, where installed), and the provisioning finds the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.metrics import STAGES, PipelineMetrics

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "siamstream.json"
# Series Prometheus makes itself for every target, not exported by siamstream.
PROMETHEUS_SERIES = {"up"}
# Grafana's variables, replaced by what Grafana would send for "All" and a 1-minute step.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h", "$stream": ".*"}
LABEL_LIST_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_WORDS = LABEL_LIST_WORDS | {"and", "or", "unless", "bool", "offset", "inf", "nan"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def targets() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for panel in dashboard()["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t))
    return out


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, from the exposition of a pipeline that ran with a bank and an encoder."""
    registry = CollectorRegistry()
    m = PipelineMetrics(registry, "line1")
    for stage in STAGES:
        m.stage[stage].observe(0.004)
    m.bank_size.set(3706)
    m.bank_threshold.set(0.4)
    m.bank_updated.set(1.7e9)
    m.encoder_info.info({"provider": "CPUExecutionProvider", "model": "m.onnx"})
    m.families.shared_batch.labels("parts").observe(12)
    m.families.shared_batch_frames.labels("parts").observe(3)
    m.set_fleet(0, 2, {"line1": 0, "line2": 1})
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers) of every series selector in a PromQL expression.

    A small tokenizer: range durations are dropped, strings skipped, numbers (1e-9) are tokens of their own, and an
    identifier is a metric name unless it calls a function, is an aggregation, a keyword, or a label name in
    ``by (...)``, ``without (...)``, ``on (...)``, ``ignoring (...)`` or ``group_left/right (...)``.
    """
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    tokens = re.findall(r'\{[^}]*\}|"(?:[^"\\]|\\.)*"|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|[a-zA-Z_:][a-zA-Z0-9_:]*|\S',
                        expr)
    found = []
    i = 0
    while i < len(tokens):
        tok, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        i += 1
        if tok.lower() in LABEL_LIST_WORDS and nxt == "(":
            i = tokens.index(")", i) + 1  # skip the label names
            continue
        is_name = re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", tok) and tok.lower() not in PROMQL_WORDS
        is_call = nxt == "(" or (tok in AGGREGATIONS and nxt.lower() in LABEL_LIST_WORDS)
        if is_name and not is_call:
            found.append((tok, nxt if nxt.startswith("{") else ""))
    return found


def test_dashboard_is_recent_and_has_a_stream_variable_from_label_values() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 39 and d["uid"] == "siamstream"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    stream = variables["stream"]
    query = stream["query"]["query"] if isinstance(stream["query"], dict) else stream["query"]
    m = re.fullmatch(r"label_values\((\w+),\s*stream\)", query)
    assert m and m.group(1) in exported_series() and "stream" in exported_series()[m.group(1)]
    assert stream["includeAll"] and stream["multi"]
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_cover_the_pipeline() -> None:
    exprs = " ".join(t["expr"] for _, t in targets())
    for needed in ("siamstream_frames_read_total", "siamstream_frames_processed_total",
                   "histogram_quantile(0.5, sum by (le, stage) (rate(siamstream_stage_latency_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le, stage) (rate(siamstream_stage_latency_seconds_bucket",
                   "siamstream_frame_latency_seconds_bucket", "siamstream_frames_dropped_total",
                   "siamstream_source_reconnects_total", "siamstream_parts_flagged_total",
                   "siamstream_parts_inspected_total", "siamstream_active_tracks", "siamstream_bank_size",
                   "time() - siamstream_bank_updated_timestamp_seconds", "siamstream_bank_threshold",
                   "siamstream_encoder_info"):
        assert needed in exprs, needed


def test_every_query_names_exported_series_and_follows_the_stream_variable() -> None:
    series = exported_series()
    assert targets()
    for title, t in targets():
        assert t["datasource"]["uid"] == "${datasource}", title
        found = selectors(t["expr"])
        assert found, f"{title}: no series in {t['expr']}"
        for name, matchers in found:
            if name in PROMETHEUS_SERIES:
                continue
            assert name in series, f"{title}: {name} is not exported by siamstream (query: {t['expr']})"
            if "stream" in series[name]:
                assert 'stream=~"$stream"' in matchers, f"{title}: {name} ignores the stream variable"


def test_selector_extraction_finds_names_and_skips_functions_and_labels() -> None:
    got = selectors('sum by (le, stage) (rate(a_bucket{stream=~"$x"}[5m])) / clamp_min(b_total, 1e-9) '
                    'and on (stream) time() - c')
    assert [n for n, _ in got] == ["a_bucket", "b_total", "c"]
    assert selectors('label_replace(x{a="b"}, "dst", "$1", "src", "(.*)") > 0') == [("x", '{a="b"}')]
    # A misspelt name is found, and is not an exported series.
    ((name, _),) = selectors('rate(siamstream_frame_read_total{stream=~"$stream"}[5m])')
    assert name not in exported_series()


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus; .ci/run does)")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"siamstream:dashboard_query_{i}", "expr": substitute(t["expr"])}
        for i, (_, t) in enumerate(targets())]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(targets())} rules found" in proc.stdout

    # promtool does reject a broken expression.
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (le (rate(siamstream_frames_read_total[1m]))"}]}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


def test_provisioning_points_at_the_dashboard_and_the_compose_prometheus() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    provisioning = (REPO / "deploy" / mounts["/etc/grafana/provisioning"]).resolve()
    assert provisioning == GRAFANA / "provisioning"

    (provider,) = yaml.safe_load((provisioning / "dashboards" / "siamstream.yml").read_text())["providers"]
    assert provider["type"] == "file"
    dashboards_dir = (REPO / "deploy" / mounts[provider["options"]["path"]]).resolve()
    assert DASHBOARD in dashboards_dir.glob("*.json")
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "deploy" / mounts[str(Path(home).parent)]).resolve() / Path(home).name == DASHBOARD

    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    m = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"])
    assert m and m.group(1) in compose["services"]
    assert f"{m.group(2)}:{m.group(2)}" in compose["services"][m.group(1)]["ports"]
