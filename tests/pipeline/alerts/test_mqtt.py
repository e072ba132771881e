"""MqttSink against a real mosquitto broker on 127.0.0.1 that is down at start, restarts, or never answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.alerts.mqtt import MqttSink
from pipeline.alerts.record import Alert, alert_id_for
from pipeline.metrics import PipelineMetrics
from pipeline.types import FrameResult
from tests.alert_servers import Mosquitto, MqttSubscriber, free_port, mosquitto_binary, wait_until

TOPIC = "factory/line1/alerts"
FAST: dict[str, Any] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}


def value(metrics: PipelineMetrics, name: str) -> float:
    v = metrics.registry.get_sample_value(name, {"stream": "line1", "sink": "mqtt"})
    return 0.0 if v is None else v


def tracks(received: dict[str, dict[str, Any]]) -> list[int]:
    return sorted(m["track_id"] for m in received.values())


@pytest.fixture
def subscriber(broker: Mosquitto) -> Iterator[MqttSubscriber]:
    """Subscribed (QoS 1, persistent session) to TOPIC before any sink publishes."""
    sub = MqttSubscriber(broker.port, TOPIC)
    yield sub
    sub.close()


@pytest.fixture
def make_sink(tmp_path: Path, metrics: PipelineMetrics) -> Iterator[Callable[..., MqttSink]]:
    made: list[MqttSink] = []

    def make(port: int, **kwargs: Any) -> MqttSink:
        args = {"stream": "line1", "metrics": metrics.alert_sink("mqtt"), "topic": TOPIC, **FAST, **kwargs}
        sink = MqttSink("127.0.0.1", tmp_path / "spool", port=port, **args)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


def spool_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool").glob("*.json"))


def test_each_flagged_part_is_published_and_acknowledged(make_sink: Callable[..., MqttSink], broker: Mosquitto,
                                                         subscriber: MqttSubscriber,
                                                         flagged: Callable[..., FrameResult],
                                                         metrics: PipelineMetrics, tmp_path: Path) -> None:
    sink = make_sink(broker.port)
    sink.write(flagged(1, 2))
    sink.write(flagged(3, frame_index=60))
    sink.close()  # returns once every PUBACK is in
    assert value(metrics, "siamstream_alerts_sent_total") == 3
    assert value(metrics, "siamstream_alerts_spooled") == 0
    assert spool_files(tmp_path) == []
    wait_until(lambda: len(subscriber.unique()) == 3, 10, "the subscriber to get 3 alerts")
    assert tracks(subscriber.unique()) == [1, 2, 3]
    assert len(subscriber.received()) == 3  # no copies when nothing went wrong
    alert = Alert.from_json(subscriber.received()[0])  # the same record a webhook receiver gets
    assert alert.evidence_jpeg[:2] == b"\xff\xd8"


def test_broker_down_at_start_then_up(make_sink: Callable[..., MqttSink], broker: Mosquitto,
                                      subscriber: MqttSubscriber, flagged: Callable[..., FrameResult],
                                      metrics: PipelineMetrics, tmp_path: Path) -> None:
    broker.stop()  # the subscriber's session (and subscription) is saved by the broker
    sink = make_sink(broker.port)
    sink.write(flagged(1, 2, 3))
    wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 2, 10,
               "failed connection attempts")
    assert len(spool_files(tmp_path)) == 3 and value(metrics, "siamstream_alerts_spooled") == 3
    broker.start()
    wait_until(lambda: len(subscriber.unique()) == 3, 15, "the 3 alerts once the broker is up")
    wait_until(lambda: value(metrics, "siamstream_alerts_spooled") == 0, 10, "every PUBACK")
    assert tracks(subscriber.unique()) == [1, 2, 3]
    assert spool_files(tmp_path) == []


def test_nothing_is_lost_across_a_broker_restart(make_sink: Callable[..., MqttSink], broker: Mosquitto,
                                                 subscriber: MqttSubscriber, flagged: Callable[..., FrameResult],
                                                 metrics: PipelineMetrics) -> None:
    sink = make_sink(broker.port)
    for t in (1, 2, 3):
        sink.write(flagged(t))
    wait_until(lambda: value(metrics, "siamstream_alerts_sent_total") == 3, 10, "the first 3 PUBACKs")
    broker.stop()
    for t in (4, 5, 6):
        sink.write(flagged(t))
    wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 1, 10, "the lost connection")
    broker.start()
    for t in (7, 8, 9):
        sink.write(flagged(t))
    sink.close()
    assert value(metrics, "siamstream_alerts_sent_total") == 9
    wait_until(lambda: len(subscriber.unique()) == 9, 15, "all 9 alerts at the subscriber")
    assert tracks(subscriber.unique()) == list(range(1, 10))


def test_unacknowledged_alerts_are_published_by_the_next_run(make_sink: Callable[..., MqttSink], broker: Mosquitto,
                                                            subscriber: MqttSubscriber,
                                                            flagged: Callable[..., FrameResult],
                                                            tmp_path: Path) -> None:
    broker.stop()
    first = make_sink(broker.port, close_timeout_s=0.3)
    results = [flagged(t) for t in (1, 2, 3, 4)]
    for r in results:
        first.write(r)
    start = time.monotonic()
    first.close()
    assert time.monotonic() - start < 3.0
    assert len(spool_files(tmp_path)) == 4
    expected = {alert_id_for(r.events[0], first.run_id) for r in results}

    broker.start()
    second = make_sink(broker.port)  # a restart, with a new run id, on the same spool
    wait_until(lambda: len(subscriber.unique()) == 4, 15, "the earlier run's alerts")
    second.close()
    assert set(subscriber.unique()) == expected
    assert spool_files(tmp_path) == []


@pytest.fixture
def silent_broker() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung broker (no CONNACK, no PUBACK)."""
    mosquitto_binary()  # same prerequisites as the other MQTT tests
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # the kernel completes handshakes; nobody ever reads
        yield int(s.getsockname()[1])


def test_writes_stay_fast_while_the_broker_hangs(make_sink: Callable[..., MqttSink], silent_broker: int,
                                                 flagged: Callable[..., FrameResult], tmp_path: Path) -> None:
    sink = make_sink(silent_broker, max_queue=2, close_timeout_s=0.3)
    slowest = 0.0
    for t in range(1, 31):
        start = time.perf_counter()
        sink.write(flagged(t))
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 0.05, f"write() took {slowest * 1000:.1f} ms while the broker hung"
    sink.close()
    assert len(spool_files(tmp_path)) == 30  # none acknowledged, none lost


def test_a_broker_that_is_not_there_does_not_stop_construction(make_sink: Callable[..., MqttSink],
                                                               flagged: Callable[..., FrameResult],
                                                               metrics: PipelineMetrics) -> None:
    mosquitto_binary()
    start = time.monotonic()
    sink = make_sink(free_port(), close_timeout_s=0.2)
    assert time.monotonic() - start < 1.0
    sink.write(flagged(1))
    wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 1, 10, "a failed connection")
    sink.close()
    assert value(metrics, "siamstream_alerts_spooled") == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"topic": "a/+/b"}, "without the wildcards"),
    ({"topic": ""}, "non-empty"),
    ({"port": 0}, "port must be in 1..65535"),
    ({"max_inflight": 0}, "max_inflight must be >= 1"),
])
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        MqttSink("127.0.0.1", tmp_path / "spool", **kwargs)
