"""One frame step, detect -> crop -> embed -> track: the same code for ``run``, ``bank build`` and ``eval mot``.

:class:`FrameStep` holds the detector, the encoders and the tracker; calling it on a frame returns the frame's
detections, the part crops and their embeddings (what the anomaly stage and a bank score), and the tracker's
output. Each stage's time goes to ``observe(stage, seconds)`` (``"detect"``, ``"crop"``, ``"encode"``, ``"track"``)
when one is given: the Prometheus stage histograms at run time, the speed split in ``eval mot``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.crops import box_crop_batch, crop_batch
from pipeline.detect import Detector
from pipeline.encoder import Encoder
from pipeline.tracking.appearance import check_region, tracking_embeddings
from pipeline.tracking.tracker import Tracker, TrackerOutput
from pipeline.types import CropBatch, Detections, Embeddings, Frame

Observe = Callable[[str, float], None]


@dataclass(frozen=True)
class StepResult:
    """One frame after the step.

    Attributes:
        detections: what the detector found.
        crops: the part crops (each detection's padded box at the part encoder's input size); ``None`` when
            the part encoder did not run.
        embeddings: the part encoder's embeddings of ``crops`` (with patch features when the step was built
            with ``part_patches``); ``None`` when it did not run.
        tracked: the tracker's output for the frame.
        appearance: the vectors the tracker compared, one per detection (the re-identification model's when
            there is one).
    """

    detections: Detections
    crops: CropBatch | None
    embeddings: Embeddings | None
    tracked: TrackerOutput
    appearance: Embeddings | None = None


class FrameStep:
    """detect -> crop -> embed -> track for one frame.

    Args:
        detector: the frame's detections (a model, background subtraction or a MOTChallenge ``det.txt``).
        tracker: keeps identities; fed the re-identification embeddings when ``reid_encoder`` is given, else
            the part encoder's (``appearance_region``, ``color_weight``: see
            :func:`pipeline.tracking.appearance.tracking_embeddings`).
        encoder: the part encoder (anomaly features); ``None`` when only ``reid_encoder`` runs.
        reid_encoder: the tracker's own appearance model, embedding each detection box at its own shape.
        parts: the caller needs the part embeddings (an anomaly stage, a bank being built); without it the
            part encoder runs only when it is the tracker's appearance.
        part_patches: the part embeddings carry patch features (patch-level banks).
        crop_padding: context added around each box before the part crop is cut, as a fraction of its size.
        use_frame_image: hand the frame to the tracker (camera-motion compensation and colour features).
        observe: receives each stage's seconds.
    """

    def __init__(self, detector: Detector, tracker: Tracker, encoder: Encoder | None, *,
                 reid_encoder: Encoder | None = None, parts: bool = False, part_patches: bool = False,
                 crop_padding: float = 0.1, appearance_region: str = "crop", color_weight: float = 0.0,
                 use_frame_image: bool = True, observe: Observe | None = None) -> None:
        if encoder is None and (reid_encoder is None or parts):
            raise ValueError("FrameStep needs a part encoder when it embeds parts or has no reid_encoder")
        if encoder is not None and reid_encoder is None:
            check_region(appearance_region, encoder.patch_grid, getattr(encoder, "path", ""))
        self.detector = detector
        self.tracker = tracker
        self.encoder = encoder
        self.reid_encoder = reid_encoder
        self.parts = parts
        # The part encoder runs when its embeddings are needed, or when it is the tracker's appearance.
        self._embed_parts = parts or reid_encoder is None
        box_appearance = reid_encoder is None and appearance_region == "box"
        self._patches = self._embed_parts and (part_patches or box_appearance)
        self.crop_padding = crop_padding
        self.appearance_region = appearance_region
        self.color_weight = color_weight
        self.use_frame_image = use_frame_image
        self._observe = observe

    def _timed(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        if self._observe is not None:
            self._observe(stage, now - start)
        return now

    def detect(self, frame: Frame) -> Detections:
        """The first stage alone (a reader thread may run it ahead of the rest: :func:`pipeline.runner.run`)."""
        t = time.perf_counter()
        dets = self.detector.detect(frame)
        self._timed("detect", t)
        return dets

    def __call__(self, frame: Frame, detections: Detections | None = None) -> StepResult:
        """The frame through every stage; ``detections``: :meth:`detect` already ran on it."""
        dets = self.detect(frame) if detections is None else detections
        t = time.perf_counter()
        enc, reid = self.encoder, self.reid_encoder
        part_enc = enc if self._embed_parts else None
        crops = crop_batch(frame, dets, part_enc.input_size, self.crop_padding) if part_enc is not None else None
        people = box_crop_batch(frame, dets, reid.input_size) if reid is not None else None
        t = self._timed("crop", t)
        # all crops as one batch per encoder
        emb = part_enc.embed(crops, with_patches=self._patches) if part_enc is not None and crops is not None else None
        if reid is not None and people is not None:
            seen = reid.embed(people, with_patches=False)
        else:
            assert emb is not None and crops is not None  # the part encoder is the tracker's appearance
            seen = tracking_embeddings(emb, crops.xyxy, dets.xyxy, self.appearance_region, (frame.width, frame.height),
                                       image=frame.image, color_weight=self.color_weight)
        t = self._timed("encode", t)
        tracked = self.tracker.update(dets, seen, frame.timestamp,
                                      frame_image=frame.image if self.use_frame_image else None)
        self._timed("track", t)
        return StepResult(dets, crops, emb, tracked, seen)
