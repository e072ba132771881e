from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ConfigError, TrackerConfig
from pipeline.tracking.tracker import Tracker, TrackerOutput
from pipeline.types import Detections, Embeddings, TrackState


def dets(*boxes: list[float]) -> Detections:
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(n, 4), np.ones(n), -np.ones(n))


def emb(*vectors: list[float]) -> Embeddings:
    v = np.array(vectors, np.float32).reshape(len(vectors), -1)
    return Embeddings(v / np.linalg.norm(v, axis=1, keepdims=True))


def ids(out) -> list[int]:  # type: ignore[no-untyped-def]
    return [o.track_id for o in out.observations if o.detection_index >= 0]


def test_two_boxes_two_frames_keep_ids() -> None:
    t = Tracker(TrackerConfig(min_hits=1))
    a = t.update(dets([0, 0, 10, 10], [50, 50, 60, 60]), emb([1, 0], [0, 1]), 0.0)
    b = t.update(dets([51, 51, 61, 61], [1, 1, 11, 11]), emb([0, 1], [1, 0]), 0.1)
    assert ids(a) == [1, 2]
    by_det = {o.detection_index: o.track_id for o in b.observations}
    assert by_det == {0: 2, 1: 1}


def test_crossing_parts_told_apart_by_appearance() -> None:
    # Two parts swap places between frames in a way overlap alone gets wrong: each new box overlaps
    # the other track's old box more. Appearance keeps the identities.
    t = Tracker(TrackerConfig(min_hits=1, appearance_weight=0.7, min_iou=0.0, max_cost=1.0))
    t.update(dets([0, 0, 20, 20], [12, 0, 32, 20]), emb([1, 0, 0], [0, 1, 0]), 0.0)
    out = t.update(dets([10, 0, 30, 20], [2, 0, 22, 20]), emb([1, 0, 0], [0, 1, 0]), 0.1)
    assert {o.detection_index: o.track_id for o in out.observations} == {0: 1, 1: 2}


def test_lifecycle_tentative_confirmed_lost_removed() -> None:
    t = Tracker(TrackerConfig(min_hits=3, max_lost_seconds=0.25))
    box, e = [0, 0, 10, 10], [1, 0]
    states = []
    for i in range(3):
        out = t.update(dets(box), emb(e), i * 0.1)
        states.append(out.observations[0].state)
    assert states == [TrackState.TENTATIVE, TrackState.TENTATIVE, TrackState.CONFIRMED]
    assert out.started == [1]
    out = t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.3)
    assert out.observations[0].state == TrackState.LOST and out.observations[0].detection_index == -1
    out = t.update(dets(box), emb(e), 0.4)  # comes back within max_lost_seconds: same id
    assert ids(out) == [1] and out.observations[0].state == TrackState.CONFIRMED
    t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.5)
    out = t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.8)  # lost 0.4 s > 0.25 s
    assert out.ended == [1] and out.observations == []


def test_tentative_track_removed_at_first_miss_and_ids_never_reused() -> None:
    t = Tracker(TrackerConfig(min_hits=3))
    t.update(dets([0, 0, 10, 10]), emb([1, 0]), 0.0)
    out = t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.1)
    assert out.observations == [] and out.ended == []
    out = t.update(dets([0, 0, 10, 10]), emb([1, 0]), 0.2)
    assert ids(out) == [2]


def test_constant_velocity_prediction_bridges_a_gap() -> None:
    # A part moving 10 px per 0.1 s is missed for one frame; the prediction still overlaps it.
    t = Tracker(TrackerConfig(min_hits=1, max_lost_seconds=1.0, min_iou=0.3))
    for i in range(3):
        t.update(dets([10 * i, 0, 10 * i + 20, 20]), emb([1, 0]), 0.1 * i)
    t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.3)
    out = t.update(dets([40, 0, 60, 20]), emb([1, 0]), 0.4)
    assert ids(out) == [1]


def test_reset_and_validation() -> None:
    t = Tracker(TrackerConfig(min_hits=1))
    t.update(dets([0, 0, 10, 10]), emb([1, 0]), 0.0)
    t.reset()
    assert ids(t.update(dets([0, 0, 10, 10]), emb([1, 0]), 0.0)) == [1]
    with pytest.raises(ValueError, match="2 detections but 1 embeddings"):
        t.update(dets([0, 0, 1, 1], [2, 2, 3, 3]), emb([1, 0]), 0.1)
    with pytest.raises(ValueError, match="appearance_weight"):
        Tracker(TrackerConfig(appearance_weight=2.0))


def test_memory_bounded_over_long_run() -> None:
    t = Tracker(TrackerConfig(min_hits=2, max_lost_seconds=0.2))
    rng = np.random.default_rng(0)
    for i in range(2000):  # a new part every frame somewhere random: tracks must be removed, not kept
        x = float(rng.uniform(0, 1000))
        t.update(dets([x, 0, x + 5, 5]), emb([1, float(rng.uniform())]), i * 0.05)
    assert len(t._tracks) < 20


# ---- scenarios for the appearance + motion tracker ------------------------------------------------------------


def frame(boxes: list[list[float]], vectors: list[list[float]], conf: list[float] | None = None,
          cls: list[int] | None = None) -> tuple[Detections, Embeddings]:
    n = len(boxes)
    d = Detections(np.array(boxes, np.float32).reshape(n, 4), np.ones(n) if conf is None else np.array(conf),
                   -np.ones(n) if cls is None else np.array(cls))
    v = np.array(vectors, np.float32).reshape(n, -1) if n else np.zeros((0, 4), np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return d, Embeddings(np.where(norms > 0, v / np.maximum(norms, 1e-12), 0.0))


def box(cx: float, cy: float, w: float = 30.0, h: float = 60.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def id_of(out: TrackerOutput, det: int) -> int | None:
    return next((o.track_id for o in out.observations if o.detection_index == det), None)


A, B, C = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]


def run_two(t: Tracker, path_a: list[float], path_b: list[float], fps: float = 10.0) -> tuple[set, set]:
    """Two objects at x = path_a[i] / path_b[i] (same y); the ids each one got once confirmed."""
    ids_a, ids_b = set(), set()
    for i, (xa, xb) in enumerate(zip(path_a, path_b, strict=True)):
        out = t.update(*frame([box(xa, 100), box(xb, 104)], [A, B]), i / fps)
        if i >= 3:
            ids_a.add(id_of(out, 0))
            ids_b.add(id_of(out, 1))
    return ids_a, ids_b


def test_crossing_objects_keep_their_ids() -> None:
    xs = [50.0 + 8.0 * i for i in range(40)]  # they meet at frame 20 and overlap for several frames
    ids_a, ids_b = run_two(Tracker(), xs, xs[::-1])
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b and None not in ids_a | ids_b


def test_objects_that_meet_and_turn_back_are_told_apart_by_appearance() -> None:
    # Both walk in at 100 px/s, meet and walk back the way they came: constant velocity predicts they pass
    # each other, so motion and overlap alone lose them at the turn; the embeddings keep both ids. (An
    # instant U-turn is far outside the default Mahalanobis gate, which would reject it whatever the
    # appearance, as DeepSORT's does: the gate is off here to test the appearance term itself.)
    go = [100.0 + 10.0 * i for i in range(15)]
    path_a = go + go[-2::-1]
    path_b = [2 * go[-1] - x + 4.0 for x in path_a]
    ids_a, ids_b = run_two(Tracker(TrackerConfig(appearance_weight=0.7, max_mahalanobis=0.0)), path_a, path_b)
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b
    motion_a, motion_b = run_two(Tracker(TrackerConfig(appearance_weight=0.0, max_mahalanobis=0.0)), path_a, path_b)
    assert len(motion_a) > 1 or len(motion_b) > 1  # the scenario does need appearance


def test_occluded_object_is_predicted_and_found_again() -> None:
    t = Tracker()
    states = []
    for i in range(30):
        x = 50.0 + 10.0 * i
        hidden = 12 <= i < 17  # 0.5 s behind something
        if hidden:
            out = t.update(Detections.empty(), Embeddings(np.zeros((0, 4), np.float32)), i / 10)
        else:
            out = t.update(*frame([box(x, 100)], [A]), i / 10)
        states.append(out.observations[0].state)
        if hidden:  # the prediction keeps moving with the object
            assert abs(float(out.observations[0].xyxy[0] + 15) - x) < 10
        else:
            assert id_of(out, 0) == 1
    assert states[12:17] == [TrackState.LOST] * 5 and states[-1] == TrackState.CONFIRMED


def test_reentry_after_long_absence_is_reidentified_by_appearance() -> None:
    def scenario(t: Tracker) -> int | None:
        for i in range(10):  # A walks right at 100 px/s; B stays put all along
            t.update(*frame([box(100.0 + 10 * i, 100), box(500, 300)], [A, B]), i / 10)
        for i in range(10, 25):  # A is gone for 1.5 s
            t.update(*frame([box(500, 300)], [B]), i / 10)
        # A comes back 150 px left of where it vanished (it turned round): the Kalman prediction is 300 px off.
        out = t.update(*frame([box(40.0, 100), box(500, 300)], [A, B]), 2.5)
        assert id_of(out, 1) == 2
        return id_of(out, 0)

    assert scenario(Tracker()) == 1
    assert scenario(Tracker(TrackerConfig(reid_max_cosine_distance=0.0))) == 3  # without re-identification: a new id
    assert scenario(Tracker(TrackerConfig(reid_max_speed=0.5))) == 3  # too far for 1.5 s at half a height per second


def test_a_lost_track_is_not_found_again_by_a_box_of_another_size() -> None:
    """A person (60 px tall) is hidden for a second; where the Kalman prediction still points, a much taller box
    appears (someone nearer the camera). After that long an absence the filter's size uncertainty admits it;
    the height ratio does not."""
    def scenario(t: Tracker, h: float) -> tuple[int | None, TrackState]:
        for i in range(10):
            t.update(*frame([box(100.0 + 5 * i, 100)], [A]), i / 10)
        for i in range(10, 20):
            t.update(*frame([], []), i / 10)
        out = t.update(*frame([box(150.0, 100, w=30 * h / 60, h=h)], [A]), 2.0)
        return id_of(out, 0), out.observations[0].state

    assert scenario(Tracker(), 90.0) == (1, TrackState.CONFIRMED)  # 1.5 times taller: may be the same person
    # the gate off: taken
    assert scenario(Tracker(TrackerConfig(max_height_ratio=0.0)), 160.0) == (1, TrackState.CONFIRMED)
    found, state = scenario(Tracker(), 160.0)  # 2.7 times taller: a new track, the lost one stays lost
    assert found == 2 and state == TrackState.LOST
    assert scenario(Tracker(), 30.0)[0] == 2  # and half as tall likewise
    for bad in (0.5, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_height_ratio"):
            Tracker(TrackerConfig(max_height_ratio=bad))


def test_reidentification_refused_when_appearance_is_ambiguous() -> None:
    t = Tracker()
    like_a = [1.0, 0.05, 0.0, 0.0]
    for i in range(10):
        t.update(*frame([box(100.0, 100), box(400, 300)], [A, like_a]), i / 10)
    for i in range(10, 20):  # A is gone; its look-alike stays in view
        t.update(*frame([box(400, 300)], [like_a]), i / 10)
    out = t.update(*frame([box(250.0, 100), box(400, 300)], [A, like_a]), 2.0)
    assert id_of(out, 1) == 2 and id_of(out, 0) == 3  # A or its twin? Not guessed.


def test_low_score_detections_keep_a_track_alive_but_start_none() -> None:
    t = Tracker()
    for i in range(5):
        out = t.update(*frame([box(100.0 + 5 * i, 100)], [A], conf=[0.9]), i / 10)
    for i in range(5, 12):  # partly occluded: the detector is unsure, and the crop looks different
        out = t.update(*frame([box(100.0 + 5 * i, 100)], [C], conf=[0.3]), i / 10)
        assert id_of(out, 0) == 1 and out.observations[0].state == TrackState.CONFIRMED
    ema = t._tracks[0].ema
    assert ema is not None and float(ema @ np.array(A, np.float32)) > 0.99  # low-score crops do not change it
    out = t.update(*frame([box(100.0 + 5 * 12, 100), box(400, 400)], [A, B], conf=[0.9, 0.3]), 1.2)
    assert id_of(out, 0) == 1 and id_of(out, 1) is None and len(out.observations) == 1
    out = t.update(*frame([box(100.0 + 5 * 13, 100)], [A], conf=[0.05]), 1.3)  # below low_score: ignored
    assert id_of(out, 0) is None and out.observations[0].state == TrackState.LOST


def test_new_track_score_gates_track_births() -> None:
    t = Tracker(TrackerConfig(high_score=0.5, new_track_score=0.8, min_hits=1))
    out = t.update(*frame([box(100, 100), box(300, 100)], [A, B], conf=[0.7, 0.9]), 0.0)
    assert id_of(out, 0) is None and id_of(out, 1) == 1


def test_classes_are_tracked_separately() -> None:
    t = Tracker(TrackerConfig(min_hits=1))
    for i in range(5):  # a person and a bag at the same place, looking alike
        out = t.update(*frame([box(100.0 + 5 * i, 100)] * 2, [A, A], cls=[0, 1]), i / 10)
        assert (id_of(out, 0), id_of(out, 1)) == (1, 2)
    out = t.update(*frame([box(125.0, 100)], [A], cls=[1]), 0.5)  # only the bag is seen
    assert id_of(out, 0) == 2
    out = t.update(*frame([box(130.0, 100)], [A], cls=[3]), 0.6)  # a new class never inherits an id
    assert id_of(out, 0) == 3


def test_detections_without_embedding_are_tracked_by_motion() -> None:
    t = Tracker(TrackerConfig(min_hits=1))
    t.update(*frame([box(100, 100)], [A]), 0.0)
    for i in range(1, 6):
        out = t.update(*frame([box(100.0 + 5 * i, 100)], [[0.0, 0.0, 0.0, 0.0]]), i / 10)
        assert id_of(out, 0) == 1
    ema = t._tracks[0].ema
    assert ema is not None and np.allclose(ema, A)
    out = t.update(*frame([box(400, 400)], [[0.0, 0.0, 0.0, 0.0]]), 0.6)  # and start tracks without one
    assert id_of(out, 0) == 2 and t._tracks[1].ema is None


def test_time_not_frame_count_drives_motion() -> None:
    # The same walk (100 px/s) at 5, 10 and 30 fps, with a 0.6 s gap: one id at every rate.
    for fps in (5.0, 10.0, 30.0):
        t = Tracker()
        seen = set()
        for i in range(int(3 * fps)):
            ts = i / fps
            if 1.0 <= ts < 1.6:
                t.update(Detections.empty(), Embeddings(np.zeros((0, 4), np.float32)), ts)
                continue
            out = t.update(*frame([box(50.0 + 100 * ts, 100)], [A]), ts)
            if ts >= 0.5:
                seen.add(id_of(out, 0))
        assert seen == {1}, fps


def test_memory_bounded_with_galleries() -> None:
    t = Tracker(TrackerConfig(appearance="gallery", gallery_size=5, min_hits=2, max_lost_seconds=0.5))
    rng = np.random.default_rng(1)
    most = 0
    for i in range(1500):  # parts pass by: each is seen 20 frames, then leaves; one starts every 4 frames
        boxes, feats = [], []
        for k in range(max(0, i // 4 - 4), i // 4 + 1):
            age = i - 4 * k
            if 0 <= age < 20:
                boxes.append(box(50.0 + 20 * age + 7 * (k % 10), 100.0 + 90 * (k % 5)))
                feats.append(np.eye(8)[k % 8] + 0.05 * rng.standard_normal(8))
        out = t.update(*frame(boxes, feats), i / 10)
        most = max(most, t.track_count)
        assert all(len(tr.gallery) <= 5 for tr in t._tracks)
    assert most <= 25 and len(out.observations) == t.track_count
    assert t._next_id > 300  # ids keep growing, never reused


def test_duplicate_track_on_a_lost_track_is_removed() -> None:
    # A track is lost for a frame; then a box at its place whose look is far from the track's starts a second
    # track there (the appearance gate keeps the two apart), while the lost track still stands on it.
    def run(duplicate_iou: float) -> tuple[list[TrackerOutput], Tracker]:
        t = Tracker(TrackerConfig(min_hits=1, duplicate_iou=duplicate_iou))
        outs = [t.update(dets([0, 0, 10, 20]), emb([1, 0]), i * 0.1) for i in range(3)]
        outs.append(t.update(Detections.empty(), Embeddings(np.zeros((0, 2))), 0.3))
        outs.append(t.update(dets([0, 0, 10, 20]), emb([0, 1]), 0.4))
        return outs, t

    outs, t = run(0.0)
    assert ids(outs[-1]) == [2] and t.track_count == 2  # off: two tracks on one place
    outs, t = run(0.85)
    assert ids(outs[-1]) == [] and t.track_count == 1  # the younger one (2) is removed at once
    assert outs[-1].started == [] and outs[-1].observations[0].track_id == 1
    assert outs[-1].observations[0].state == TrackState.LOST
    with pytest.raises(ValueError, match="duplicate_iou"):
        Tracker(TrackerConfig(duplicate_iou=1.5))


def test_younger_lost_duplicate_of_a_seen_track_is_removed_and_reported_ended() -> None:
    # A second track starts on a box beside an older track's and is lost the next frame, its prediction lying on
    # the older track's box: the younger (lost) one is removed and reported as ended, the older one goes on.
    def run(duplicate_iou: float) -> tuple[TrackerOutput, Tracker]:
        t = Tracker(TrackerConfig(min_hits=1, duplicate_iou=duplicate_iou))
        for i in range(3):
            t.update(dets([0, 0, 10, 20]), emb([1, 0]), i * 0.1)
        started = t.update(dets([0, 0, 10, 20], [0.5, 0, 10.5, 20]), emb([1, 0], [0, 1]), 0.3)
        assert started.started == [2]
        return t.update(dets([0, 0, 10, 20]), emb([1, 0]), 0.4), t

    out, t = run(0.0)
    assert ids(out) == [1] and out.ended == [] and t.track_count == 2
    out, t = run(0.85)
    assert ids(out) == [1] and out.ended == [2] and t.track_count == 1


def test_invalid_options_name_the_valid_ones() -> None:
    for kwargs, pattern in [({"appearance": "mean"}, "'ema', 'gallery'"), ({"fusion": "max"}, "'weighted', 'min'"),
                            ({"cmc": "orb"}, "'none', 'sparse', 'ecc'"), ({"low_score": 0.6, "high_score": 0.5},
                                                                          "low_score"),
                            ({"gallery_size": 0}, "gallery_size"), ({"max_mahalanobis": -1.0}, "max_mahalanobis")]:
        with pytest.raises(ConfigError, match=pattern):  # the section checks itself: the tracker takes it as is
            TrackerConfig(**kwargs)  # type: ignore[arg-type]


def test_the_tracker_takes_its_config_section() -> None:
    from pipeline.app import build_tracker

    cfg = TrackerConfig(min_hits=1, max_lost_seconds=0.5, cmc="sparse")
    tracker = build_tracker(cfg)
    assert tracker.cfg is cfg and tracker.min_hits == 1 and tracker.max_lost_seconds == 0.5
    assert Tracker().cfg == TrackerConfig()  # the defaults are the section's (config.toml's)
