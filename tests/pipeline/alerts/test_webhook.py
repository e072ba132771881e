"""WebhookSink against a real HTTP receiver on 127.0.0.1 that goes down, hangs, fails and comes back."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.alerts.record import alert_id_for
from pipeline.alerts.webhook import WebhookSink
from pipeline.metrics import PipelineMetrics
from pipeline.types import FrameResult
from tests.alert_servers import WebhookReceiver, wait_until

# Short retry delays keep the tests fast; the logic is the one the production defaults run.
FAST: dict[str, Any] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}


def value(metrics: PipelineMetrics, name: str) -> float:
    v = metrics.registry.get_sample_value(name, {"stream": "line1", "sink": "webhook"})
    return 0.0 if v is None else v


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def tracks(received: dict[str, dict[str, Any]]) -> list[int]:
    return sorted(a["track_id"] for a in received.values())


@pytest.fixture
def make_sink(tmp_path: Path, metrics: PipelineMetrics,
              receiver: WebhookReceiver) -> Iterator[Callable[..., WebhookSink]]:
    made: list[WebhookSink] = []

    def make(**kwargs: Any) -> WebhookSink:
        args = {"stream": "line1", "metrics": metrics.alert_sink("webhook"), "timeout_s": 2.0, **FAST, **kwargs}
        sink = WebhookSink(receiver.url, tmp_path / "spool", **args)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


def test_each_flagged_part_is_posted_once_with_its_evidence(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path) -> None:
    receiver.start()
    sink = make_sink()
    sink.write(flagged(1, 2))
    sink.write(flagged())  # a frame without flagged parts sends nothing
    sink.write(flagged(3, frame_index=50))
    sink.close()
    got = receiver.alerts()
    assert sorted(a["track_id"] for a in got) == [1, 2, 3]  # exactly once each: no retries were needed
    for alert, headers in zip(got, receiver.headers, strict=True):
        assert headers["Idempotency-Key"] == alert["alert_id"]
        assert headers["Content-Type"] == "application/json"
        assert base64.b64decode(alert["evidence"]["jpeg_base64"])[:2] == b"\xff\xd8"
    assert value(metrics, "siamstream_alerts_sent_total") == 3
    assert value(metrics, "siamstream_alert_delivery_failures_total") == 0
    assert value(metrics, "siamstream_alerts_spooled") == 0
    assert spool_files(tmp_path / "spool") == []


def test_alerts_wait_on_disk_while_the_receiver_is_down_and_go_when_it_is_back(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path) -> None:
    sink = make_sink()
    sink.write(flagged(1, 2, 3))
    wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 2, 10, "failed attempts")
    assert len(spool_files(tmp_path / "spool")) == 3
    assert value(metrics, "siamstream_alerts_spooled") == 3
    receiver.start()
    wait_until(lambda: len(receiver.unique()) == 3, 10, "the 3 alerts after the receiver came back")
    wait_until(lambda: value(metrics, "siamstream_alerts_spooled") == 0, 5, "an empty spool")
    assert tracks(receiver.unique()) == [1, 2, 3]
    assert value(metrics, "siamstream_alerts_sent_total") == 3
    assert spool_files(tmp_path / "spool") == []


def test_nothing_is_lost_across_receiver_downtime(make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver,
                                                  flagged: Callable[..., FrameResult],
                                                  metrics: PipelineMetrics) -> None:
    receiver.start()
    sink = make_sink()
    for t in range(1, 6):
        sink.write(flagged(t))
    wait_until(lambda: len(receiver.unique()) == 5, 10, "the first 5 alerts")
    receiver.stop()
    for t in range(6, 11):
        sink.write(flagged(t))
    wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 1, 10, "a failed attempt")
    receiver.start()
    for t in range(11, 16):
        sink.write(flagged(t))
    sink.close()
    assert tracks(receiver.unique()) == list(range(1, 16))
    assert value(metrics, "siamstream_alerts_dropped_total") == 0


def test_writes_stay_fast_while_the_receiver_hangs_and_overflow_goes_to_the_spool(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path) -> None:
    receiver.start()
    receiver.hang()  # accepts the connection and the body, never answers
    sink = make_sink(max_queue=2, timeout_s=1.0)
    sink.write(flagged(1))
    wait_until(lambda: receiver.hung == 1, 10, "the first alert's request to hang")
    slowest = 0.0
    for t in range(2, 22):
        start = time.perf_counter()
        sink.write(flagged(t))
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 0.05, f"write() took {slowest * 1000:.1f} ms while the receiver hung"
    # The delivery thread is stuck in the request: the queue holds max_queue alerts, the rest went to disk.
    assert len(spool_files(tmp_path / "spool")) >= 1 + (20 - 2)
    wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 1, 10, "the request to time out")
    receiver.release()
    wait_until(lambda: len(receiver.unique()) == 21, 15, "all 21 alerts after the receiver recovered")
    assert tracks(receiver.unique()) == list(range(1, 22))
    assert value(metrics, "siamstream_alerts_dropped_total") == 0


def test_close_flushes_what_is_waiting(make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver,
                                       flagged: Callable[..., FrameResult], tmp_path: Path) -> None:
    receiver.start()
    sink = make_sink()
    for t in range(1, 11):
        sink.write(flagged(t))
    sink.close()  # no waiting before: close itself delivers
    assert tracks(receiver.unique()) == list(range(1, 11))
    assert spool_files(tmp_path / "spool") == []


def test_close_gives_up_on_time_and_the_next_run_delivers_the_rest(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path) -> None:
    first = make_sink(close_timeout_s=0.3)
    results = [flagged(t) for t in (1, 2, 3, 4)]
    for r in results:
        first.write(r)
    start = time.monotonic()
    first.close()
    assert time.monotonic() - start < 3.0  # bounded by close_timeout_s (+ a short grace)
    assert len(spool_files(tmp_path / "spool")) == 4
    assert value(metrics, "siamstream_alerts_spooled") == 4
    expected = {alert_id_for(r.events[0], first.run_id) for r in results}

    receiver.start()
    second = WebhookSink(receiver.url, tmp_path / "spool", stream="line1", **FAST)  # a restart: new run
    try:
        wait_until(lambda: len(receiver.unique()) == 4, 10, "the earlier run's alerts")
    finally:
        second.close()
    assert set(receiver.unique()) == expected  # the same alerts, ids unchanged, each once
    assert len(receiver.alerts()) == 4
    assert spool_files(tmp_path / "spool") == []


def test_a_non_2xx_answer_is_a_failed_attempt(make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver,
                                              flagged: Callable[..., FrameResult], metrics: PipelineMetrics) -> None:
    receiver.status = 503
    receiver.start()
    sink = make_sink()
    sink.write(flagged(9))
    wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 2, 10, "rejected attempts")
    assert receiver.alerts() == []
    receiver.status = 200
    wait_until(lambda: value(metrics, "siamstream_alerts_sent_total") == 1, 10, "delivery once the receiver accepts")
    assert len(receiver.unique()) == 1


def test_a_full_spool_keeps_the_newest_and_counts_the_drops(make_sink: Callable[..., WebhookSink],
                                                           receiver: WebhookReceiver,
                                                           flagged: Callable[..., FrameResult],
                                                           metrics: PipelineMetrics) -> None:
    sink = make_sink(spool_max_alerts=3)
    sink.write(flagged(1, 2, 3, 4, 5))
    wait_until(lambda: value(metrics, "siamstream_alerts_dropped_total") == 2, 10, "2 dropped alerts")
    receiver.start()
    sink.close()
    assert tracks(receiver.unique()) == [3, 4, 5]


@pytest.mark.parametrize("url", ["", "127.0.0.1:5001/alerts", "ftp://host/x", "http://"])
def test_a_bad_url_is_refused_with_an_example(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is not an http:// or https:// URL with a host; e\.g\. http://"):
        WebhookSink(url, tmp_path / "spool")
