"""WebhookSink against a real HTTP receiver on 127.0.0.1 that goes down, hangs, fails and comes back."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.alerts.record import Alert, alert_id_for
from pipeline.alerts.webhook import WebhookSink, is_rejection
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


# ---- alerts the receiver rejects (dead letters) ----------------------------------------------------------------


def dead_letters(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool-dead-letter").glob("*.json"))


def test_a_rejected_alert_goes_to_the_dead_letter_folder_and_the_rest_follow_in_order(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = [flagged(t) for t in (1, 2, 3, 4)]
    poison = alert_id_for(results[1].events[0], "run-1")
    receiver.reject[poison] = (400, b'field "score" out of range:\n  got nan\n')
    receiver.start()
    sink = make_sink(run_id="run-1", max_rejections=3)
    for r in results:
        sink.write(r)
    wait_until(lambda: len(receiver.unique()) == 3, 10, "the 3 alerts behind the rejected one")
    sink.close()

    assert [a["track_id"] for a in receiver.alerts()] == [1, 3, 4]  # in order, each once
    attempts = receiver.attempts(poison)
    assert [status for status, _ in attempts] == [400, 400, 400]  # max_rejections tries, then set aside
    (dead,) = dead_letters(tmp_path)
    assert poison in dead.name
    assert dead.read_bytes() == attempts[0][1]  # the payload, byte for byte as it was sent
    assert Alert.from_bytes(dead.read_bytes()).evidence_jpeg[:2] == b"\xff\xd8"
    assert spool_files(tmp_path / "spool") == []
    assert value(metrics, "siamstream_alerts_dead_lettered_total") == 1
    assert value(metrics, "siamstream_alerts_sent_total") == 3
    assert value(metrics, "siamstream_alert_delivery_failures_total") == 3
    assert value(metrics, "siamstream_alerts_spooled") == 0
    assert value(metrics, "siamstream_alerts_dropped_total") == 0
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert str(tmp_path / "spool-dead-letter") in line and poison in line
    assert 'HTTP 400 Bad Request: field "score" out of range: got nan)' in line  # the answer, on one line

    # Dead letters stay: the next run on the same spool does not send them again.
    second = make_sink(run_id="run-2")
    second.close()
    assert len(receiver.attempts(poison)) == 3 and dead_letters(tmp_path) == [dead]


def test_a_moved_back_dead_letter_is_sent_by_the_next_run(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path) -> None:
    result = flagged(5)
    poison = alert_id_for(result.events[0], "run-1")
    receiver.reject[poison] = (422, b"")
    receiver.start()
    first = make_sink(run_id="run-1", max_rejections=2)
    first.write(result)
    wait_until(lambda: len(dead_letters(tmp_path)) == 1, 10, "the alert in the dead-letter folder")
    first.close()
    (dead,) = dead_letters(tmp_path)
    dead.rename(tmp_path / "spool" / dead.name)  # the receiver is fixed; the operator queues it again
    del receiver.reject[poison]
    second = make_sink(run_id="run-2")
    second.close()
    assert list(receiver.unique()) == [poison]
    assert dead_letters(tmp_path) == [] and spool_files(tmp_path / "spool") == []


def test_rejections_are_counted_per_alert_and_a_later_acceptance_delivers(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path) -> None:
    result = flagged(6)
    alert_id = alert_id_for(result.events[0], "run-1")
    receiver.reject[alert_id] = (409, b"busy with this one")
    receiver.start()
    sink = make_sink(run_id="run-1", max_rejections=4)
    sink.write(result)
    wait_until(lambda: len(receiver.attempts(alert_id)) >= 2, 10, "two rejections")
    del receiver.reject[alert_id]  # the receiver changes its mind before the 4th rejection
    wait_until(lambda: value(metrics, "siamstream_alerts_sent_total") == 1, 10, "the delivery")
    sink.close()
    assert dead_letters(tmp_path) == []
    assert value(metrics, "siamstream_alerts_dead_lettered_total") == 0
    assert list(receiver.unique()) == [alert_id]


def test_a_rejected_alert_that_cannot_be_moved_stays_in_the_spool(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "spool-dead-letter").write_text("a file where the folder should go")
    result = flagged(7)
    poison = alert_id_for(result.events[0], "run-1")
    receiver.reject[poison] = (400, b"")
    receiver.start()
    sink = make_sink(run_id="run-1", max_rejections=1)
    sink.write(result)
    wait_until(lambda: len(receiver.attempts(poison)) >= 3, 10, "repeated rejections")
    (kept,) = spool_files(tmp_path / "spool")  # not lost: still waiting
    assert poison in kept.name
    assert value(metrics, "siamstream_alerts_dead_lettered_total") == 0
    assert any("could not be moved" in r.getMessage() and "is retried" in r.getMessage() for r in caplog.records)
    (tmp_path / "spool-dead-letter").unlink()  # the disk is fixed: the next rejection moves it
    wait_until(lambda: len(dead_letters(tmp_path)) == 1, 10, "the alert in the dead-letter folder")
    assert spool_files(tmp_path / "spool") == []
    # the sender counts it just after moving it: wait for the count rather than race it
    wait_until(lambda: value(metrics, "siamstream_alerts_dead_lettered_total") == 1, 10, "the dead letter counted")


@pytest.mark.parametrize(("status", "max_rejections"), [
    (503, 2),  # receiver overloaded or down behind a proxy: retry
    (500, 2),
    (408, 2),  # Request Timeout: send it again
    (429, 2),  # Too Many Requests: send it again, later
    (None, 2),  # nothing listening
    (400, 0),  # dead-lettering turned off: retried like any failure
])
def test_failures_that_are_not_rejections_are_retried_forever(
        status: int | None, max_rejections: int, make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver,
        flagged: Callable[..., FrameResult], metrics: PipelineMetrics, tmp_path: Path) -> None:
    if status is not None:
        receiver.status = status
        receiver.start()
    sink = make_sink(max_rejections=max_rejections)
    sink.write(flagged(1, 2))
    wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 4 * max(max_rejections, 2), 20,
               "many failed attempts")
    assert value(metrics, "siamstream_alerts_dead_lettered_total") == 0
    assert not (tmp_path / "spool-dead-letter").exists()
    assert len(spool_files(tmp_path / "spool")) == 2 and value(metrics, "siamstream_alerts_spooled") == 2
    if status is not None:
        assert {s for _, s, _ in receiver.requests} == {status}
        receiver.status = 200
    else:
        receiver.start()
    wait_until(lambda: len(receiver.unique()) == 2, 10, "both alerts once the receiver accepts")


@pytest.mark.parametrize(("status", "rejection"), [
    (400, True), (401, True), (404, True), (413, True), (422, True), (499, True),
    (408, False), (429, False), (500, False), (503, False), (302, False), (200, False),
])
def test_is_rejection(status: int, rejection: bool) -> None:
    assert is_rejection(status) is rejection


def test_a_negative_max_rejections_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"max_rejections must be >= 0 \(0 = never dead-letter\), got -1"):
        WebhookSink("http://127.0.0.1:9/alerts", tmp_path / "spool", max_rejections=-1)


def test_userinfo_in_the_url_is_sent_as_basic_auth_and_never_logged(
        make_sink: Callable[..., WebhookSink], receiver: WebhookReceiver, flagged: Callable[..., FrameResult],
        metrics: PipelineMetrics, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = receiver.url.replace("http://", "http://alice:p%40ss-s3cret@") + "?token=tok-s3cret&site=a"
    sink = WebhookSink(url, tmp_path / "spool-auth", stream="line1", metrics=metrics.alert_sink("webhook"),
                       timeout_s=2.0, **FAST)
    try:
        sink.write(flagged(1))  # the receiver is down: failed deliveries are logged
        wait_until(lambda: value(metrics, "siamstream_alert_delivery_failures_total") >= 2, 10, "failed attempts")
        receiver.start()
        wait_until(lambda: len(receiver.unique()) == 1, 10, "the alert after the receiver came back")
    finally:
        sink.close()
    auth = receiver.headers[0]["Authorization"]
    assert auth == "Basic " + base64.b64encode(b"alice:p@ss-s3cret").decode()
    assert "s3cret" not in caplog.text and "alice" not in caplog.text
    assert "127.0.0.1" in caplog.text  # the failures were logged, with the host
    assert sink.url.startswith("http://***@127.0.0.1:") and sink.url.endswith("?token=***&site=***")
