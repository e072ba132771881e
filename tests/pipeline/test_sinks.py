"""Tests for pipeline.sinks: real files, real cv2 video writing, read back and checked by hand."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.sinks import (
    MOT_FLUSH_EVERY,
    UNMATCHED_COLOR,
    VERDICT_COLORS,
    AnnotatedVideoSink,
    EventsJsonlSink,
    EvidenceSink,
    MotTxtSink,
    Sink,
    SinkError,
    SinkGroup,
    _header_text,
    check_writable_dir,
    draw_annotations,
)
from pipeline.types import (
    AnomalyEvent,
    Detections,
    Frame,
    FrameResult,
    PatchMap,
    TrackObservation,
    TrackState,
    Verdict,
)

H, W = 120, 160
BACKGROUND = 50


def make_frame(index: int, height: int = H, width: int = W) -> Frame:
    return Frame(index=index, timestamp=index / 10.0, image=np.full((height, width, 3), BACKGROUND, np.uint8))


def make_detections(*rows: tuple[float, float, float, float, float]) -> Detections:
    if not rows:
        return Detections.empty()
    arr = np.array(rows, dtype=np.float32)
    return Detections(arr[:, :4], arr[:, 4], np.full(len(rows), -1, np.int64))


def obs(track_id: int, xyxy: tuple[float, float, float, float], det: int,
        state: TrackState = TrackState.CONFIRMED, verdict: Verdict = Verdict.UNSCORED,
        track_score: float = float("nan")) -> TrackObservation:
    return TrackObservation(track_id=track_id, xyxy=np.array(xyxy, np.float32), state=state,
                            detection_index=det, track_score=track_score, verdict=verdict)


def make_event(track_id: int, frame_index: int, score: float = 0.8) -> AnomalyEvent:
    return AnomalyEvent(stream="cam0", track_id=track_id, frame_index=frame_index,
                        timestamp=frame_index / 10.0, score=score, threshold=0.5, frames_scored=5,
                        xyxy=(10.0, 20.0, 50.5, 80.25), evidence=f"crops/{track_id}.png")


def bgr(image: np.ndarray, x: int, y: int) -> tuple[int, int, int]:
    b, g, r = image[y, x]
    return int(b), int(g), int(r)


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot read back {path}"
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


# ---------------------------------------------------------------------------------------------------------
# draw_annotations


def two_part_scene() -> FrameResult:
    dets = make_detections((20, 30, 70, 90, 0.9), (90, 30, 140, 90, 0.8), (5, 100, 30, 115, 0.7))
    tracks = [
        obs(1, (20, 30, 70, 90), 0, verdict=Verdict.DEFECT, track_score=0.91234),
        obs(2, (90, 30, 140, 90), 1, verdict=Verdict.GOOD, track_score=0.1),
        obs(3, (0, 0, 10, 10), -1, verdict=Verdict.DEFECT),  # lost this frame: not drawn, not counted
    ]
    return FrameResult(frame=make_frame(7), detections=dets, tracks=tracks)


def test_draw_colours_box_edges_by_verdict() -> None:
    result = two_part_scene()
    out = draw_annotations(result.frame.image, result)
    for y in range(50, 85):
        assert bgr(out, 20, y) == VERDICT_COLORS[Verdict.DEFECT] == (0, 0, 255)
        assert bgr(out, 70, y) == (0, 0, 255)
        assert bgr(out, 90, y) == VERDICT_COLORS[Verdict.GOOD] == (0, 200, 0)
        assert bgr(out, 140, y) == (0, 200, 0)
        # Inside the boxes, away from the edges, the image is untouched.
        assert bgr(out, 45, y) == (BACKGROUND,) * 3
        assert bgr(out, 115, y) == (BACKGROUND,) * 3
    # Confirmed tracks are drawn 2 px (3 px wide in OpenCV), so the neighbour column is coloured too.
    assert bgr(out, 21, 60) == (0, 0, 255)
    # The third detection matched no track: thin grey box.
    assert bgr(out, 5, 108) == UNMATCHED_COLOR
    assert bgr(out, 6, 108) == (BACKGROUND,) * 3


def test_draw_does_not_modify_input() -> None:
    result = two_part_scene()
    before = result.frame.image.copy()
    out = draw_annotations(result.frame.image, result)
    assert np.array_equal(result.frame.image, before)
    assert out is not result.frame.image
    assert out.shape == before.shape and out.dtype == np.uint8
    assert not np.array_equal(out, before)


def test_tentative_track_is_thin() -> None:
    result = FrameResult(frame=make_frame(0), detections=make_detections((40, 40, 100, 100, 0.9)),
                         tracks=[obs(1, (40, 40, 100, 100), 0, state=TrackState.TENTATIVE,
                                     verdict=Verdict.PENDING)])
    out = draw_annotations(result.frame.image, result)
    assert bgr(out, 40, 70) == VERDICT_COLORS[Verdict.PENDING]
    assert bgr(out, 41, 70) == (BACKGROUND,) * 3
    assert bgr(out, 39, 70) == (BACKGROUND,) * 3


def test_header_counts_visible_tracks_and_flagged() -> None:
    assert _header_text(two_part_scene()) == "frame 7  tracks 2  flagged 1"
    empty = FrameResult(frame=make_frame(0), detections=Detections.empty())
    assert _header_text(empty) == "frame 0  tracks 0  flagged 0"


@pytest.mark.parametrize(("xyxy", "label_cols"), [
    ((310, 0, 319, 10), slice(200, 300)),     # top-right corner: label moves left and below the anchor
    ((0, 230, 20, 239), slice(0, 100)),       # bottom-left corner
    ((250, 200, 400, 400), slice(210, 320)),  # box running past the right and bottom edges
])
def test_labels_stay_inside_image(xyxy: tuple[float, float, float, float], label_cols: slice) -> None:
    # 320x240 so the header (about 150 px wide, top-left) does not cover the labels under test.
    result = FrameResult(frame=make_frame(3, height=240, width=320), detections=make_detections((*xyxy, 0.9)),
                         tracks=[obs(12, xyxy, 0, verdict=Verdict.DEFECT, track_score=1.23456)])
    out = draw_annotations(result.frame.image, result)
    assert out.shape == (240, 320, 3)
    red = np.all(out == np.array(VERDICT_COLORS[Verdict.DEFECT], np.uint8), axis=2)
    # The label "#12 1.235 DEFECT" (about 105 x 18 px) sits on a filled verdict-coloured background; a
    # label cut off by the image edge would leave far fewer red pixels in those columns.
    rows = red[:, label_cols].any(axis=1)
    assert rows.sum() >= 15
    assert red[:, label_cols].sum() > 800


def test_draw_rejects_wrong_image() -> None:
    result = two_part_scene()
    with pytest.raises(ValueError, match="uint8"):
        draw_annotations(np.zeros((H, W), np.uint8), result)


# ---------------------------------------------------------------------------------------------------------
# AnnotatedVideoSink


@pytest.mark.parametrize(("name", "fourcc"), [("out.avi", "MJPG"), ("out.mp4", "mp4v")])
def test_video_sink_writes_all_frames(tmp_path: Path, name: str, fourcc: str) -> None:
    path = tmp_path / "nested" / name
    sink = AnnotatedVideoSink(path, fps=10.0, fourcc=fourcc)
    n = 6
    for i in range(n):
        sink.write(FrameResult(frame=make_frame(i), detections=Detections.empty()))
    assert sink.frames_written == n
    sink.close()
    frames = read_video(path)
    assert len(frames) == n
    assert all(f.shape == (H, W, 3) for f in frames)


def test_video_sink_resizes_frames_of_another_size(tmp_path: Path) -> None:
    path = tmp_path / "out.avi"
    sink = AnnotatedVideoSink(path, fps=5.0, fourcc="MJPG")
    sink.write(FrameResult(frame=make_frame(0), detections=Detections.empty()))
    sink.write(FrameResult(frame=make_frame(1, height=60, width=80), detections=Detections.empty()))
    sink.close()
    frames = read_video(path)
    assert [f.shape for f in frames] == [(H, W, 3), (H, W, 3)]


def test_video_sink_without_frames_creates_no_file(tmp_path: Path) -> None:
    sink = AnnotatedVideoSink(tmp_path / "out.avi", fps=5.0, fourcc="MJPG")
    sink.close()
    assert not (tmp_path / "out.avi").exists()


def test_video_sink_writer_that_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"  # no container for this extension
    sink = AnnotatedVideoSink(path, fps=5.0, fourcc="mp4v")
    with pytest.raises(SinkError) as info:
        sink.write(FrameResult(frame=make_frame(0), detections=Detections.empty()))
    message = str(info.value)
    assert str(path) in message and "'mp4v'" in message and "MJPG" in message and ".avi" in message
    assert "\n" not in message
    sink.close()


@pytest.mark.parametrize(("fps", "fourcc"), [(0.0, "mp4v"), (float("nan"), "mp4v"), (10.0, "h264x")])
def test_video_sink_rejects_bad_options(tmp_path: Path, fps: float, fourcc: str) -> None:
    with pytest.raises(ValueError):
        AnnotatedVideoSink(tmp_path / "out.mp4", fps=fps, fourcc=fourcc)


# ---------------------------------------------------------------------------------------------------------
# EventsJsonlSink


def test_events_sink_one_line_per_event_flushed(tmp_path: Path) -> None:
    path = tmp_path / "run" / "events.jsonl"
    sink = EventsJsonlSink(path)
    frame0 = FrameResult(frame=make_frame(0), detections=Detections.empty(),
                         events=[make_event(1, 0), make_event(2, 0, score=0.75)])
    sink.write(frame0)
    sink.write(FrameResult(frame=make_frame(1), detections=Detections.empty()))
    # Readable before close: every write is flushed.
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    sink.write(FrameResult(frame=make_frame(2), detections=Detections.empty(), events=[make_event(3, 2)]))
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["track_id"] for r in records] == [1, 2, 3]
    assert records[0] == make_event(1, 0).to_json()
    assert records[1]["score"] == 0.75
    assert records[2] == {
        "event": "part_flagged", "stream": "cam0", "track_id": 3, "frame_index": 2, "timestamp": 0.2,
        "score": 0.8, "threshold": 0.5, "frames_scored": 5, "xyxy": [10.0, 20.0, 50.5, 80.25],
        "evidence": "crops/3.png",
    }
    assert sink.events_written == 3
    sink.close()
    assert len(path.read_text().splitlines()) == 3


def test_events_sink_truncates_previous_run(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"old": true}\n')
    sink = EventsJsonlSink(path)
    assert path.read_text() == ""
    sink.close()


# ---------------------------------------------------------------------------------------------------------
# MotTxtSink


def mot_scene() -> list[FrameResult]:
    frame0 = FrameResult(
        frame=make_frame(0),
        detections=make_detections((10, 20, 50, 80, 0.9), (60, 60, 70, 75, 0.5)),
        tracks=[
            obs(1, (10, 20, 50, 80), 0),
            obs(2, (60, 60, 70, 75), 1, state=TrackState.TENTATIVE),  # tentative: skipped
            obs(3, (0, 0, 5, 5), -1),                                  # not seen: skipped
        ],
    )
    frame1 = FrameResult(
        frame=make_frame(1),
        detections=make_detections((12.5, 21, 52.25, 81, 0.75)),
        tracks=[
            obs(1, (12.5, 21, 52.25, 81), 0),
            obs(2, (61, 60, 71.5, 75), 4),                             # no detection row 4: conf 1
            obs(4, (90, 90, 100, 100), 0, state=TrackState.LOST),      # not confirmed: skipped
        ],
    )
    return [frame0, frame1]


def test_mot_sink_lines_exact(tmp_path: Path) -> None:
    path = tmp_path / "mot" / "tracks.txt"
    sink = MotTxtSink(path)
    for result in mot_scene():
        sink.write(result)
    sink.close()
    assert path.read_text().splitlines() == [
        "1,1,10.00,20.00,40.00,60.00,0.9,-1,-1,-1",
        "2,1,12.50,21.00,39.75,60.00,0.75,-1,-1,-1",
        "2,2,61.00,60.00,10.50,15.00,1,-1,-1,-1",
    ]


def test_mot_sink_flushes_every_100_frames(tmp_path: Path) -> None:
    path = tmp_path / "tracks.txt"
    sink = MotTxtSink(path)
    result = mot_scene()[0]
    for _ in range(MOT_FLUSH_EVERY):
        sink.write(result)
    assert len(path.read_text().splitlines()) == MOT_FLUSH_EVERY
    sink.close()


# ---------------------------------------------------------------------------------------------------------
# Lifecycle shared by every sink


SinkFactory = Callable[[Path], Sink]
FACTORIES: dict[str, SinkFactory] = {
    "video": lambda d: AnnotatedVideoSink(d / "out.avi", fps=5.0, fourcc="MJPG"),
    "events": lambda d: EventsJsonlSink(d / "events.jsonl"),
    "mot": lambda d: MotTxtSink(d / "tracks.txt"),
    "group": lambda d: SinkGroup([EventsJsonlSink(d / "events.jsonl"), MotTxtSink(d / "tracks.txt")]),
}


@pytest.fixture(params=sorted(FACTORIES))
def any_sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    sink = FACTORIES[request.param](tmp_path)
    yield sink
    sink.close()


def test_write_after_close_raises(any_sink: Sink) -> None:
    any_sink.write(two_part_scene())
    any_sink.close()
    any_sink.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        any_sink.write(two_part_scene())


# ---------------------------------------------------------------------------------------------------------
# SinkGroup


class RecordingSink:
    """A sink that records calls and can be told to fail."""

    def __init__(self, name: str, log: list[str], fail_write: bool = False, fail_close: bool = False) -> None:
        self.name, self.log, self.fail_write, self.fail_close = name, log, fail_write, fail_close

    def write(self, result: FrameResult) -> None:
        self.log.append(f"{self.name}.write({result.frame.index})")
        if self.fail_write:
            raise OSError(f"{self.name} write failed")

    def close(self) -> None:
        self.log.append(f"{self.name}.close")
        if self.fail_close:
            raise OSError(f"{self.name} close failed")


def test_group_fans_out_and_closes_all_even_if_one_raises(tmp_path: Path) -> None:
    log: list[str] = []
    events = EventsJsonlSink(tmp_path / "events.jsonl")
    group = SinkGroup([RecordingSink("a", log, fail_close=True), events,
                       RecordingSink("b", log, fail_close=True), RecordingSink("c", log)])
    group.write(FrameResult(frame=make_frame(4), detections=Detections.empty(), events=[make_event(1, 4)]))
    with pytest.raises(OSError, match="a close failed"):
        group.close()
    assert log == ["a.write(4)", "b.write(4)", "c.write(4)", "a.close", "b.close", "c.close"]
    with pytest.raises(RuntimeError, match="closed"):
        events.write(two_part_scene())
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 1
    group.close()  # idempotent: the sinks are not closed twice
    assert log.count("a.close") == 1


def test_group_write_reaches_every_sink_then_raises_first_error() -> None:
    log: list[str] = []
    group = SinkGroup([RecordingSink("a", log, fail_write=True), RecordingSink("b", log, fail_write=True),
                       RecordingSink("c", log)])
    with pytest.raises(OSError, match="a write failed"):
        group.write(FrameResult(frame=make_frame(0), detections=Detections.empty()))
    assert log == ["a.write(0)", "b.write(0)", "c.write(0)"]
    group.close()


# ---------------------------------------------------------------------------------------------------------
# check_writable_dir


def test_check_writable_dir_creates_nested(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    check_writable_dir(target)
    assert target.is_dir()
    assert list(target.iterdir()) == []  # the write-check file is removed


def test_check_writable_dir_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    target = blocker / "out"
    with pytest.raises(SinkError, match="regular file") as info:
        check_writable_dir(target)
    assert info.value.path == target
    assert str(target) in str(info.value) and "\n" not in str(info.value)


def test_check_writable_dir_path_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SinkError, match="exists and is not a directory"):
        check_writable_dir(target)


def test_sink_on_unusable_path_raises_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(SinkError):
        EventsJsonlSink(blocker / "events.jsonl")
    with pytest.raises(SinkError):
        MotTxtSink(blocker / "tracks.txt")
    with pytest.raises(SinkError):
        AnnotatedVideoSink(blocker / "out.mp4", fps=10.0)


def test_check_writable_dir_read_only_parent(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with privileges that ignore directory permissions (e.g. root)")
        with pytest.raises(SinkError, match="cannot create"):
            check_writable_dir(locked / "out")
        with pytest.raises(SinkError, match="not writable"):
            check_writable_dir(locked)
    finally:
        locked.chmod(stat.S_IRWXU)


def test_evidence_sink_saves_each_flagged_part_beside_its_anomaly_map(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    sink = EvidenceSink(tmp_path / "evidence")
    event = dataclasses.replace(make_event(3, 7), evidence=str(tmp_path / "evidence" / "track3.png"))
    plain = dataclasses.replace(make_event(4, 7), evidence=str(tmp_path / "evidence" / "track4.png"),
                                xyxy=(100.0, 40.0, 130.0, 70.0))
    grid = np.zeros((4, 4), np.float32)
    grid[1, 2] = 3.0
    result = FrameResult(make_frame(7), make_detections((12, 22, 48, 78, 1.0), (100, 40, 130, 70, 1.0)),
                         [obs(3, (12, 22, 48, 78), 0), obs(4, (100, 40, 130, 70), 1)], [event, plain],
                         [PatchMap(0, (8.0, 18.0, 56.0, 82.0), grid, 1.0)])
    sink.write(result)
    with_map = cv2.imread(event.evidence)
    assert with_map.shape[:2] == (64, 96)  # the 48 x 64 region, and beside it the same region under its map
    left, right = with_map[:, :48].astype(int), with_map[:, 48:].astype(int)
    assert np.abs(left - BACKGROUND).max() <= 2 and np.abs(right - left).max() > 50  # the hot patch is coloured
    box = cv2.imread(plain.evidence)  # no map: the box with a margin of a fifth of its width (at least 4 px)
    assert box.shape[:2] == (30 + 2 * 6, 30 + 2 * 6)
    assert sink.saved == 2
    lost = dataclasses.replace(make_event(5, 7), evidence=str(tmp_path / "gone" / "x.png"))
    sink.write(FrameResult(make_frame(8), make_detections(), [], [lost]))  # the run goes on
    assert sink.saved == 2 and "could not save the evidence image" in caplog.text
    sink.close()
    sheet = cv2.imread(str(sink.sheet_path))  # the flagged parts side by side, each over its caption
    assert sheet is not None and sheet.shape[0] == 128 + 18 and sheet.shape[1] == 3 * 288
    assert sheet[:128, 288:2 * 288].max() > 0 and sheet[128:, :288].max() > 0  # images and captions drawn


def test_contact_sheet_keeps_the_latest_parts_in_rows(tmp_path: Path) -> None:
    sink = EvidenceSink(tmp_path, sheet_parts=5)
    for i in range(7):
        event = dataclasses.replace(make_event(i + 1, i), evidence="")  # no file, still on the sheet
        sink.write(FrameResult(make_frame(i), make_detections(), [], [event]))
    sink.close()
    sheet = cv2.imread(str(sink.sheet_path))
    assert sheet.shape[:2] == (2 * (128 + 18), 4 * 288) and sink.saved == 0
    assert not list(tmp_path.glob(".*"))  # written whole, no temporary left


def test_a_previous_runs_outputs_are_kept_aside_not_destroyed(tmp_path: Path) -> None:
    """A run into a folder that holds a previous run's outputs moves them to ``*.prev`` before writing its own: a
    run that then fails (a camera that never connects, a corrupt frame) loses nothing."""
    tracks, events, video = tmp_path / "tracks.txt", tmp_path / "events.jsonl", tmp_path / "annotated.avi"
    tracks.write_text("1,1,0,0,10,10,1,-1,-1,-1\n")
    events.write_text('{"track_id": 1}\n')
    mot, ev = MotTxtSink(tracks), EventsJsonlSink(events)
    mot.close()
    ev.close()
    assert tracks.read_text() == "" and events.read_text() == ""  # this run's own (empty) files
    assert (tmp_path / "tracks.txt.prev").read_text() == "1,1,0,0,10,10,1,-1,-1,-1\n"
    assert (tmp_path / "events.jsonl.prev").read_text() == '{"track_id": 1}\n'
    MotTxtSink(tracks).close()  # an empty file is not worth keeping: the earlier .prev stays
    assert (tmp_path / "tracks.txt.prev").read_text() == "1,1,0,0,10,10,1,-1,-1,-1\n"

    first = AnnotatedVideoSink(video, fps=5.0, fourcc="MJPG")
    for i in range(3):
        first.write(FrameResult(frame=make_frame(i), detections=Detections.empty()))
    first.close()
    second = AnnotatedVideoSink(video, fps=5.0, fourcc="MJPG")
    assert len(read_video(video)) == 3  # untouched until this run has a frame to write
    second.write(FrameResult(frame=make_frame(0), detections=Detections.empty()))
    second.close()
    assert len(read_video(video)) == 1 and len(read_video(tmp_path / "annotated.avi.prev")) == 3
