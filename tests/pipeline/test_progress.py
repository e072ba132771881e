"""Progress: a tqdm bar with rate and time left on a terminal, periodic log lines with the same figures elsewhere."""

from __future__ import annotations

import io
import logging
import time

import pytest

from pipeline.progress import Progress


def test_without_a_terminal_it_logs_done_total_rate_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()  # not a terminal: no bar
    with caplog.at_level(logging.INFO, logger="siamstream.progress"), \
            Progress("bank: good parts", 40, "frame", every_s=0.01, stream=stream) as bar:
        for _ in range(20):
            bar.update(1, "12 crops of 3 parts")
            time.sleep(0.002)
        middle = [r.getMessage() for r in caplog.records]
    assert stream.getvalue() == ""
    assert middle and all(m.startswith("bank: good parts: ") for m in middle)
    last = middle[-1]
    assert "/40 frames (" in last and "frames/s" in last and " left" in last and last.endswith("12 crops of 3 parts")
    final = caplog.records[-1].getMessage()
    assert final.startswith("bank: good parts: 20/40 frames (50%)")


def test_unknown_total_and_only_a_final_line() -> None:
    bar = Progress("reading", 0, "image", every_s=0, stream=io.StringIO())
    bar.update(7)
    assert bar.line().startswith("reading: 7 images, ") and "elapsed" in bar.line()
    bar.close()
    bar.close()  # idempotent


def test_on_a_terminal_it_draws_a_bar_with_rate_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="siamstream.progress"), \
            Progress("epoch 1/3", 10, "batch", stream=stream, bar=True) as bar:
        for _ in range(10):
            bar.update(1, "loss 0.41")
    drawn = stream.getvalue()
    assert "epoch 1/3" in drawn and "10/10" in drawn and "batch/s" in drawn and "loss 0.41" in drawn
    assert not caplog.records  # the bar replaces the log lines
