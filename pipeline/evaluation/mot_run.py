"""Run siamstream's tracker over a MOTChallenge sequence with its public detections (``det/det.txt``).

Per frame: the frame's detections, one crop per detection embedded by the encoder (the same ONNX model and
crop code as the pipeline), then :meth:`Tracker.update` with the capture time ``(frame - 1) / frameRate``. The
output rows are the confirmed tracks matched to a detection in that frame, with the tracker's box. Timing
separates the tracker's own update calls from embedding, so that tracker speed compares with peers that have
no appearance model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from pipeline.config import SourceConfig
from pipeline.crops import crop_batch
from pipeline.detect.motchallenge import MotDetectionFile
from pipeline.encoder import Encoder
from pipeline.evaluation.mot_peers import PeerRun
from pipeline.evaluation.motchallenge import MotSequence
from pipeline.sources import open_source
from pipeline.tracking.tracker import Tracker
from pipeline.types import Embeddings, FrameResult, TrackState

log = logging.getLogger(__name__)


def track_sequence(seq: MotSequence, detections: MotDetectionFile, encoder: Encoder, tracker: Tracker,
                   crop_padding: float = 0.1, on_frame: Callable[[FrameResult], None] | None = None,
                   use_frame_image: bool = True) -> PeerRun:
    """Track ``seq`` with ``tracker`` (reset first); ``on_frame`` sees each frame's result (e.g. a video sink)."""
    tracker.reset()
    detections.reset()
    source = open_source(seq.frames_uri, SourceConfig())
    size = encoder.input_size
    rows: list[tuple[float, ...]] = []
    tracker_s = embed_s = 0.0
    frames = 0
    try:
        for frame in source:
            if frame.index >= seq.length:
                break
            mot_frame = frame.index + 1
            timestamp = frame.index / seq.frame_rate
            dets = detections.detect(frame)
            start = time.perf_counter()
            if len(dets):
                emb = encoder.embed(crop_batch(frame, dets, size, crop_padding), with_patches=False)
            else:
                emb = Embeddings(np.zeros((0, encoder.embedding_dim), np.float32))
            mid = time.perf_counter()
            out = tracker.update(dets, emb, timestamp, frame_image=frame.image if use_frame_image else None)
            tracker_s += time.perf_counter() - mid
            embed_s += mid - start
            frames += 1
            for obs in out.observations:
                if obs.state is TrackState.CONFIRMED and obs.detection_index >= 0:
                    x1, y1, x2, y2 = (float(v) for v in obs.xyxy)
                    conf = float(dets.confidence[obs.detection_index])
                    rows.append((mot_frame, obs.track_id, x1, y1, x2 - x1, y2 - y1, conf))
            if on_frame is not None:
                on_frame(FrameResult(frame, dets, out.observations))
    finally:
        source.close()
    if frames < seq.length:
        log.warning("%s: decoded %d of the %d frames seqinfo.ini announces", seq.name, frames, seq.length)
    arr = np.asarray(rows, np.float64).reshape(-1, 7)
    return PeerRun("siamstream", arr, frames, tracker_s, embed_s)
