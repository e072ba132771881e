"""RedisStreamsSink against a real redis-server on 127.0.0.1: alerts appended once each, the stream capped, a
server that goes away and comes back, and an append whose answer is lost that does not append twice."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.alerts.record import Alert
from pipeline.alerts.redis_streams import RedisStreamsSink
from pipeline.metrics import PipelineMetrics
from pipeline.types import FrameResult
from tests.alert_servers import RedisServer, free_port, wait_until


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.stop()


def entries(server: RedisServer, key: str = "siamstream:alerts") -> list[dict[bytes, bytes]]:
    return [fields for _, fields in server.client().xrange(key)]


def test_each_alert_is_one_entry_with_its_fields_and_the_whole_alert(
        server: RedisServer, tmp_path: Path, flagged: Callable[..., FrameResult], metrics: PipelineMetrics) -> None:
    sink = RedisStreamsSink(server.url, tmp_path / "spool", metrics=metrics.alert_sink("redis"), close_timeout_s=5)
    sink.write(flagged(3, 4))
    sink.write(flagged(5, frame_index=50))
    wait_until(lambda: len(entries(server)) == 3, 10, "three entries")
    sink.close()
    got = entries(server)
    assert [int(e[b"track_id"]) for e in got] == [3, 4, 5]
    alerts = [Alert.from_bytes(e[b"alert"]) for e in got]
    assert [a.alert_id for a in alerts] == [e[b"alert_id"].decode() for e in got]
    assert len({a.alert_id for a in alerts}) == 3 and alerts[0].evidence_jpeg[:2] == b"\xff\xd8"
    assert all(e[b"stream"] == b"line1" and float(e[b"score"]) > float(e[b"threshold"]) for e in got)
    get = metrics.registry.get_sample_value
    assert get("siamstream_alerts_sent_total", {"stream": "line1", "sink": "redis"}) == 3
    assert get("siamstream_alerts_spooled", {"stream": "line1", "sink": "redis"}) == 0


def test_a_second_append_of_one_alert_adds_nothing(server: RedisServer, tmp_path: Path,
                                                   flagged: Callable[..., FrameResult]) -> None:
    """What happens when Redis appended an alert but its answer was lost: the sink tries again."""
    sink = RedisStreamsSink(server.url, tmp_path / "spool", close_timeout_s=5)
    sink.write(flagged(7))
    wait_until(lambda: len(entries(server)) == 1, 10, "one entry")
    alert = Alert.from_bytes(entries(server)[0][b"alert"])
    sink.append(alert)  # the retry
    sink.append(alert)
    sink.close()
    assert len(entries(server)) == 1


def test_the_stream_is_capped(server: RedisServer, tmp_path: Path, flagged: Callable[..., FrameResult]) -> None:
    sink = RedisStreamsSink(server.url, tmp_path / "spool", maxlen=8, close_timeout_s=30)
    for i in range(40):
        sink.write(flagged(i + 1, frame_index=i))
    wait_until(lambda: int(entries(server)[-1][b"track_id"]) == 40 if entries(server) else False, 30, "the last")
    sink.close()
    n = server.client().xlen("siamstream:alerts")
    assert 8 <= n <= 12  # MAXLEN ~ 8 with nodes of 4 entries
    assert int(entries(server)[-1][b"track_id"]) == 40  # the newest kept


def test_alerts_wait_on_disk_while_redis_is_down_and_arrive_once_it_is_back(
        tmp_path: Path, flagged: Callable[..., FrameResult], metrics: PipelineMetrics) -> None:
    server = RedisServer()  # not started: down at start
    sink = RedisStreamsSink(server.url, tmp_path / "spool", metrics=metrics.alert_sink("redis"),
                            backoff_initial_s=0.05, backoff_max_s=0.2, timeout_s=0.5, close_timeout_s=5)
    try:
        sink.write(flagged(1))
        sink.write(flagged(2, frame_index=43))
        get = metrics.registry.get_sample_value
        wait_until(lambda: (get("siamstream_alert_delivery_failures_total", {"stream": "line1", "sink": "redis"})
                            or 0) >= 2, 10, "failed attempts")
        assert len(list((tmp_path / "spool").glob("*.json"))) == 2  # kept on disk
        server.start()
        wait_until(lambda: len(entries(server)) == 2, 15, "both alerts delivered")
        server.stop()  # goes away again mid-run
        sink.write(flagged(3, frame_index=44))
        wait_until(lambda: (get("siamstream_alert_delivery_failures_total", {"stream": "line1", "sink": "redis"})
                            or 0) >= 4, 10, "failed attempts while down again")
        server.start()  # back, empty (no persistence): the alert waiting on disk arrives
        wait_until(lambda: len(entries(server)) == 1, 15, "the third alert")
        assert int(entries(server)[0][b"track_id"]) == 3
    finally:
        sink.close()
        server.stop()
    assert list((tmp_path / "spool").glob("*.json")) == []


def test_a_bad_url_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisStreamsSink("http://127.0.0.1:6379", tmp_path / "spool")


def test_a_password_in_the_url_reaches_no_log_line(tmp_path: Path, flagged: Callable[..., FrameResult],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens: every attempt fails and is logged
    sink = RedisStreamsSink(f"redis://user:hunter2@127.0.0.1:{port}/0", tmp_path / "spool", backoff_initial_s=0.05,
                            timeout_s=0.2, close_timeout_s=0.5)
    sink.write(flagged(1))
    wait_until(lambda: any("redis" in r.getMessage() for r in caplog.records), 10, "a failure logged")
    sink.close()
    assert not any("hunter2" in r.getMessage() for r in caplog.records)
    assert json.dumps([r.getMessage() for r in caplog.records]).count("***") >= 1
