"""Detection providers: each turns a Frame into Detections."""

from __future__ import annotations

from typing import Protocol

from pipeline.types import Detections, Frame


class Detector(Protocol):
    def detect(self, frame: Frame) -> Detections: ...

    def reset(self) -> None: ...
