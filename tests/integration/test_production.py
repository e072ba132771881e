"""Production chain on the real conveyor video, every server real and on 127.0.0.1:

``siamstream run`` (the CLI) -> /metrics -> Prometheus (the project's rules as shipped, the same rules with their
``for:`` shortened to a second, and a fast rule on flagged parts) -> Alertmanager (the project's config, pointed
at a local receiver); and siamstream's own alert sinks -> a webhook receiver that is down for part of the run,
and mosquitto with a QoS 1 subscriber. A second test stops a run with SIGTERM while the webhook is down and
checks that the next run delivers what the first one left.

The bank is built from the first 200 frames (phones and a crushed can), and the run covers the whole video,
where calculators and a card box come by: parts the bank has never seen, so some are flagged.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
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



def fast_copy_of_shipped_rules() -> dict[str, Any]:
    """The project's alert rules, expressions unchanged, each waiting 1 s (``for:``) instead of minutes, in a group
    of its own: what makes a shipped rule fire within a test. (Its recording rules run as shipped.)

    Each copy carries one more label. Without it, both groups would write the same ALERTS_FOR_STATE series, each at
    its own group's evaluation times: on a loaded machine one group lags and Prometheus rejects its sample as out
    of order, which marks the rule unhealthy."""
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml").read_text())
    rules = [{**rule, "for": "1s", "labels": {**rule.get("labels", {}), "rules": "fast-copy"}}
             for group in shipped["groups"] for rule in group["rules"] if "alert" in rule]
    assert rules
    return {"groups": [{"name": "siamstream-shipped-fast", "interval": "1s", "rules": rules}]}


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
        (tmp_path / "shipped-fast.rules.yml").write_text(yaml.safe_dump(fast_copy_of_shipped_rules()))
        prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        prom_cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
        prom_cfg["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml"),
                                  str(tmp_path / "fast.rules.yml"), str(tmp_path / "shipped-fast.rules.yml")]
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


def am_delivered(am_receiver: WebhookReceiver, alertname: str, **labels: str) -> Callable[[], bool]:
    """Whether Alertmanager has delivered ``alertname`` firing, with these labels, to its webhook receiver."""
    def check() -> bool:
        return any(a["labels"].get("alertname") == alertname and a["status"] == "firing"
                   and all(a["labels"].get(k) == v for k, v in labels.items())
                   for n in am_receiver.alerts() for a in n.get("alerts", []))

    return check


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


@pytest.fixture(scope="module")
def conveyor_bank(tmp_path_factory: pytest.TempPathFactory, shared_data: Callable[..., Path],
                  pretrained_onnx: Path) -> Path:
    """A bank of the conveyor's first 200 frames (phones and a crushed can), built by the CLI."""
    video = shared_data("conveyor_video", "cutted.avi")
    bank = tmp_path_factory.mktemp("conveyor-bank") / "bank"
    built = siamstream("bank", "build", "--config", str(CONFIG), "--source", str(video), "--out", str(bank),
                       "--set", f'encoder.model="{pretrained_onnx}"', "--set", "source.max_frames=200",
                       "--set", "bank.false_alarm_rate=0.05")
    assert built.returncode == 0, built.stderr
    return bank


def test_flagged_parts_reach_prometheus_alertmanager_mqtt_and_a_webhook_that_was_down(
        tmp_path: Path, video: Path, pretrained_onnx: Path, conveyor_bank: Path, servers: dict[str, Any]) -> None:
    promtool = binary("promtool")
    am_receiver = servers["am_receiver"]
    receiver = WebhookReceiver()  # siamstream's webhook: down (nothing listening) when the run starts
    metrics_port = servers["metrics_port"]
    out, spool = tmp_path / "run", tmp_path / "spool"
    settings = [f'encoder.model="{pretrained_onnx}"', f'anomaly.bank="{conveyor_bank}"',
                f"metrics.port={metrics_port}", "output.video=false",
                f'alerts.webhook_url="{receiver.url}"', 'alerts.mqtt_host="127.0.0.1"',
                f"alerts.mqtt_port={servers['broker'].port}", f'alerts.mqtt_topic="{TOPIC}"',
                f'alerts.spool_dir="{spool}"', "alerts.backoff_initial_s=0.2", "alerts.backoff_max_s=1.0",
                "alerts.close_timeout_s=30"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(CONFIG), "--source", str(video), "--out",
         str(out), *(arg for s in settings for arg in ("--set", s))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    live: dict[str, Any] = {}
    try:
        failures = 'siamstream_alert_delivery_failures_total{sink="webhook",stream="conveyor"}'
        waiting = 'siamstream_alerts_spooled{sink="webhook",stream="conveyor"}'
        stalled = am_delivered(am_receiver, "SiamstreamAlertDeliveryStalled", sink="webhook", stream="conveyor")

        def outage_long_enough() -> bool:
            if proc.poll() is not None:
                return True
            base = f"http://127.0.0.1:{metrics_port}"
            if "metrics" not in live and scrape(metrics_port).get(
                    'siamstream_frames_processed_total{stream="conveyor"}', 0) > 0:
                # What the running pipeline serves, frames flowing: the live exposition and both probes.
                live.update(metrics=urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode(),
                            healthz=http_status(f"{base}/healthz"), readyz=http_status(f"{base}/readyz"))
            m = scrape(metrics_port)
            failed = m.get(failures, 0)
            return failed >= 3 and (m.get(waiting, 0) >= 2 or failed >= 8) and stalled()

        # Down until three deliveries failed and two alerts wait in the spool (or eight retries failed; the first
        # part is flagged mid-video), and the project's own delivery rule has fired and reached Alertmanager...
        wait_until(outage_long_enough, 300, "siamstream to fail delivering to the webhook that is down, and "
                                            "SiamstreamAlertDeliveryStalled to reach Alertmanager")
        assert proc.poll() is None, "the run ended before the outage was seen: " + proc.communicate()[1]
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

    # The running pipeline: alive, ready (model, bank, frames), and its live /metrics passes promtool's lint.
    assert (live.get("healthz"), live.get("readyz")) == (200, 200), live
    assert 'siamstream_bank_size{stream="conveyor"}' in live["metrics"]
    linted = subprocess.run([promtool, "check", "metrics"], input=live["metrics"], capture_output=True, text=True,
                            timeout=60)
    assert linted.returncode == 0 and (linted.stdout + linted.stderr).strip() == "", linted.stdout + linted.stderr

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
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml").read_text())["groups"]
    names = [r.get("alert") or r["record"] for g in shipped for r in g["rules"]]
    alerts = [r["alert"] for g in shipped for r in g["rules"] if "alert" in r]
    rule_groups = ([g["name"] for g in shipped], ["siamstream-shipped-fast"])  # as shipped; the alerts, fast

    def loaded_groups() -> list[list[dict]]:
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        return [[r for name in wanted for g in groups if g["name"] == name for r in g["rules"]]
                for wanted in rule_groups]

    # A rule not evaluated yet reports health "unknown" (a loaded machine can lag the 1 s interval); an error is "err".
    wait_until(lambda: all(r["health"] != "unknown" for rules in loaded_groups() for r in rules), 30,
               "Prometheus to evaluate every rule once")
    for loaded, expected in zip(loaded_groups(), (names, alerts), strict=True):
        assert [r["name"] for r in loaded] == expected
        unhealthy = [(r["name"], r["health"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
        assert unhealthy == []

    # Rules fired and Alertmanager delivered them to its webhook receiver: the fast rule on flagged parts, the
    # project's delivery rule during the outage (checked above), and the project's SiamstreamDown once the run
    # has ended and its scrapes fail.
    wait_until(am_delivered(am_receiver, "SiamstreamPartFlagged", stream="conveyor"), 30,
               "Alertmanager to deliver SiamstreamPartFlagged")
    wait_until(am_delivered(am_receiver, "SiamstreamDown", job="siamstream"), 30,
               "Alertmanager to deliver SiamstreamDown after the run ended")


def test_sigterm_with_the_webhook_down_keeps_every_alert_for_the_next_run(
        tmp_path: Path, video: Path, pretrained_onnx: Path, conveyor_bank: Path) -> None:
    """SIGTERM mid-run flushes the alert sinks too: MQTT delivers every flagged part before the process exits,
    the webhook's undelivered alerts stay in the spool, and the next run with that spool delivers them."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    subscriber = MqttSubscriber(broker.port, TOPIC, client_id="sigterm-subscriber")
    receiver = WebhookReceiver()  # down for the whole first run
    spool = tmp_path / "spool"
    settings = [f'encoder.model="{pretrained_onnx}"', f'anomaly.bank="{conveyor_bank}"', "metrics.port=0",
                "output.video=false", "output.progress_every_s=0.2", f'alerts.webhook_url="{receiver.url}"',
                'alerts.mqtt_host="127.0.0.1"', f"alerts.mqtt_port={broker.port}", f'alerts.mqtt_topic="{TOPIC}"',
                f'alerts.spool_dir="{spool}"', "alerts.backoff_initial_s=0.2", "alerts.backoff_max_s=1.0",
                "alerts.close_timeout_s=3"]

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "pipeline.cli", "run", "--config", str(CONFIG), "--source", str(video),
                "--out", str(out), *(arg for s in (*settings, *extra) for arg in ("--set", s))]

    try:
        proc = subprocess.Popen(command(tmp_path / "run1"), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            for line in proc.stderr:  # until a progress line reports a flagged part
                seen.append(line)
                flagged = re.search(r"frames \d+\S* .* flagged (\d+)", line)
                if flagged and int(flagged.group(1)) > 0:
                    break
            proc.send_signal(signal.SIGTERM)
            stdout, rest = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = "".join(seen) + rest
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert 0 < summary["frames"] < 535, "SIGTERM came after the video ended: the test proves nothing"
        events = [json.loads(line) for line in (tmp_path / "run1" / "events.jsonl").read_text().splitlines()]
        assert len(events) == summary["flagged"] >= 1
        flagged_tracks = sorted(e["track_id"] for e in events)

        # MQTT: every flagged part reached the subscriber before the process exited.
        wait_until(lambda: len(subscriber.unique()) >= len(events), 15, "every alert at the MQTT subscriber")
        assert sorted(m["track_id"] for m in subscriber.unique().values()) == flagged_tracks
        # The webhook: nothing delivered, every flagged part on disk, counted as such in the final metrics.
        final = parse_metrics((tmp_path / "run1" / "metrics.prom").read_text())
        assert final['siamstream_alerts_spooled{sink="webhook",stream="conveyor"}'] == len(events)
        assert final['siamstream_alerts_sent_total{sink="webhook",stream="conveyor"}'] == 0
        spooled = [json.loads(f.read_text()) for f in sorted(spool.rglob("*.json"))]
        assert sorted(a["track_id"] for a in spooled) == flagged_tracks
        assert {a["alert_id"] for a in spooled} == set(subscriber.unique())

        # The next run (a few frames, the receiver back) delivers what the first left, and empties the spool.
        receiver.start()
        second = subprocess.run(command(tmp_path / "run2", "source.max_frames=5"), cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert sorted(a["track_id"] for a in receiver.unique().values()) == flagged_tracks
        assert set(receiver.unique()) == {a["alert_id"] for a in spooled}
        assert list(spool.rglob("*.json")) == []
    finally:
        receiver.stop()
        subscriber.close()
        broker.stop()
