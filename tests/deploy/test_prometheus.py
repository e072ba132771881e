"""Prometheus deployment files checked by the real tools (Debian `prometheus`, `prometheus-alertmanager`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.config import Config, load_config
from pipeline.metrics import STAGES, PipelineMetrics, serve

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml"
ALERTS = {"SiamstreamDown", "SiamstreamTargetMissing", "SiamstreamStreamStalled", "SiamstreamFrameRateLow",
          "SiamstreamFramesDropped", "SiamstreamAnomalyRateSpike", "SiamstreamBankEmpty", "SiamstreamBankStale",
          "SiamstreamEncoderLatencyHigh", "SiamstreamAlertDeliveryStalled", "SiamstreamAlertsDeadLettered",
          "SiamstreamStreamFailed", "SiamstreamShardDown", "SiamstreamStreamUnassigned", "SiamstreamStreamRunTwice"}
RECORDS = {"shard:siamstream_frames_processed:rate5m", "shard:siamstream_parts_flagged:rate5m",
           "shard:siamstream_streams_up:sum", "stream:siamstream_frames_processed:rate5m"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install prometheus prometheus-alertmanager; .ci/run does)")
    return path


def check(*cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def alert_rules() -> dict[str, dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_scrape_config_and_rules_are_valid() -> None:
    promtool = tool("promtool")
    out = check(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert "SUCCESS" in out and f"{len(ALERTS) + len(RECORDS)} rules found" in out
    rules = yaml.safe_load(RULES.read_text())
    assert {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r} == RECORDS


def test_every_alert_rule_has_a_for_duration_and_a_unit_test() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in alerts} == ALERTS and len(alerts) == len(ALERTS)
    assert all(r.get("for") for r in alerts)
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "siamstream.rules.test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert tested == {r["alert"] for r in alerts}


def test_alert_rule_unit_tests_pass() -> None:
    promtool = tool("promtool")
    out = check(promtool, "test", "rules", str(DEPLOY / "prometheus" / "tests" / "siamstream.rules.test.yml"))
    assert "SUCCESS" in out


def k8s_labels(kind: str) -> dict[str, str]:
    """Labels of the Service, or of the Deployment's pods, in deploy/k8s/base."""
    docs = [d for f in ("service.yaml", "deployment.yaml") for d in yaml.safe_load_all((DEPLOY / "k8s" / "base" / f)
                                                                                     .read_text()) if d]
    (doc,) = [d for d in docs if d["kind"] == kind]
    return dict(doc["spec"]["template"]["metadata"]["labels"] if kind == "Deployment" else doc["metadata"]["labels"])


def labelmap(labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes labels as a `labelmap` relabelling copies them onto a target (``app.kubernetes.io/name`` ->
    ``app_kubernetes_io_name``)."""
    return {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in labels.items()}


def siamstream_scrape_targets() -> list[dict[str, str]]:
    """The labels `up` has for siamstream under every scrape setup the project ships or documents."""
    ports = {Config().metrics.port, load_config(DEPLOY / "configs" / "container.toml").metrics.port}
    targets = []
    for name in ("prometheus.yml", "prometheus.compose.yml"):  # static: the project's own job names
        for job in yaml.safe_load((DEPLOY / "prometheus" / name).read_text())["scrape_configs"]:
            for static in job["static_configs"]:
                for target in static["targets"]:
                    if int(target.rsplit(":", 1)[1]) in ports:
                        targets.append({"job": job["job_name"], "instance": target, **static.get("labels", {})})
    assert len(targets) == 2
    service, pod = "siamstream", {"instance": "10.1.2.3:9108", "namespace": "line"}
    # The annotation-based jobs of the usual Kubernetes scrape configs (prometheus.io/scrape: "true"), which
    # copy the Service's or the pod's labels and keep their own job name ...
    targets.append({"job": "kubernetes-service-endpoints", **pod, "service": service,
                    **labelmap(k8s_labels("Service"))})
    targets.append({"job": "kubernetes-pods", **pod, "pod": "siamstream-7d9f", **labelmap(k8s_labels("Deployment"))})
    # ... and a job named after the Service, without its labels (Prometheus Operator ServiceMonitor).
    targets.append({"job": service, **pod, "service": service, "endpoint": "metrics"})
    return targets


def series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in labels.items()) + "}"


def test_down_fires_for_siamstream_however_it_is_scraped_and_for_nothing_else(tmp_path: Path) -> None:
    promtool = tool("promtool")
    down = alert_rules()["SiamstreamDown"]
    targets = siamstream_scrape_targets()
    others = [{"job": "prometheus", "instance": "localhost:9090"},
              {"job": "kubernetes-pods", "instance": "10.1.2.9:9100", "app_kubernetes_io_name": "node-exporter"}]
    expected = [{"exp_labels": {**t, **down["labels"]},
                 "exp_annotations": {k: v.replace("{{ $labels.instance }}", t["instance"])
                                     for k, v in down["annotations"].items()}} for t in targets]
    case = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": series("up", t), "values": "0 0 0 0 0"} for t in targets + others],
        "alert_rule_test": [{"eval_time": "4m", "alertname": "SiamstreamDown", "exp_alerts": expected}]}]}
    path = tmp_path / "down.test.yml"
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    out = check(promtool, "test", "rules", str(path))
    assert "SUCCESS" in out

    # The check can fail: a rule on the job name alone would never report the Kubernetes targets down.
    job_only = tmp_path / "job-only.rules.yml"
    job_only.write_text(RULES.read_text().replace(down["expr"], 'up{job="siamstream"} == 0'))
    assert job_only.read_text() != RULES.read_text()
    case["rule_files"] = [str(job_only)]
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "SiamstreamDown" in proc.stdout + proc.stderr


def test_the_dashboard_counts_targets_up_as_the_down_rule_does() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "siamstream.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if re.search(r"\bup\{", t["expr"])]
    selectors = set(re.findall(r"\bup\{[^}]*\}", alert_rules()["SiamstreamDown"]["expr"]))
    assert len(selectors) == 2 and exprs
    for expr in exprs:
        assert set(re.findall(r"\bup\{[^}]*\}", expr)) == selectors, expr


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
