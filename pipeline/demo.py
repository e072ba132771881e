"""``siamstream demo``: the whole product on an embedded synthetic production line, scored against its truth.

1. Export the built-in encoder (ImageNet EfficientNet-Lite0, offline weights) to ONNX.
2. Build the known-good bank from a scene of good parts only (detected, tracked and embedded by the same
   stages the run uses), threshold calibrated on held-out good parts.
3. Run the full pipeline on a different scene where some parts carry defects, serving ``/metrics``.
4. Match each track to the generator's parts and report recall and false alarms.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from prometheus_client import CollectorRegistry

from pipeline import app
from pipeline.config import Config
from pipeline.metrics import PipelineMetrics, serve, write_snapshot
from pipeline.runner import RunSummary, run, stop_on_signals
from pipeline.sinks import EvidenceSink, check_writable_dir, draw_annotations
from pipeline.synthetic import ProductionLineScene, SceneConfig
from pipeline.types import Frame, FrameResult, TrackState

log = logging.getLogger(__name__)

FLAGGED_FRAME = "first_flagged.png"
PART_SCORES = "parts.csv"
MIN_VISIBLE_FRAMES = 15  # parts seen fully for fewer frames than this (scene start/end) are not counted


class SceneSource:
    """A synthetic scene as a (file-like, lossless) frame source; with ``total`` longer than the scene, the scene
    plays over and over, frame indices and times running on."""

    is_live = False
    dropped = 0
    reconnects = 0
    pending = 0

    def __init__(self, scene: ProductionLineScene, name: str, total: int | None = None) -> None:
        self.scene = scene
        self.name = name
        self.fps = scene.cfg.fps
        self.total_frames = len(scene) if total is None else total
        self.frames_read = 0

    def __iter__(self) -> Iterator[Frame]:
        while self.frames_read < self.total_frames:
            for frame in self.scene:
                if self.frames_read >= self.total_frames:
                    return
                i = self.frames_read
                self.frames_read += 1
                yield frame if i == frame.index else Frame(i, i / self.fps, frame.image)

    def close(self) -> None:
        pass


@dataclass
class DemoResult:
    summary: RunSummary
    out: Path
    parts: int  # ground-truth parts fully in view long enough to be inspected
    defective: int
    found: int  # defective parts flagged
    false_alarms: int  # flagged tracks on good parts or on no part
    good_parts: int
    flagged_parts: dict[int, int | None] = field(default_factory=dict)  # track id -> part id
    missed: list[tuple[int, str]] = field(default_factory=list)  # (part id, defect)
    by_defect: dict[str, tuple[int, int]] = field(default_factory=dict)  # defect -> (found, total)
    bank_size: int = 0
    threshold: float = 0.0
    metrics_url: str = ""
    video: Path | None = None  # the annotated video (its first segment)
    flagged_frame: Path | None = None  # the annotated frame the first part was flagged in
    sheet: Path | None = None  # the flagged parts beside their anomaly maps

    @property
    def recall(self) -> float:
        return self.found / self.defective if self.defective else 0.0

    def report_lines(self) -> list[str]:
        s = self.summary
        lines = [
            f"frames       {s.frames} in {s.seconds:.1f} s ({s.fps:.1f} fps)",
            f"bank         {self.bank_size} vectors of good parts, threshold {self.threshold:.4f}",
            f"parts        {self.parts} on the line ({self.defective} defective), {s.tracks} tracks confirmed",
            f"flagged      {len(s.flagged)} parts: "
            + ", ".join(f"track {t} -> part {p if p is not None else '?'}" for t, p in self.flagged_parts.items()),
            f"recall       {self.recall:.3f} ({self.found}/{self.defective} defective parts flagged)",
            "  by defect  " + ", ".join(f"{d} {f}/{n}" for d, (f, n) in sorted(self.by_defect.items())),
            f"false alarms {self.false_alarms} (of {self.good_parts} good parts)",
        ]
        if self.missed:
            lines.append("missed       " + ", ".join(f"part {p} ({d})" for p, d in self.missed))
        lines.append(f"outputs      {self.out}: annotated video, events.jsonl, tracks.txt, evidence/, bank/, "
                     f"metrics.prom, parts.csv (each track's scores against the truth)")
        look: list[tuple[object, str]] = [
            (self.video, "the annotated video: boxes, track ids, verdicts and anomaly maps"),
            (self.flagged_frame, "the frame the first defective part was flagged in"),
            (self.sheet, "the flagged parts, each beside its anomaly map")]
        look += [(self.metrics_url, "what Prometheus scrapes (served while the demo ran; final values in "
                                    "metrics.prom)")] if self.metrics_url else []
        shown = [(str(what), why) for what, why in look if what]
        width = max((len(w) for w, _ in shown), default=0)
        for i, (what, why) in enumerate(shown):
            lines.append(f"{'look at' if i == 0 else '':<13}{what:<{width}}  {why}")
        return lines

    def as_json(self) -> dict[str, object]:
        return {"frames": self.summary.frames, "fps": round(self.summary.fps, 2), "parts": self.parts,
                "defective": self.defective, "flagged": len(self.summary.flagged), "recall": round(self.recall, 4),
                "false_alarms": self.false_alarms, "out": str(self.out)}


def _eligible_parts(scene: ProductionLineScene) -> dict[int, str | None]:
    n = len(scene)
    out: dict[int, str | None] = {}
    for p in scene.parts:
        first, last = max(p.first_frame, 0), min(p.last_frame, n - 1)
        if last - first + 1 >= MIN_VISIBLE_FRAMES:
            out[p.part_id] = p.defect
    return out


def run_demo(cfg: Config, out: Path, frames: int = 600, bank_frames: int = 1200, seed: int = 0,
             serve_metrics: bool = True) -> DemoResult:
    out = Path(out)
    check_writable_dir(out)
    encoder = app.build_encoder(cfg.encoder)

    log.info("building the good-parts bank from a %d-frame scene of good parts", bank_frames)
    good_scene = ProductionLineScene(SceneConfig(num_frames=bank_frames, defect_rate=0.0, seed=seed + 1000))
    samples = app.good_samples_from_frames(good_scene, cfg, encoder)
    bank = app.bank_from_samples(samples, cfg, encoder, "synthetic good-parts scene")
    bank.save(out / "bank")
    log.info("bank: %d %s vectors from %d good crops of %d parts, threshold %.4f", len(bank), bank.meta.level,
             bank.meta.crops, samples.parts, bank.meta.threshold)

    scene = ProductionLineScene(SceneConfig(num_frames=frames, seed=seed))
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, cfg.output.stream_name)
    url = ""
    if serve_metrics and cfg.metrics.enabled:
        port = serve(registry, cfg.metrics.address, cfg.metrics.port)
        url = f"http://{cfg.metrics.address}:{port}/metrics"
    pipeline = app.build_pipeline(cfg, encoder, metrics, bank, out)
    sinks = app.build_sinks(cfg.output, out, scene.cfg.fps, evidence_dir=pipeline.evidence_dir)

    votes: dict[int, Counter[int | None]] = defaultdict(Counter)
    scores: dict[int, list[float]] = defaultdict(list)  # each confirmed track's scored frames

    first_flag = out / FLAGGED_FRAME
    first_flag.unlink(missing_ok=True)

    def record(result: FrameResult) -> None:
        for obs in result.tracks:
            if obs.detection_index >= 0:
                votes[obs.track_id][scene.part_at(result.frame.index, obs.xyxy)] += 1
                if obs.state == TrackState.CONFIRMED and math.isfinite(obs.score):
                    scores[obs.track_id].append(obs.score)
        if result.events and not first_flag.exists():  # the annotated frame the first part was flagged in
            cv2.imwrite(str(first_flag), draw_annotations(result.frame.image, result))

    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            summary = run(SceneSource(scene, "synthetic production line"), pipeline, sinks, stop,
                          cfg.output.progress_every_s, on_result=record)
    finally:
        write_snapshot(registry, str(out / "metrics.prom"))

    truth = _eligible_parts(scene)
    track_part = {t: c.most_common(1)[0][0] for t, c in votes.items()}
    _write_part_scores(out / PART_SCORES, scores, track_part, truth, set(summary.flagged), bank.meta.threshold,
                       cfg.anomaly.min_frames)
    flagged_parts = {t: track_part.get(t) for t in summary.flagged}
    flagged_ids = {p for p in flagged_parts.values() if p is not None}
    defective = {p: d for p, d in truth.items() if d is not None}
    by_defect: dict[str, tuple[int, int]] = {}
    for d in sorted({d for d in defective.values() if d}):
        ids = [p for p, dd in defective.items() if dd == d]
        by_defect[d] = (sum(p in flagged_ids for p in ids), len(ids))
    false_alarms = sum(1 for p in flagged_parts.values() if p is None or truth.get(p) is None)
    return DemoResult(
        summary=summary, out=out, parts=len(truth), defective=len(defective),
        found=sum(p in flagged_ids for p in defective), false_alarms=false_alarms,
        good_parts=len(truth) - len(defective), flagged_parts=flagged_parts,
        missed=[(p, d) for p, d in defective.items() if p not in flagged_ids and d is not None],
        by_defect=by_defect, bank_size=len(bank), threshold=bank.meta.threshold, metrics_url=url,
        video=_first_video(out), flagged_frame=first_flag if first_flag.is_file() else None,
        sheet=next((s.sheet_path for s in sinks if isinstance(s, EvidenceSink) and s.sheet_path.is_file()), None))


def _write_part_scores(path: Path, scores: dict[int, list[float]], track_part: dict[int, int | None],
                       truth: dict[int, str | None], flagged: set[int], threshold: float, min_frames: int) -> None:
    """One row per scored track: the part it followed and that part's truth, its median score (the verdict's
    aggregate) and the highest its running median reached from ``min_frames`` scored frames on (what decides a
    flag), against the bank's threshold."""
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["track", "part", "truth", "frames_scored", "median", "highest_running_median", "threshold",
                      "flagged"])
        for track, values in sorted(scores.items()):
            part = track_part.get(track)
            kind = "no part" if part is None else "not counted" if part not in truth else truth[part] or "good"
            running = max((statistics.median(values[:i]) for i in range(min_frames, len(values) + 1)),
                          default=math.nan)
            out.writerow([track, "" if part is None else part, kind, len(values), f"{statistics.median(values):.4f}",
                          f"{running:.4f}", f"{threshold:.4f}", int(track in flagged)])


def _first_video(out: Path) -> Path | None:
    """The annotated video the run wrote: ``annotated.*``, or the first of its segments."""
    found = sorted(out.glob("annotated.*")) + sorted((out / "annotated").glob("[0-9]*.*"))
    return next((p for p in found if p.suffix in (".mp4", ".avi")), None)
