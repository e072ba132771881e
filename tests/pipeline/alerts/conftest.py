"""Fixtures of the alert sink tests: flagged-part results with a real evidence crop, real servers, fresh metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipeline.metrics import PipelineMetrics
from pipeline.types import AnomalyEvent, Detections, Frame, FrameResult
from tests.alert_servers import Mosquitto, WebhookReceiver

STREAM = "line1"


@pytest.fixture
def evidence(tmp_path: Path) -> Path:
    """A 48x32 BGR PNG crop, as the pipeline saves for a flagged part: left half red, right half white."""
    crop = np.full((48, 32, 3), 255, np.uint8)
    crop[:, :16] = (0, 0, 255)
    path = tmp_path / "evidence" / "track000007_frame0000042.png"
    path.parent.mkdir()
    assert cv2.imwrite(str(path), crop)
    return path


@pytest.fixture
def flagged(evidence: Path) -> Callable[..., FrameResult]:
    """``flagged(track_id, ...)``: the FrameResult of a frame in which those tracks were flagged."""

    def make(*track_ids: int, frame_index: int = 42) -> FrameResult:
        events = [AnomalyEvent(STREAM, t, frame_index, frame_index / 20, 41.5 + t, 39.5, 4,
                               (10.0, 20.0, 42.0, 68.0), str(evidence)) for t in track_ids]
        frame = Frame(frame_index, frame_index / 20, np.zeros((8, 8, 3), np.uint8))
        return FrameResult(frame, Detections.empty(), [], events)

    return make


@pytest.fixture
def metrics() -> PipelineMetrics:
    return PipelineMetrics(CollectorRegistry(), STREAM)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on a free port, not started: the test brings it up (``start()``) when it wants."""
    r = WebhookReceiver()
    yield r
    r.release()
    r.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto on a free 127.0.0.1 port (skips when mosquitto is not installed)."""
    b = Mosquitto(tmp_path / "mosquitto").start()
    yield b
    b.stop()
