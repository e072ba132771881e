"""The anomaly stage: edge crops unscored, one verdict per part from its scores, one event per flagged part,
evidence paths named per part, final verdicts counted, a swapped bank taking effect at the next frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipeline.anomaly.bank import build_bank
from pipeline.anomaly.inspector import PartInspector
from pipeline.anomaly.stage import AnomalyStage, edge_mask, evidence_path
from pipeline.metrics import PipelineMetrics
from pipeline.types import Embeddings, Frame, TrackObservation, TrackState, Verdict

DIM = 8


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def stage(tmp_path: Path) -> AnomalyStage:
    rng = np.random.default_rng(0)
    good = unit(np.abs(rng.normal(size=(60, DIM))) + np.eye(DIM)[0] * 4)  # good parts point along axis 0
    bank = build_bank(good[:, None, :], np.arange(60) // 3, "enc", (32, 32), level="global", false_alarm_rate=0.05)
    return AnomalyStage(bank, PartInspector(bank.meta.threshold, min_frames=2), PipelineMetrics(CollectorRegistry()),
                        "line", edge_margin=4, evidence_dir=tmp_path / "evidence")


def frame(index: int) -> Frame:
    return Frame(index, index / 10.0, np.zeros((100, 200, 3), np.uint8))


def test_edge_mask_keeps_boxes_whole_inside() -> None:
    boxes = np.array([[4, 4, 196, 96], [3, 10, 50, 50], [10, 10, 197, 50]], np.float32)
    assert edge_mask(boxes, 200, 100, 4).tolist() == [True, False, False]


def test_a_part_is_flagged_once_with_its_evidence_path_and_counted_when_it_leaves(stage: AnomalyStage) -> None:
    boxes = np.array([[20, 20, 60, 60], [100, 20, 140, 60], [0, 20, 30, 60]], np.float32)
    good = unit(np.eye(DIM)[0:1] * 4 + 0.1)
    bad = unit(np.eye(DIM)[DIM - 1:DIM])
    emb = Embeddings(np.vstack([good, bad, bad]))
    obs = [TrackObservation(t, boxes[t - 1], TrackState.CONFIRMED, t - 1) for t in (1, 2, 3)]
    events_all = []
    for i in range(4):
        out, events, maps = stage(frame(i), boxes, boxes, emb, obs, [])
        events_all += events
        assert maps == []  # a global bank has no patch maps
        assert np.isnan(out[2].score)  # at the edge: never scored, never judged
    assert [o.verdict for o in out] == [Verdict.GOOD, Verdict.DEFECT, Verdict.PENDING]
    assert [e.track_id for e in events_all] == [2] and stage.flagged == [2]
    assert events_all[0].frame_index == 1  # the second scored frame reaches min_frames = 2
    assert stage.evidence_dir is not None
    assert events_all[0].evidence == str(evidence_path(stage.evidence_dir, 2, 1))
    stage(frame(4), boxes, boxes, emb, [], [1, 2, 3])
    assert stage.inspected == 2  # track 3 never had a verdict


def test_a_swapped_bank_applies_from_the_next_frame(stage: AnomalyStage) -> None:
    old = stage.bank
    rng = np.random.default_rng(1)
    other = build_bank(unit(rng.normal(size=(30, DIM)))[:, None, :], np.arange(30), "enc", (32, 32), level="global")
    stage.swap(other)
    assert stage.bank is old  # nothing changes mid-frame
    boxes = np.array([[20, 20, 60, 60]], np.float32)
    stage(frame(0), boxes, boxes, Embeddings(unit(np.ones((1, DIM)))), [], [])
    assert stage.bank is other and stage.inspector.threshold == other.meta.threshold
    assert stage.metrics.registry.get_sample_value("siamstream_bank_reloads_total", {"stream": "default"}) == 1
