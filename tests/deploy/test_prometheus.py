"""Prometheus deployment files checked by the real tools (Debian `prometheus`, `prometheus-alertmanager`)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.metrics import STAGES, PipelineMetrics, serve

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install prometheus prometheus-alertmanager; .ci/run does)")
    return path


def check(*cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_scrape_config_and_rules_are_valid() -> None:
    promtool = tool("promtool")
    out = check(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert "SUCCESS" in out and "8 rules found" in out


def test_every_alert_rule_has_a_for_duration_and_a_unit_test() -> None:

    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) == 8 and all(r.get("for") for r in alerts)
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "siamstream.rules.test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert tested == {r["alert"] for r in alerts}


def test_alert_rule_unit_tests_pass() -> None:
    promtool = tool("promtool")
    out = check(promtool, "test", "rules", str(DEPLOY / "prometheus" / "tests" / "siamstream.rules.test.yml"))
    assert "SUCCESS" in out


def test_alertmanager_config_is_valid() -> None:
    amtool = tool("amtool")
    out = check(amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert "SUCCESS" in out and "1 receivers" in out


def test_live_metrics_pass_promtool_check_metrics() -> None:
    promtool = tool("promtool")
    registry = CollectorRegistry()
    m = PipelineMetrics(registry, "line1")
    m.frames_read.inc(10)
    m.frames_processed.inc(10)
    for stage in STAGES:
        m.stage[stage].observe(0.004)
    m.frame_latency.observe(0.02)
    m.encoder_batch.observe(4)
    m.anomaly_score.observe(0.3)
    m.active_tracks.set(3)
    m.encoder_info.info({"provider": "CPUExecutionProvider", "model": "m.onnx", "embedding_dim": "112"})
    port = serve(registry, "127.0.0.1", 0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "siamstream_frames_processed_total" in body
    out = check(promtool, "check", "metrics", stdin=body)
    assert out.strip() == "", out  # promtool prints nothing when every metric follows the conventions
