"""The metrics module on a fresh registry per test, and its HTTP endpoints served for real."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from pipeline.metrics import PipelineMetrics, readiness, serve


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_two_pipelines_on_separate_registries_do_not_clash() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    PipelineMetrics(a, "x").frames_processed.inc(2)
    PipelineMetrics(b, "x").frames_processed.inc(5)
    assert a.get_sample_value("siamstream_frames_processed_total", {"stream": "x"}) == 2
    assert b.get_sample_value("siamstream_frames_processed_total", {"stream": "x"}) == 5


def test_readiness_rules() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg, "line1")
    ready, reasons = readiness(reg)
    assert not ready and "stream line1: no frame processed yet" in reasons
    assert "stream line1: encoder not loaded" in reasons
    m.encoder_info.info({"provider": "CPUExecutionProvider", "model": "m", "embedding_dim": "8"})
    m.last_frame.set(1000.0)
    assert readiness(reg, now=1005.0) == (True, [])
    assert readiness(reg, stale_after_s=10, now=1020.0) == (False, ["stream line1: no frame for 20 s"])
    m.bank_size.set(0)
    assert readiness(reg, now=1001.0) == (False, ["stream line1: the anomaly bank is empty"])
    assert readiness(CollectorRegistry()) == (False, ["no stream registered"])


def test_endpoints_served_over_http() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg, "line1")
    port = serve(reg, "127.0.0.1", 0, stale_after_s=30)
    assert get(port, "/healthz") == (200, "ok\n")
    code, body = get(port, "/readyz")
    assert code == 503 and json.loads(body)["ready"] is False
    m.encoder_info.info({"provider": "CPUExecutionProvider", "model": "m", "embedding_dim": "8"})
    m.last_frame.set(time.time())
    code, body = get(port, "/readyz")
    assert code == 200 and json.loads(body) == {"ready": True, "reasons": []}
    code, body = get(port, "/metrics")
    assert code == 200 and 'siamstream_last_frame_timestamp_seconds{stream="line1"}' in body
    assert get(port, "/nope")[0] == 404
