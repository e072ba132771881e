"""A MOTChallenge sequence folder: ``seqinfo.ini``, the frames, ``det/det.txt`` and ``gt/gt.txt``.

Layout::

    <sequence>/
        seqinfo.ini          [Sequence] name, frameRate, seqLength, imWidth, imHeight, imDir
        img1/000001.jpg ...  the frames (imDir), or instead one video file in the folder
        det/det.txt          detections
        gt/gt.txt            ground truth (absent for test sequences)

Frame ``i`` (1-based) of the image folder or video is MOT frame ``i``.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.sources import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class MotSequenceError(ValueError):
    """A sequence folder is incomplete or its ``seqinfo.ini`` is invalid.

    The message is one line: ``<path>: <problem>; <fix>``.

    Attributes:
        path: the folder or file concerned.
        problem: what is wrong.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}")


@dataclass(frozen=True)
class MotSequence:
    """One MOTChallenge sequence, as found on disk.

    Attributes:
        name: sequence name from ``seqinfo.ini`` (e.g. ``"TUD-Campus"``).
        root: the sequence folder.
        frame_rate: frames per second.
        length: number of frames (``seqLength``); MOT frames are ``1..length``.
        width: image width in pixels.
        height: image height in pixels.
        frames_uri: what :func:`pipeline.sources.open_source` reads: the image folder (``imDir``, usually
            ``img1/``) when it holds images, else the single video file in the folder.
        det_path: ``det/det.txt``.
        gt_path: ``gt/gt.txt``, or None when the sequence has no ground truth.
    """

    name: str
    root: Path
    frame_rate: float
    length: int
    width: int
    height: int
    frames_uri: str
    det_path: Path
    gt_path: Path | None


def _read_seqinfo(ini: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    try:
        with ini.open(encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise MotSequenceError(ini, f"cannot parse seqinfo.ini ({str(exc).splitlines()[0]})",
                               "write it as an INI file with a [Sequence] section") from None
    if not parser.has_section("Sequence"):
        raise MotSequenceError(ini, "no [Sequence] section",
                               "add [Sequence] with name, frameRate, seqLength, imWidth, imHeight")
    return parser["Sequence"]


def _number(section: configparser.SectionProxy, ini: Path, key: str, kind: type[float] | type[int]) -> float | int:
    raw = section.get(key)
    if raw is None:
        raise MotSequenceError(ini, f"[Sequence] has no {key}", f"add {key} = ... to seqinfo.ini")
    try:
        value = kind(raw.strip())
    except ValueError:
        raise MotSequenceError(ini, f"{key} = {raw!r} is not {'an integer' if kind is int else 'a number'}",
                               f"fix {key} in seqinfo.ini") from None
    if value <= 0:
        raise MotSequenceError(ini, f"{key} = {raw} must be > 0", f"fix {key} in seqinfo.ini")
    return value


def _frames_uri(root: Path, im_dir: str) -> str:
    """The image folder when it holds images, else the only video file in ``root``."""
    folder = root / im_dir
    if folder.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.iterdir() if f.is_file()):
        return str(folder)
    videos = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
    if len(videos) == 1:
        return str(videos[0])
    if not videos:
        raise MotSequenceError(root, f"no frames: neither an {im_dir}/ folder of images nor a video file "
                                     f"({' '.join(VIDEO_EXTENSIONS)})",
                               f"extract the frames to {im_dir}/ or put the sequence video in the folder")
    raise MotSequenceError(root, f"{len(videos)} video files ({', '.join(v.name for v in videos)}) and no "
                                 f"{im_dir}/ images, so the frames are ambiguous",
                           "keep one video in the sequence folder")


def load_sequence(root: str | os.PathLike[str]) -> MotSequence:
    """Describe the MOTChallenge sequence in folder ``root``.

    Reads ``seqinfo.ini`` and finds the frames and text files; reads no frames and no boxes.

    Raises:
        MotSequenceError: missing folder, ``seqinfo.ini`` or ``det/det.txt``; a missing or invalid key;
            no frames, or several candidate videos.
    """
    root = Path(root)
    if not root.is_dir():
        raise MotSequenceError(root, "sequence folder not found",
                               "pass a MOTChallenge sequence folder (the one holding seqinfo.ini)")
    ini = root / "seqinfo.ini"
    if not ini.is_file():
        raise MotSequenceError(root, "no seqinfo.ini",
                               "pass a MOTChallenge sequence folder, or write seqinfo.ini with a [Sequence] "
                               "section (name, frameRate, seqLength, imWidth, imHeight)")
    section = _read_seqinfo(ini)
    det = root / "det" / "det.txt"
    if not det.is_file():
        raise MotSequenceError(root, "no det/det.txt",
                               "put the sequence's detections in det/det.txt (frame,-1,x,y,w,h,score,...)")
    gt = root / "gt" / "gt.txt"
    return MotSequence(
        name=section.get("name", root.name).strip() or root.name,
        root=root,
        frame_rate=float(_number(section, ini, "frameRate", float)),
        length=int(_number(section, ini, "seqLength", int)),
        width=int(_number(section, ini, "imWidth", int)),
        height=int(_number(section, ini, "imHeight", int)),
        frames_uri=_frames_uri(root, section.get("imDir", "img1").strip() or "img1"),
        det_path=det,
        gt_path=gt if gt.is_file() else None,
    )
