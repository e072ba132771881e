"""Production chain on the real conveyor video, every server real and on 127.0.0.1:

``siamstream run`` (the CLI) -> /metrics -> Prometheus (the project's rules plus a fast rule on flagged parts)
-> Alertmanager (the project's config, pointed at a local receiver); and siamstream's own alert sinks ->
a webhook receiver that is down for part of the run, and mosquitto with a QoS 1 subscriber.

The bank is built from the first 200 frames (phones and a crushed can), and the run covers the whole video,
where calculators and a card box come by: parts the bank has never seen, so some are flagged.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from tests.alert_servers import Mosquitto, MqttSubscriber, WebhookReceiver, free_port, mosquitto_binary, wait_until

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONFIG = DEPLOY / "configs" / "conveyor.toml"
TOPIC = "siamstream/conveyor/alerts"

pytestmark = pytest.mark.data

# Fires as soon as a part is flagged: the project's rules all wait minutes (`for:`), too long for a test. It looks
# back over 10 minutes so that it still fires when the parts are flagged as the run ends (tracks close at the end
# of the video) and the series goes stale a moment later.
FAST_RULE = {"groups": [{"name": "siamstream-test", "interval": "1s", "rules": [{
    "alert": "SiamstreamPartFlagged",
    "expr": "max_over_time(siamstream_parts_flagged_total[10m]) > 0",
    "for": "1s",
    "labels": {"severity": "warning"},
    "annotations": {"summary": "a part was flagged on stream {{ $labels.stream }}"},
}]}]}


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).is_file()),
                                          None)
        if path:
            return path
    pytest.skip(f"{names[0]} not installed (apt-get install prometheus prometheus-alertmanager mosquitto; "
                f".ci/run does)")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    body = get_json(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return int(response.status) == 200
        except OSError:
            return False

    return check


def scrape(port: int) -> dict[str, float]:
    """siamstream's /metrics as {series: value}; {} when it is not serving (not started or ended)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return {}
    return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, val = line.rpartition(" ")
            out[series] = float(val)
    return out


def siamstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def video(shared_data: Callable[..., Path]) -> Path:
    return shared_data("conveyor_video", "cutted.avi")  # skips, saying why, before any server starts


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Alertmanager, Prometheus and mosquitto running, with their receivers; stopped afterwards."""
    prometheus_bin = binary("prometheus")
    alertmanager_bin = binary("prometheus-alertmanager", "alertmanager")
    mosquitto_binary()  # all three present before anything starts
    procs: list[subprocess.Popen[bytes]] = []
    am_receiver = WebhookReceiver().start()
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        am_port, prom_port, metrics_port = free_port(), free_port(), free_port()
        am_cfg = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
        am_cfg["route"].update(group_wait="1s", group_interval="1s")
        am_cfg["receivers"][0]["webhook_configs"][0]["url"] = am_receiver.url
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_cfg))
        procs.append(subprocess.Popen(
            [alertmanager_bin, f"--config.file={tmp_path / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "alertmanager.log").open("wb")))

        (tmp_path / "fast.rules.yml").write_text(yaml.safe_dump(FAST_RULE))
        prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        prom_cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
        prom_cfg["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml"),
                                  str(tmp_path / "fast.rules.yml")]
        prom_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
        prom_cfg["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        procs.append(subprocess.Popen(
            [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb")))

        wait_until(ready(f"http://127.0.0.1:{am_port}/-/ready"), 30, "Alertmanager to be ready")
        wait_until(ready(f"http://127.0.0.1:{prom_port}/-/ready"), 30, "Prometheus to be ready")
        subscriber = MqttSubscriber(broker.port, TOPIC)
        yield {"prometheus": f"http://127.0.0.1:{prom_port}", "am_receiver": am_receiver, "broker": broker,
               "subscriber": subscriber, "metrics_port": metrics_port}
        subscriber.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        am_receiver.stop()


def test_flagged_parts_reach_prometheus_alertmanager_mqtt_and_a_webhook_that_was_down(
        tmp_path: Path, video: Path, pretrained_onnx: Path, servers: dict[str, Any]) -> None:
    model = f'encoder.model="{pretrained_onnx}"'
    bank = tmp_path / "bank"
    built = siamstream("bank", "build", "--config", str(CONFIG), "--source", str(video), "--out", str(bank),
                       "--set", model, "--set", "source.max_frames=200", "--set", "bank.false_alarm_rate=0.05")
    assert built.returncode == 0, built.stderr

    receiver = WebhookReceiver()  # siamstream's webhook: down (nothing listening) when the run starts
    metrics_port = servers["metrics_port"]
    out, spool = tmp_path / "run", tmp_path / "spool"
    settings = [model, f'anomaly.bank="{bank}"', f"metrics.port={metrics_port}", "output.video=false",
                f'alerts.webhook_url="{receiver.url}"', 'alerts.mqtt_host="127.0.0.1"',
                f"alerts.mqtt_port={servers['broker'].port}", f'alerts.mqtt_topic="{TOPIC}"',
                f'alerts.spool_dir="{spool}"', "alerts.backoff_initial_s=0.2", "alerts.backoff_max_s=1.0",
                "alerts.close_timeout_s=30"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(CONFIG), "--source", str(video), "--out",
         str(out), *(arg for s in settings for arg in ("--set", s))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        failures = 'siamstream_alert_delivery_failures_total{sink="webhook",stream="conveyor"}'
        waiting = 'siamstream_alerts_spooled{sink="webhook",stream="conveyor"}'

        def outage_long_enough() -> bool:
            m = scrape(metrics_port)
            failed = m.get(failures, 0)
            return proc.poll() is not None or (failed >= 3 and (m.get(waiting, 0) >= 2 or failed >= 8))

        # Down until three deliveries failed and two alerts wait in the spool, or eight retries failed (the first
        # part is flagged mid-video)...
        wait_until(outage_long_enough, 300, "siamstream to fail delivering to the webhook that is down")
        assert proc.poll() is None, "the run ended before any webhook delivery failed: " + proc.communicate()[1]
        receiver.start()  # ...then back, while the run goes on
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        receiver.stop()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) == summary["flagged"] >= 1, "the run flagged no part: nothing to alert about"
    flagged_tracks = sorted(e["track_id"] for e in events)

    # siamstream's webhook: every flagged part exactly once after de-duplication by alert_id, evidence attached.
    got = receiver.unique()
    assert sorted(a["track_id"] for a in got.values()) == flagged_tracks
    for alert in got.values():
        event = next(e for e in events if e["track_id"] == alert["track_id"])
        assert (alert["score"], alert["threshold"], alert["evidence"]["path"]) == \
            (event["score"], event["threshold"], event["evidence"])
        jpeg = np.frombuffer(base64.b64decode(alert["evidence"]["jpeg_base64"]), np.uint8)
        crop, sent = cv2.imread(event["evidence"], cv2.IMREAD_COLOR), cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        assert crop is not None and sent is not None and sent.shape == crop.shape

    # MQTT: the subscriber got every flagged part, with the same alert ids.
    subscriber = servers["subscriber"]
    wait_until(lambda: len(subscriber.unique()) >= len(events), 15, "every alert at the MQTT subscriber")
    assert sorted(m["track_id"] for m in subscriber.unique().values()) == flagged_tracks
    assert set(subscriber.unique()) == set(got)

    # The run's final metrics: the outage was real, everything was delivered, nothing dropped or left behind.
    final = parse_metrics((out / "metrics.prom").read_text())
    for sink in ("webhook", "mqtt"):
        labels = f'{{sink="{sink}",stream="conveyor"}}'
        assert final[f"siamstream_alerts_sent_total{labels}"] >= len(events)
        assert final[f"siamstream_alerts_spooled{labels}"] == 0
        assert final[f"siamstream_alerts_dropped_total{labels}"] == 0
        assert final[f"siamstream_alerts_dead_lettered_total{labels}"] == 0  # an outage never dead-letters
    assert final[failures] >= 3
    assert list(spool.rglob("*.json")) == []

    # Prometheus scraped the run and evaluated the project's rules without error.
    prometheus = servers["prometheus"]
    frames = query(prometheus, 'max_over_time(siamstream_frames_processed_total{stream="conveyor"}[10m])')
    assert frames and float(frames[0]["value"][1]) > 0
    seen_flagged = query(prometheus, 'max_over_time(siamstream_parts_flagged_total{stream="conveyor"}[10m])')
    assert seen_flagged and float(seen_flagged[0]["value"][1]) >= 1
    seen_failures = query(prometheus, "max_over_time(siamstream_alert_delivery_failures_total"
                                      '{sink="webhook",stream="conveyor"}[10m])')
    assert seen_failures and float(seen_failures[0]["value"][1]) >= 1
    groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    project = next(g for g in groups if g["name"] == "siamstream")
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml").read_text())["groups"]
    assert [r["name"] for r in project["rules"]] == [r["alert"] for g in shipped for r in g["rules"]]
    assert all(r["health"] == "ok" for r in project["rules"]), project["rules"]

    # The fast rule fired and Alertmanager delivered it to its webhook receiver.
    am_receiver = servers["am_receiver"]

    def am_delivered() -> bool:
        return any(a["labels"].get("alertname") == "SiamstreamPartFlagged" and a["status"] == "firing"
                   and a["labels"].get("stream") == "conveyor"
                   for n in am_receiver.alerts() for a in n.get("alerts", []))

    wait_until(am_delivered, 30, "Alertmanager to deliver SiamstreamPartFlagged")
