"""The alert series on the live /metrics endpoint pass `promtool check metrics` (Debian `prometheus`)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from pipeline.metrics import PipelineMetrics, serve


def test_alert_series_follow_the_prometheus_conventions() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus; .ci/run does)")
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, "line1")
    for name in ("webhook", "mqtt"):
        sink = metrics.alert_sink(name)
        sink.sent.inc(3)
        sink.failures.inc(2)
        sink.spooled.set(1)
        sink.dropped.inc(0)
        sink.dead_lettered.inc(1)
    port = serve(registry, "127.0.0.1", 0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in ('siamstream_alerts_sent_total{sink="webhook",stream="line1"} 3.0',
                 'siamstream_alert_delivery_failures_total{sink="mqtt",stream="line1"} 2.0',
                 'siamstream_alerts_spooled{sink="mqtt",stream="line1"} 1.0',
                 'siamstream_alerts_dropped_total{sink="webhook",stream="line1"} 0.0',
                 'siamstream_alerts_dead_lettered_total{sink="webhook",stream="line1"} 1.0'):
        assert line in body
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and (proc.stdout + proc.stderr).strip() == "", proc.stdout + proc.stderr
