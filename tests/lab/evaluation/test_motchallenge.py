from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.evaluation.motchallenge import MotSequence, MotSequenceError, load_sequence

SEQINFO = "[Sequence]\nname=Tiny\nimDir=img1\nframeRate=7\nseqLength=5\nimWidth=64\nimHeight=48\nimExt=.jpg\n"


def make_dir(root: Path, seqinfo: str | None = SEQINFO, det: bool = True, gt: bool = True,
             images: int = 0, videos: tuple[str, ...] = ("Tiny.mp4",)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if seqinfo is not None:
        (root / "seqinfo.ini").write_text(seqinfo)
    if det:
        (root / "det").mkdir()
        (root / "det" / "det.txt").write_text("1,-1,0,0,5,5,0.9\n")
    if gt:
        (root / "gt").mkdir()
        (root / "gt" / "gt.txt").write_text("1,1,0,0,5,5,1,-1,-1,-1\n")
    if images:
        (root / "img1").mkdir()
        for i in range(images):
            (root / "img1" / f"{i + 1:06d}.jpg").write_bytes(b"")
    for name in videos:
        (root / name).write_bytes(b"")
    return root


def test_loads_seqinfo_video_det_and_gt(tmp_path: Path) -> None:
    root = make_dir(tmp_path / "seq")
    seq = load_sequence(root)
    assert seq == MotSequence(name="Tiny", root=root, frame_rate=7.0, length=5, width=64, height=48,
                              frames_uri=str(root / "Tiny.mp4"), det_path=root / "det" / "det.txt",
                              gt_path=root / "gt" / "gt.txt")


def test_image_folder_wins_over_video_and_gt_is_optional(tmp_path: Path) -> None:
    root = make_dir(tmp_path / "seq", gt=False, images=3)
    seq = load_sequence(root)
    assert seq.frames_uri == str(root / "img1")
    assert seq.gt_path is None


def test_empty_image_folder_falls_back_to_the_video(tmp_path: Path) -> None:
    root = make_dir(tmp_path / "seq")
    (root / "img1").mkdir()
    assert load_sequence(root).frames_uri == str(root / "Tiny.mp4")


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"seqinfo": None}, "no seqinfo.ini"),
    ({"det": False}, "no det/det.txt"),
    ({"videos": ()}, "no frames: neither an img1/ folder of images nor a video file"),
    ({"videos": ("a.mp4", "b.avi")}, "2 video files (a.mp4, b.avi)"),
    ({"seqinfo": "[Other]\nx=1\n"}, "no [Sequence] section"),
    ({"seqinfo": SEQINFO.replace("seqLength=5\n", "")}, "[Sequence] has no seqLength"),
    ({"seqinfo": SEQINFO.replace("seqLength=5", "seqLength=five")}, "seqLength = 'five' is not an integer"),
    ({"seqinfo": SEQINFO.replace("frameRate=7", "frameRate=0")}, "frameRate = 0 must be > 0"),
    ({"seqinfo": "not an ini"}, "cannot parse seqinfo.ini"),
])
def test_incomplete_sequences_raise_clear_errors(tmp_path: Path, kwargs: dict[str, Any], fragment: str) -> None:
    root = make_dir(tmp_path / "seq", **kwargs)
    with pytest.raises(MotSequenceError) as info:
        load_sequence(root)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.fix


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MotSequenceError, match="sequence folder not found"):
        load_sequence(tmp_path / "absent")


@pytest.mark.parametrize(("name", "length", "size", "video"), [
    ("PETS09-S2L1", 795, (480, 360), "PETS09-S2L1_480x360.avi"),
    ("TUD-Campus", 71, (640, 480), "TUD-Campus.mp4"),
])
def test_real_sequences(shared_data: Callable[..., Path], name: str, length: int, size: tuple[int, int],
                        video: str) -> None:
    seq = load_sequence(shared_data("mot15", name))
    assert (seq.name, seq.length, (seq.width, seq.height)) == (name, length, size)
    assert Path(seq.frames_uri).name == video
    assert seq.gt_path is not None and seq.det_path.is_file()
