"""[alerts] -> alert sinks: defaults off, both sinks from one config, bad values stop at start with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.alerts.mqtt import MqttSink
from pipeline.alerts.webhook import WebhookSink
from pipeline.app import build_alert_sinks, build_sinks
from pipeline.config import Config, ConfigError, config_from_dict
from pipeline.metrics import PipelineMetrics
from pipeline.sinks import EventsJsonlSink
from tests.alert_servers import Mosquitto, WebhookReceiver

REPO = Path(__file__).resolve().parents[3]


def test_alerts_are_off_by_default(tmp_path: Path) -> None:
    assert build_alert_sinks(Config().alerts, "line1", tmp_path) == []
    assert not (tmp_path / "alert-spool").exists()


def test_both_sinks_from_one_config_share_a_run_id(tmp_path: Path) -> None:
    receiver = WebhookReceiver().start()
    broker = Mosquitto(tmp_path / "mosquitto").start()
    cfg = config_from_dict({"output": {"stream_name": "line 1", "video": False, "mot": False},
                            "alerts": {"webhook_url": receiver.url, "mqtt_host": "127.0.0.1",
                                       "mqtt_port": broker.port, "spool_dir": str(tmp_path / "spool")}})
    metrics = PipelineMetrics(CollectorRegistry(), "line 1")
    sinks = build_sinks(cfg.output, tmp_path / "out", 20.0, cfg.alerts, metrics)
    try:
        assert [type(s) for s in sinks] == [EventsJsonlSink, WebhookSink, MqttSink]
        webhook, mqtt = sinks[1], sinks[2]
        assert isinstance(webhook, WebhookSink) and isinstance(mqtt, MqttSink)
        assert webhook.run_id == mqtt.run_id  # one flagged part has one alert_id on both
        # One spool per stream (made safe for a path) and sink.
        assert webhook.spool.directory == tmp_path / "spool" / "line_1" / "webhook"
        assert mqtt.spool.directory == tmp_path / "spool" / "line_1" / "mqtt"
        for sink in ("webhook", "mqtt"):
            assert metrics.registry.get_sample_value("siamstream_alerts_spooled",
                                                     {"stream": "line 1", "sink": sink}) == 0
    finally:
        for s in sinks:
            s.close()
        broker.stop()
        receiver.stop()


def test_the_spool_defaults_to_the_output_directory(tmp_path: Path) -> None:
    cfg = config_from_dict({"alerts": {"webhook_url": "http://127.0.0.1:9/alerts", "close_timeout_s": 0.0}})
    (sink,) = build_alert_sinks(cfg.alerts, "default", tmp_path / "out")
    sink.close()
    assert isinstance(sink, WebhookSink)
    assert sink.spool.directory == tmp_path / "out" / "alert-spool" / "default" / "webhook"
    assert sink.dead_letter_dir == tmp_path / "out" / "alert-spool" / "default" / "webhook-dead-letter"
    assert sink.max_rejections == 5


def test_webhook_max_rejections_reaches_the_sink(tmp_path: Path) -> None:
    cfg = config_from_dict({"alerts": {"webhook_url": "http://127.0.0.1:9/alerts", "close_timeout_s": 0.0,
                                       "webhook_max_rejections": 0}})
    (sink,) = build_alert_sinks(cfg.alerts, "default", tmp_path / "out")
    sink.close()
    assert isinstance(sink, WebhookSink) and sink.max_rejections == 0


@pytest.mark.parametrize(("alerts", "fragments"), [
    ({"webhook_url": "127.0.0.1:5001/alerts"}, ["[alerts] webhook_url", "'127.0.0.1:5001/alerts'",
                                                 "allowed: an http:// or https:// URL with a host"]),
    ({"webhook_url": "http://"}, ["[alerts] webhook_url", "with a host"]),
    ({"webhook_url": "http://:5001/alerts"}, ["[alerts] webhook_url", "with a host"]),
    ({"webhook_url": "http://user:s3cret@/alerts"}, ["'http://***@/alerts'", "with a host"]),
    ({"webhook_url": "http://h/al erts?token=s3cret"}, ["token=***", "no spaces"]),
    ({"webhook_url": "ftp://u:s3cret@h/x"}, ["'ftp://***@h/x'", "http:// or https://"]),
    ({"mqtt_topic": "line/#"}, ["[alerts] mqtt_topic", "'line/#'", "without the wildcards + and #"]),
    ({"mqtt_port": 0}, ["[alerts] mqtt_port", "allowed range 1 .. 65535"]),
    ({"webhook_max_rejections": -1}, ["[alerts] webhook_max_rejections", "-1", "allowed range 0 .. 1000000"]),
    ({"backoff_initial_s": 5.0, "backoff_max_s": 1.0}, ["backoff_max_s = 1.0 is below backoff_initial_s = 5.0"]),
    ({"webhok_url": "http://x"}, ["unknown key [alerts] 'webhok_url'", "did you mean 'webhook_url'"]),
])
def test_bad_alert_settings_name_the_key_and_what_is_allowed(alerts: dict[str, object],
                                                              fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"alerts": alerts}, "line.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("line.toml") and "s3cret" not in message
    for fragment in fragments:
        assert fragment in message


def test_the_command_line_reports_a_bad_url_in_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "config", "check", str(REPO / "config.toml"),
                           "--set", 'alerts.webhook_url="ftp://host/alerts"'], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"siamstream: error: {REPO / 'config.toml'} (with --set overrides): [alerts] webhook_url: got "
        "'ftp://host/alerts', allowed: an http:// or https:// URL with a host and no spaces (e.g. "
        "'http://127.0.0.1:5001/alerts') or '' (off)"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://", "127.0.0.1:6379", "redis://u:hunter2@/0",
                                 "redis://:hunter2@127.0.0.1:abc/0", "redis:/u:hunter2@127.0.0.1/0"])
def test_a_redis_url_that_cannot_work_is_refused_at_config_check_without_its_secret(url: str) -> None:
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"\[alerts\] redis_url.*or rediss:// \(TLS\) URL with a host") as err:
        load_config(None, [f'alerts.redis_url="{url}"'])
    assert "hunter2" not in str(err.value)


def test_a_redis_url_builds_the_redis_sink_beside_the_others(tmp_path: Path) -> None:
    from pipeline import app
    from pipeline.alerts.redis_streams import RedisStreamsSink
    from pipeline.config import load_config

    cfg = load_config(None, ['alerts.redis_url="redis://127.0.0.1:1/0"', 'alerts.redis_key="line:alerts"',
                             "alerts.close_timeout_s=0"])
    sinks = app.build_alert_sinks(cfg.alerts, "line1", tmp_path)
    try:
        assert [type(s) for s in sinks] == [RedisStreamsSink]
        assert sinks[0].key == "line:alerts" and (tmp_path / "alert-spool" / "line1" / "redis").is_dir()
    finally:
        for s in sinks:
            s.close()
