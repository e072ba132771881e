"""Small real media files written by the tests: a video of a bright square crossing a dark frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def square_video(path: Path, frames: int = 120, size: tuple[int, int] = (96, 64), fps: float = 10.0) -> Path:
    """An MJPG AVI of ``frames`` frames (``size`` = width, height): a 24 px square moving right, wrapping every
    60 frames, so background subtraction finds it and the tracker follows it."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    for i in range(frames):
        image = np.full((h, w, 3), 40, np.uint8)
        x = 5 + (i % 60)
        image[20:44, x:x + 24] = 220
        writer.write(image)
    writer.release()
    return path


def video_frames(path: Path) -> int:
    """Frames OpenCV decodes from one video file (0 for a file it cannot open)."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def segments(out: Path) -> list[Path]:
    """The annotated video's segment files of a run's output folder, in order."""
    return sorted(p for p in (out / "annotated").iterdir() if p.suffix in (".mp4", ".avi"))


def annotated_frames(out: Path) -> int:
    """Frames of a run's whole annotated video: every segment under ``out/annotated/``."""
    return sum(video_frames(p) for p in segments(out))
