"""The alert record: built from a real AnomalyEvent and a real evidence PNG, serialised and read back."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.alerts.record import Alert, AlertRecordError, alert_id_for, evidence_jpeg
from pipeline.types import FrameResult


def test_alert_carries_the_event_and_its_evidence_as_jpeg(flagged: Callable[..., FrameResult]) -> None:
    event = flagged(7).events[0]
    alert = Alert.from_event(event, "run-a", raised_at=1_700_000_000.5)
    obj = json.loads(alert.to_bytes())
    assert obj["schema"] == 1 and obj["event"] == "part_flagged"
    assert (obj["stream"], obj["track_id"], obj["frame_index"]) == ("line1", 7, 42)
    assert (obj["score"], obj["threshold"], obj["frames_scored"]) == (48.5, 39.5, 4)
    assert obj["timestamp"] == 2.1 and obj["raised_at"] == 1_700_000_000.5
    assert obj["xyxy"] == [10.0, 20.0, 42.0, 68.0]
    assert obj["evidence"]["path"] == event.evidence
    jpeg = base64.b64decode(obj["evidence"]["jpeg_base64"])
    assert jpeg[:2] == b"\xff\xd8"  # a JPEG, whatever format the crop was saved in
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (48, 32, 3)
    # The same picture: red on the left, white on the right (JPEG is lossy, so within a margin).
    assert np.abs(image[:, 2:14].astype(int) - (0, 0, 255)).max() < 40
    assert np.abs(image[:, 18:30].astype(int) - 255).max() < 40


def test_round_trip_through_bytes(flagged: Callable[..., FrameResult]) -> None:
    alert = Alert.from_event(flagged(3).events[0], "run-a", raised_at=5.0)
    back = Alert.from_bytes(alert.to_bytes())
    assert back == alert


def test_alert_id_is_stable_per_part_and_run_and_differs_otherwise(flagged: Callable[..., FrameResult]) -> None:
    e3, e4 = flagged(3, 4).events
    assert alert_id_for(e3, "run-a") == alert_id_for(e3, "run-a")
    ids = {alert_id_for(e3, "run-a"), alert_id_for(e4, "run-a"), alert_id_for(e3, "run-b")}
    assert len(ids) == 3  # another track, or the same track id in another run (ids restart), is another part


def test_missing_evidence_is_reported_not_invented(flagged: Callable[..., FrameResult], evidence: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    event = flagged(5).events[0]
    evidence.unlink()
    with caplog.at_level(logging.WARNING):
        alert = Alert.from_event(event, "run-a", raised_at=1.0)
    assert alert.evidence_jpeg == b"" and alert.evidence_path == str(evidence)
    assert "could not be read" in caplog.text
    assert evidence_jpeg("", 90) == b""


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"schema": 2}', "expected schema 1"),
        (b'{"schema": 1, "alert_id": "x"}', "missing field 'stream'"),
        (b'{"schema": 1, "alert_id": "x", "stream": "s", "track_id": 0, "frame_index": 1, "timestamp": 0,'
         b' "raised_at": 0, "score": 1, "threshold": 1, "frames_scored": 1, "xyxy": [0, 0, 1, 1],'
         b' "evidence": {"path": "", "jpeg_base64": ""}}', "track_id must be >= 1"),
        (b'{"schema": 1, "alert_id": "x", "stream": "s", "track_id": 1, "frame_index": 1, "timestamp": 0,'
         b' "raised_at": 0, "score": 1, "threshold": 1, "frames_scored": 1, "xyxy": [0, 0, 1, 1],'
         b' "evidence": {"path": "", "jpeg_base64": "aGVsbG8="}}', "evidence_jpeg must be JPEG data"),
    ],
)
def test_malformed_records_are_rejected_with_the_reason(payload: bytes, message: str) -> None:
    with pytest.raises(AlertRecordError, match=message):
        Alert.from_bytes(payload)
