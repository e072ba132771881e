"""One contract for every alert sink: the Sink protocol, as the runner uses it, with real receivers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.alerts.mqtt import MqttSink
from pipeline.alerts.outbox import AlertOutbox
from pipeline.alerts.redis_streams import RedisStreamsSink
from pipeline.alerts.webhook import WebhookSink
from pipeline.sinks import Sink, SinkError
from pipeline.types import FrameResult
from tests.alert_servers import Mosquitto, RedisServer, WebhookReceiver


@pytest.fixture(params=["webhook", "mqtt", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Path], AlertOutbox]]:
    """A factory of one kind of alert sink, its receiver running."""
    if request.param == "webhook":
        receiver = WebhookReceiver().start()
        yield lambda spool: WebhookSink(receiver.url, spool, close_timeout_s=1.0)
        receiver.stop()
    elif request.param == "redis":
        server = RedisServer().start()
        yield lambda spool: RedisStreamsSink(server.url, spool, close_timeout_s=1.0)
        server.stop()
    else:
        broker = Mosquitto(tmp_path / "mosquitto").start()
        yield lambda spool: MqttSink("127.0.0.1", spool, port=broker.port, close_timeout_s=1.0)
        broker.stop()


def test_follows_the_sink_protocol(make: Callable[[Path], AlertOutbox], tmp_path: Path,
                                   flagged: Callable[..., FrameResult]) -> None:
    sink: Sink = make(tmp_path / "spool")
    sink.write(flagged())  # no events: nothing to send
    sink.write(flagged(1))
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(RuntimeError, match="write\\(\\) after close\\(\\)"):
        sink.write(flagged(2))
    assert list((tmp_path / "spool").glob("*.json")) == []  # the one alert was delivered at close


def test_one_spool_per_process(make: Callable[[Path], AlertOutbox], tmp_path: Path) -> None:
    first = make(tmp_path / "spool")
    try:
        with pytest.raises(SinkError, match="in use by another process"):
            make(tmp_path / "spool")
    finally:
        first.close()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_queue": 0}, "max_queue must be >= 1"),
    ({"backoff_initial_s": 0.0}, "backoff_initial_s must be > 0"),
    ({"backoff_initial_s": 2.0, "backoff_max_s": 1.0}, "backoff_max_s must be >= backoff_initial_s"),
    ({"close_timeout_s": -1.0}, "close_timeout_s must be >= 0"),
    ({"jpeg_quality": 0}, "jpeg_quality must be in 1..100"),
])
def test_bad_options_are_refused_before_anything_starts(kwargs: dict[str, float], message: str,
                                                        tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        WebhookSink("http://127.0.0.1:9/alerts", tmp_path / "spool", **kwargs)
    assert not (tmp_path / "spool").exists()
