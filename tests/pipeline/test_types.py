from __future__ import annotations

import numpy as np
import pytest

from pipeline.types import (
    AnomalyEvent,
    CropBatch,
    Detections,
    Embeddings,
    Frame,
    RecordShapeError,
    TrackObservation,
    TrackState,
)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (np.zeros((4, 4), np.uint8), "(H, W, 3)"),
        (np.zeros((4, 4, 4), np.uint8), "(H, W, 3)"),
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((0, 4, 3), np.uint8), "non-empty"),
    ],
)
def test_frame_rejects_bad_images(image: np.ndarray, expected: str) -> None:
    with pytest.raises(RecordShapeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Frame(0, 0.0, image)


def test_detections_normalise_dtypes_and_check_lengths() -> None:
    d = Detections(np.array([[0, 0, 10, 10]]), np.array([0.5]), np.array([-1]))
    assert d.xyxy.dtype == np.float32 and d.confidence.dtype == np.float32 and d.class_id.dtype == np.int64
    assert len(Detections.empty()) == 0 and Detections.empty().xyxy.shape == (0, 4)
    with pytest.raises(RecordShapeError, match=r"confidence shape must be \(1,\)"):
        Detections(np.array([[0, 0, 10, 10]]), np.array([0.5, 0.2]), np.array([-1]))
    with pytest.raises(RecordShapeError, match="x2 > x1"):
        Detections(np.array([[10, 0, 5, 10]]), np.array([0.5]), np.array([-1]))
    with pytest.raises(RecordShapeError, match=r"\(N, 4\)"):
        Detections(np.array([[0, 0, 10]]), np.array([0.5]), np.array([-1]))
    with pytest.raises(RecordShapeError, match="finite"):
        Detections(np.array([[0, 0, np.nan, 10]]), np.array([0.5]), np.array([-1]))


def test_crop_batch_and_embeddings_checks() -> None:
    CropBatch(np.zeros((2, 8, 8, 3), np.uint8), np.array([[0, 0, 1, 1], [0, 0, 2, 2]]))
    with pytest.raises(RecordShapeError, match="xyxy rows"):
        CropBatch(np.zeros((2, 8, 8, 3), np.uint8), np.array([[0, 0, 1, 1]]))
    with pytest.raises(RecordShapeError, match="uint8"):
        CropBatch(np.zeros((1, 8, 8, 3), np.float32), np.array([[0, 0, 1, 1]]))
    assert Embeddings(np.zeros((0, 7))).dim == 7
    with pytest.raises(RecordShapeError, match=r"\(N, D\)"):
        Embeddings(np.zeros(5))
    with pytest.raises(RecordShapeError, match="finite"):
        Embeddings(np.array([[np.inf, 0.0]]))


def test_track_observation_and_event_json() -> None:
    with pytest.raises(RecordShapeError, match="track_id"):
        TrackObservation(0, np.array([0, 0, 1, 1]), TrackState.CONFIRMED, 0)
    with pytest.raises(RecordShapeError, match=r"xyxy shape must be \(4,\)"):
        TrackObservation(1, np.array([0, 0, 1]), TrackState.CONFIRMED, 0)
    with pytest.raises(RecordShapeError, match="finite"):
        TrackObservation(1, np.array([0, 0, np.nan, 1]), TrackState.CONFIRMED, 0)
    with pytest.raises(RecordShapeError, match="x2 > x1"):
        TrackObservation(1, np.array([5, 0, 1, 1]), TrackState.CONFIRMED, 0)
    obs = TrackObservation(1, [[1, 2, 3, 4]], TrackState.CONFIRMED, 0)
    assert obs.xyxy.dtype == np.float32 and obs.xyxy.tolist() == [1, 2, 3, 4]
    ev = AnomalyEvent("line1", 7, 42, 2.1, 0.55, 0.4, 5, (1.0, 2.0, 3.0, 4.0), "e.png")
    js = ev.to_json()
    assert js["track_id"] == 7 and js["stream"] == "line1" and js["xyxy"] == [1.0, 2.0, 3.0, 4.0]
