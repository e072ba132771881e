"""The segmented annotated video: closed segments are whole, playable files listed in segments.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.types import Detections, Frame, FrameResult
from pipeline.video_segments import SegmentedVideoSink
from tests.media import video_frames


def result(i: int) -> FrameResult:
    image = np.full((48, 64, 3), 30, np.uint8)
    image[10:30, i % 40:i % 40 + 20] = 200
    return FrameResult(Frame(i, i / 10, image), Detections.empty(), [], [])


def test_frames_go_into_segments_of_the_set_length_listed_in_the_index(tmp_path: Path) -> None:
    folder = tmp_path / "annotated"
    folder.mkdir()
    (folder / "000007.mp4").write_bytes(b"an earlier run's segment")
    (folder / "notes.txt").write_text("kept")
    sink = SegmentedVideoSink(folder, 10.0, segment_frames=10)
    for i in range(25):
        sink.write(result(i))
    index = [json.loads(line) for line in (folder / "segments.jsonl").read_text().splitlines()]
    assert [r["file"] for r in index] == ["000000.mp4", "000001.mp4"]  # the third is still being written
    assert video_frames(folder / "000000.mp4") == 10 and video_frames(folder / "000001.mp4") == 10
    sink.close()
    sink.close()
    index = [json.loads(line) for line in (folder / "segments.jsonl").read_text().splitlines()]
    assert [(r["first_frame"], r["last_frame"], r["frames"]) for r in index] == [(0, 9, 10), (10, 19, 10),
                                                                                  (20, 24, 5)]
    assert index[2]["first_timestamp"] == 2.0 and index[2]["last_timestamp"] == 2.4
    assert video_frames(folder / "000002.mp4") == 5
    assert sorted(p.name for p in folder.iterdir()) == ["000000.mp4", "000001.mp4", "000002.mp4", "notes.txt",
                                                        "segments.jsonl"]
    # The earlier run's segment was kept aside, not destroyed; the next run keeps this one's the same way.
    prev = folder.with_name(folder.name + ".prev")
    assert [p.name for p in prev.iterdir()] == ["000007.mp4"]
    SegmentedVideoSink(folder, 10.0, segment_frames=10).close()
    assert sorted(p.name for p in prev.iterdir()) == ["000000.mp4", "000001.mp4", "000002.mp4", "segments.jsonl"]


def test_segment_length_is_checked_and_a_directory_in_the_way_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_frames must be >= 1"):
        SegmentedVideoSink(tmp_path / "a", 10.0, segment_frames=0)
    from pipeline.sinks import AnnotatedVideoSink, SinkError

    (tmp_path / "annotated.mp4").mkdir()
    with pytest.raises(SinkError, match=r"annotated\.mp4: the video.s path is a directory; remove it"):
        AnnotatedVideoSink(tmp_path / "annotated.mp4", 10.0)
