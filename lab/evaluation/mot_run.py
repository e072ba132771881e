"""Run siamstream's tracker over a MOTChallenge sequence with its public detections (``det/det.txt``).

Per frame, the pipeline's own frame step (:class:`pipeline.step.FrameStep`): the frame's detections, one crop per
detection embedded by the encoder, then :meth:`Tracker.update` with the capture time ``(frame - 1) / frameRate``. The
online output rows are the confirmed tracks matched to a detection in that frame, with the tracker's box.
With ``fill_gaps`` (``[output] mot_fill_gaps``), the rows returned are cleaned up offline once the whole sequence
is tracked (:mod:`pipeline.tracking.postprocess`): a confirmed track also gets the frames it was tentative in,
tracks never confirmed are dropped, and every gap a track was lost for and found again after (at most
``max_lost_seconds``, the tracker's own limit) is filled by linear interpolation. Timing separates the tracker's
own update calls from embedding, so that tracker speed compares with peers that have no appearance model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from lab.evaluation.mot_peers import PeerRun
from lab.evaluation.motchallenge import MotSequence
from pipeline.config import SourceConfig
from pipeline.detect.motchallenge import MotDetectionFile
from pipeline.encoder import Encoder
from pipeline.progress import Progress
from pipeline.sources import open_source
from pipeline.step import FrameStep
from pipeline.tracking.postprocess import interpolate_gaps, keep_confirmed
from pipeline.tracking.tracker import Tracker
from pipeline.types import FrameResult, TrackState

log = logging.getLogger(__name__)


def track_sequence(seq: MotSequence, detections: MotDetectionFile, encoder: Encoder, tracker: Tracker,
                   crop_padding: float = 0.1, on_frame: Callable[[FrameResult], None] | None = None,
                   use_frame_image: bool = True, fill_gaps: bool = True, appearance_region: str = "crop",
                   color_weight: float = 0.0, reid: bool = False) -> PeerRun:
    """Track ``seq`` with ``tracker`` (reset first); ``on_frame`` sees each frame's result (e.g. a video sink).
    The run's ``rows`` are the offline-cleaned rows with ``fill_gaps``, else the online ones (``online_rows``
    holds those in both cases). ``appearance_region`` and ``color_weight`` are the ``[tracker]`` keys
    (:func:`pipeline.tracking.appearance.tracking_embeddings`). With ``reid``, ``encoder`` is a person
    re-identification model (``[tracker] reid_model``): it embeds each detection box at its own shape
    (:func:`pipeline.crops.box_crop_batch`) and the tracker compares those embeddings."""
    tracker.reset()
    detections.reset()
    seconds = {"detect": 0.0, "crop": 0.0, "encode": 0.0, "track": 0.0}

    def observe(stage: str, s: float) -> None:
        seconds[stage] += s

    step = FrameStep(detections, tracker, None if reid else encoder, reid_encoder=encoder if reid else None,
                     crop_padding=crop_padding, appearance_region=appearance_region, color_weight=color_weight,
                     use_frame_image=use_frame_image, observe=observe)
    # frames at (frame - 1) / frameRate seconds
    source = open_source(seq.frames_uri, SourceConfig(fps_hint=seq.frame_rate))
    rows: list[tuple[float, ...]] = []
    candidates: list[tuple[float, ...]] = []  # tentative and confirmed, for the offline clean-up
    confirmed: set[int] = set()
    frames = crops = 0
    bar = Progress(f"{seq.name}", seq.length, "frame")
    try:
        for frame in source:
            if frame.index >= seq.length:
                break
            mot_frame = frame.index + 1
            result = step(frame)
            bar.update()
            dets, out = result.detections, result.tracked
            crops += len(dets)
            frames += 1
            for obs in out.observations:
                if obs.detection_index < 0 or obs.state not in (TrackState.CONFIRMED, TrackState.TENTATIVE):
                    continue
                x1, y1, x2, y2 = (float(v) for v in obs.xyxy)
                conf = float(dets.confidence[obs.detection_index])
                row = (mot_frame, obs.track_id, x1, y1, x2 - x1, y2 - y1, conf)
                candidates.append(row)
                if obs.state is TrackState.CONFIRMED:
                    rows.append(row)
                    confirmed.add(obs.track_id)
            if on_frame is not None:
                on_frame(FrameResult(frame, dets, out.observations))
    finally:
        bar.close()
        source.close()
    tracker_s, embed_s = seconds["track"], seconds["crop"] + seconds["encode"]
    if frames < seq.length:
        log.warning("%s: decoded %d of the %d frames seqinfo.ini announces", seq.name, frames, seq.length)
    online = np.asarray(rows, np.float64).reshape(-1, 7)
    out_rows = online
    if fill_gaps:
        max_gap = max(0, int(tracker.max_lost_seconds * seq.frame_rate))
        out_rows = interpolate_gaps(keep_confirmed(np.asarray(candidates, np.float64).reshape(-1, 7), confirmed),
                                    max_gap)
    return PeerRun("siamstream", out_rows, frames, tracker_s, embed_s, online_rows=online, crops=crops)
