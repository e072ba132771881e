"""Multi-object tracking scores for one MOTChallenge sequence: TrackEval, cross-checked with motmetrics.

:func:`evaluate` scores tracker output against ground truth twice:

* **TrackEval** (``trackeval``, the MOTChallenge reference code): HOTA, DetA, AssA, LocA, MOTA, MOTP, IDF1,
  IDSW, FP, FN, MT/PT/ML, Frag. The data goes through its own ``MotChallenge2DBox`` dataset class from a
  temporary folder in its expected layout, with the sequence's benchmark protocol, so ground truth is loaded
  and preprocessed exactly as in the official evaluation of that benchmark (:data:`PROTOCOLS`):

  - ``MOT15`` (ground truth without classes): rows whose ``conf`` column is 0 are removed (TrackEval casts
    ``conf`` to int, so ``0 <= conf < 1`` counts as 0); no distractor matching, so a tracker box on an ignored
    person is a false positive.
  - ``MOT17`` (MOT16 and MOT17, ground truth ``frame,id,x,y,w,h,conf,class,visibility``) and ``MOT20``: the
    tracker's boxes matched (Hungarian, IoU >= 0.5) to a distractor's box (a person on a vehicle, a static
    person, a distractor, a reflection; in MOT20 also a non-motorised vehicle) are removed first, then every
    ground-truth row but the pedestrians with ``conf`` 1.

  :func:`protocol_for` picks it from the ground truth: a class column (integers 1-12) and a visibility column
  (0-1) mean MOT17, or MOT20 for a sequence named ``MOT20-...``; otherwise MOT15.
* **motmetrics**: MOTA, IDF1, IDSW (and FP, FN) from its ``MOTAccumulator``, fed the same preprocessed rows
  (:func:`preprocess`) and IoU distances (``1 - IoU``, no match below IoU 0.5, the CLEAR threshold TrackEval
  uses).

Both are percentages, as TrackEval prints them (HOTA 0-100). :meth:`MotScores.disagreement` reports how far
the two libraries differ.

numpy 2: TrackEval 1.3.0 is numpy-2 clean. motmetrics 1.4.0 is not: ``motmetrics.distances.iou_matrix``
calls ``np.asfarray``, removed in numpy 2.0. That function is only a convenience for building the distance
matrix, so this module computes the IoU distances itself and passes them to ``MOTAccumulator.update``;
nothing in motmetrics is patched.

Row format used throughout: ``(N, C)`` float64, ``C >= 6``, columns ``frame`` (1-based), ``id``, ``x, y, w, h``
(``tlwh`` pixels), then optionally ``conf`` and anything else (MOTChallenge ``*.txt`` order).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lab.evaluation.motchallenge import MotSequence
from pipeline.detect.motchallenge import MotFileError, read_mot_ground_truth, read_mot_table

logger = logging.getLogger(__name__)

Float64Array = npt.NDArray[np.float64]
MotRows = Float64Array

# TrackEval's and motmetrics' CLEAR/Identity match threshold (IoU).
IOU_THRESHOLD = 0.5
PROTOCOLS: tuple[str, ...] = ("MOT15", "MOT17", "MOT20")
PEDESTRIAN = 1
# Ground-truth classes whose matched tracker boxes are removed before scoring (TrackEval's distractor classes).
DISTRACTORS: dict[str, tuple[int, ...]] = {"MOT15": (), "MOT17": (2, 7, 8, 12), "MOT20": (2, 6, 7, 8, 12)}
_CLASSES = range(1, 14)  # TrackEval's MOTChallenge classes, pedestrian (1) to crowd (13)
_TRACKER = "tracks"
_SEQ = "sequence"  # the name inside TrackEval's temporary layout: any characters in the real name are safe


class MotEvaluationError(ValueError):
    """Tracker rows or ground truth cannot be scored against this sequence. ``str()`` names the fix."""


@dataclass(frozen=True)
class MotmetricsScores:
    """The motmetrics cross-check (percentages for rates, counts as ints)."""

    mota: float
    idf1: float
    idsw: int
    fp: int
    fn: int


@dataclass(frozen=True)
class MotScores:
    """Scores of one tracker on one sequence. Rates are percentages (0-100) as TrackEval prints them.

    Attributes:
        sequence: the sequence name.
        protocol: the benchmark protocol it was scored with (:data:`PROTOCOLS`).
        hota, deta, assa, loca, detre, detpr, assre, asspr: HOTA family, averaged over TrackEval's 19 IoU
            thresholds 0.05..0.95.
        mota, motp, moda: CLEAR (IoU >= 0.5); MOTP is the mean IoU of matches, in percent.
        idf1, idp, idr: identity metrics.
        idsw, fp, fn, tp, frag: CLEAR counts.
        mt, pt, ml: mostly tracked (>= 80 % of its frames), partly tracked, mostly lost (< 20 %) gt ids.
        gt_ids, gt_dets, tracker_ids, tracker_dets: sizes after preprocessing.
        motmetrics: the same rows scored by motmetrics.
    """

    sequence: str
    protocol: str
    hota: float
    deta: float
    assa: float
    loca: float
    detre: float
    detpr: float
    assre: float
    asspr: float
    mota: float
    motp: float
    moda: float
    idf1: float
    idp: float
    idr: float
    idsw: int
    fp: int
    fn: int
    tp: int
    frag: int
    mt: int
    pt: int
    ml: int
    gt_ids: int
    gt_dets: int
    tracker_ids: int
    tracker_dets: int
    motmetrics: MotmetricsScores

    def disagreement(self) -> dict[str, float]:
        """TrackEval minus motmetrics for MOTA, IDF1 (points) and IDSW, FP, FN (counts); 0.0 means agreement."""
        mm = self.motmetrics
        return {"MOTA": self.mota - mm.mota, "IDF1": self.idf1 - mm.idf1, "IDSW": float(self.idsw - mm.idsw),
                "FP": float(self.fp - mm.fp), "FN": float(self.fn - mm.fn)}

    def describe_disagreement(self) -> str:
        """One line, e.g. ``"MOTA 55.52 vs 55.50 (+0.02), ..."`` (TrackEval vs motmetrics)."""
        mm = self.motmetrics
        parts = [f"MOTA {self.mota:.2f} vs {mm.mota:.2f} ({self.mota - mm.mota:+.2f})",
                 f"IDF1 {self.idf1:.2f} vs {mm.idf1:.2f} ({self.idf1 - mm.idf1:+.2f})",
                 f"IDSW {self.idsw} vs {mm.idsw} ({self.idsw - mm.idsw:+d})",
                 f"FP {self.fp} vs {mm.fp} ({self.fp - mm.fp:+d})",
                 f"FN {self.fn} vs {mm.fn} ({self.fn - mm.fn:+d})"]
        return f"{self.sequence}: TrackEval vs motmetrics: " + ", ".join(parts)

    def summary(self) -> dict[str, float | int | str]:
        """The headline numbers, flat, for tables and JSON."""
        out: dict[str, float | int | str] = {k: v for k, v in asdict(self).items() if k != "motmetrics"}
        out.update({f"mm_{k}": v for k, v in asdict(self.motmetrics).items()})
        return out


def write_mot_txt(path: str | os.PathLike[str], rows: MotRows) -> Path:
    """Write rows as a MOTChallenge tracker file: ``frame,id,x,y,w,h,conf,-1,-1,-1`` per line.

    (:class:`pipeline.sinks.MotTxtSink` writes pipeline results frame by frame; this writes arrays.)

    Args:
        path: output file; its directory is created if needed.
        rows: ``(N, >= 6)`` rows (see module docstring); ``conf`` is column 6 when present, else 1.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _as_rows(rows, "rows", 6)
    conf = arr[:, 6] if arr.shape[1] > 6 else np.ones(len(arr))
    with path.open("w", encoding="utf-8") as f:
        for (frame, tid, x, y, w, h), c in zip(arr[:, :6], conf, strict=True):
            f.write(f"{int(frame)},{int(tid)},{x:.3f},{y:.3f},{w:.3f},{h:.3f},{c:.6g},-1,-1,-1\n")
    return path


def _as_rows(rows: object, what: str, min_columns: int) -> Float64Array:
    arr = np.asarray(rows, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, max(min_columns, arr.shape[-1] if arr.ndim == 2 else 0))
    if arr.ndim != 2 or arr.shape[1] < min_columns:
        raise MotEvaluationError(f"{what}: expected an (N, >= {min_columns}) array of MOT rows "
                                 f"(frame,id,x,y,w,h,...), got shape {arr.shape}")
    if not np.all(np.isfinite(arr[:, :min_columns])):
        raise MotEvaluationError(f"{what}: NaN or inf in the frame/id/box columns; write finite numbers only")
    return arr


def _check_rows(arr: Float64Array, what: str, seq: MotSequence) -> None:
    """Frames in 1..length, integer ids >= 0, one box per (frame, id): what TrackEval needs."""
    if not len(arr):
        return
    frames, ids = arr[:, 0], arr[:, 1]
    bad = (frames < 1) | (frames > seq.length) | (frames != np.round(frames))
    if np.any(bad):
        raise MotEvaluationError(f"{what}: frame {arr[np.argmax(bad), 0]:g} is outside 1..{seq.length} of "
                                 f"{seq.name}; MOT frames count from 1 (pipeline frame index + 1)")
    bad = (ids < 0) | (ids != np.round(ids))
    if np.any(bad):
        raise MotEvaluationError(f"{what}: track id {arr[np.argmax(bad), 1]:g} is not an integer >= 0; "
                                 f"renumber the tracks")
    keys = frames.astype(np.int64) * (int(ids.max()) + 1) + ids.astype(np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    if np.any(counts > 1):
        dup = np.flatnonzero(keys == uniq[np.argmax(counts > 1)])[0]
        raise MotEvaluationError(f"{what}: id {int(ids[dup])} appears more than once in frame {int(frames[dup])}; "
                                 f"a track has one box per frame")


def _load_gt(gt: str | os.PathLike[str] | MotRows | None, seq: MotSequence) -> Float64Array:
    if gt is None:
        if seq.gt_path is None:
            raise MotEvaluationError(f"{seq.root}: sequence {seq.name} has no gt/gt.txt; pass ground truth "
                                     f"rows or evaluate a sequence with ground truth")
        gt = seq.gt_path
    arr = read_mot_ground_truth(gt) if isinstance(gt, (str, os.PathLike)) else _as_rows(gt, "ground truth", 7)
    _check_rows(arr, "ground truth", seq)
    return arr


def _load_tracks(tracks: str | os.PathLike[str] | MotRows, seq: MotSequence) -> Float64Array:
    if isinstance(tracks, (str, os.PathLike)):
        try:
            arr, _ = read_mot_table(tracks, "tracker", 6)
        except MotFileError as exc:
            raise MotEvaluationError(str(exc)) from None
    else:
        arr = _as_rows(tracks, "tracks", 6)
    _check_rows(arr, "tracks", seq)
    return arr


def has_classes(gt: Float64Array, visibility: bool = True) -> bool:
    """Whether ground-truth rows carry a MOT16+ ``class`` column (integers 1-13) and, with ``visibility``, a
    ``visibility`` column (0-1) after it: what tells MOT16+ ground truth from MOT15's world coordinates."""
    if gt.shape[1] < (9 if visibility else 8) or not len(gt):
        return False
    cls = gt[:, 7]
    if not np.all((cls == np.round(cls)) & (cls >= _CLASSES.start) & (cls < _CLASSES.stop)):
        return False
    return not visibility or bool(np.all((gt[:, 8] >= 0.0) & (gt[:, 8] <= 1.0)))


def protocol_for(gt: Float64Array, sequence: str) -> str:
    """The benchmark protocol of a sequence's ground truth (see the module docstring)."""
    if not has_classes(gt):
        return "MOT15"
    return "MOT20" if sequence.upper().startswith("MOT20") else "MOT17"


def gt_kept_mask(gt: Float64Array, protocol: str = "MOT15") -> npt.NDArray[np.bool_]:
    """Ground-truth rows the evaluation keeps: ``int(conf) != 0``, as TrackEval's ``zero_marked``, and, with
    classes (MOT17, MOT20), pedestrians only."""
    keep = gt[:, 6].astype(np.int64) != 0
    if protocol != "MOT15":
        keep &= gt[:, 7].astype(np.int64) == PEDESTRIAN
    return keep


def preprocess(gt: Float64Array, tracks: Float64Array, protocol: str) -> tuple[Float64Array, Float64Array]:
    """(ground truth, tracker rows) as TrackEval scores them under ``protocol``: per frame, the tracker boxes
    matched (Hungarian on IoU, at least 0.5) to a distractor class's box removed, then the ground truth kept by
    :func:`gt_kept_mask`."""
    from scipy.optimize import linear_sum_assignment

    distractors = DISTRACTORS[protocol]
    drop = np.zeros(len(tracks), bool)
    if distractors and len(gt) and len(tracks):
        g_order, h_order = np.argsort(gt[:, 0], kind="stable"), np.argsort(tracks[:, 0], kind="stable")
        g_frames, h_frames = gt[g_order, 0], tracks[h_order, 0]
        for frame in np.intersect1d(g_frames, h_frames):
            g = g_order[np.searchsorted(g_frames, frame):np.searchsorted(g_frames, frame, side="right")]
            h = h_order[np.searchsorted(h_frames, frame):np.searchsorted(h_frames, frame, side="right")]
            iou = _tlwh_iou(gt[g, 2:6], tracks[h, 2:6])
            iou[iou < IOU_THRESHOLD - np.finfo(float).eps] = 0.0
            rows, cols = linear_sum_assignment(-iou)
            matched = iou[rows, cols] > np.finfo(float).eps
            rows, cols = rows[matched], cols[matched]
            drop[h[cols[np.isin(gt[g[rows], 7].astype(np.int64), distractors)]]] = True
    return gt[gt_kept_mask(gt, protocol)], tracks[~drop]


def _write_trackeval_layout(root: Path, gt: Float64Array, tracks: Float64Array, seq: MotSequence) -> None:
    """``root/gt/<seq>/gt/gt.txt`` and ``root/trackers/<tracker>/data/<seq>.txt``, as TrackEval reads them."""
    gt_dir = root / "gt" / _SEQ / "gt"
    gt_dir.mkdir(parents=True)
    gt10 = np.full((len(gt), 10), -1.0)
    gt10[:, : min(10, gt.shape[1])] = gt[:, :10]
    # %.17g: TrackEval reads back exactly the values motmetrics and preprocess() use; its GT reader needs >= 8
    # columns.
    np.savetxt(gt_dir / "gt.txt", gt10, fmt="%.17g", delimiter=",")
    (root / "gt" / _SEQ / "seqinfo.ini").write_text(
        f"[Sequence]\nname={_SEQ}\nframeRate={seq.frame_rate:g}\nseqLength={seq.length}\n"
        f"imWidth={seq.width}\nimHeight={seq.height}\n", encoding="utf-8")
    tr_dir = root / "trackers" / _TRACKER / "data"
    tr_dir.mkdir(parents=True)
    tr = np.full((len(tracks), 10), -1.0)
    tr[:, :6] = tracks[:, :6]
    # Column 8 is TrackEval's class for tracker rows: -1 (<= 1) means pedestrian-compatible.
    tr[:, 6] = tracks[:, 6] if tracks.shape[1] > 6 else 1.0
    np.savetxt(tr_dir / f"{_SEQ}.txt", tr, fmt="%.17g", delimiter=",")


def _trackeval(gt: Float64Array, tracks: Float64Array, seq: MotSequence, protocol: str) -> dict[str, Any]:
    import trackeval  # the `lab` extra
    with tempfile.TemporaryDirectory(prefix="siamstream-trackeval-") as tmp:
        root = Path(tmp)
        _write_trackeval_layout(root, gt, tracks, seq)
        eval_config = {
            "USE_PARALLEL": False, "BREAK_ON_ERROR": True, "RETURN_ON_ERROR": False, "LOG_ON_ERROR": None,
            "PRINT_RESULTS": False, "PRINT_ONLY_COMBINED": False, "PRINT_CONFIG": False, "TIME_PROGRESS": False,
            "DISPLAY_LESS_PROGRESS": True, "OUTPUT_SUMMARY": False, "OUTPUT_EMPTY_CLASSES": False,
            "OUTPUT_DETAILED": False, "PLOT_CURVES": False,
        }
        dataset_config = {
            "GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"),
            "OUTPUT_FOLDER": str(root / "out"), "TRACKERS_TO_EVAL": [_TRACKER], "CLASSES_TO_EVAL": ["pedestrian"],
            "BENCHMARK": protocol, "SPLIT_TO_EVAL": "train", "INPUT_AS_ZIP": False, "PRINT_CONFIG": False,
            "DO_PREPROC": True, "TRACKER_SUB_FOLDER": "data", "OUTPUT_SUB_FOLDER": "",
            "SEQ_INFO": {_SEQ: seq.length}, "GT_LOC_FORMAT": "{gt_folder}/{seq}/gt/gt.txt", "SKIP_SPLIT_FOL": True,
        }
        metric_config = {"THRESHOLD": IOU_THRESHOLD, "PRINT_CONFIG": False}
        # TrackEval reports progress with print(); keep it off stdout (and out of the CLI's tables).
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                evaluator = trackeval.Evaluator(eval_config)
                dataset = trackeval.datasets.MotChallenge2DBox(dataset_config)
                metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(metric_config),
                           trackeval.metrics.Identity(metric_config)]
                results, messages = evaluator.evaluate([dataset], metrics)
            except trackeval.utils.TrackEvalException as exc:
                raise MotEvaluationError(f"{seq.name}: TrackEval rejected the data: {exc}") from None
        logger.debug("TrackEval output:\n%s", out.getvalue())
        res = results["MotChallenge2DBox"][_TRACKER]
        if res is None:
            raise MotEvaluationError(f"{seq.name}: TrackEval failed: {messages['MotChallenge2DBox'][_TRACKER]}")
        per_class: dict[str, Any] = res[_SEQ]["pedestrian"]
        return per_class


def _tlwh_iou(a: Float64Array, b: Float64Array) -> Float64Array:
    """``(N, M)`` IoU of ``tlwh`` boxes, computed as TrackEval's ``_calculate_box_ious`` does (areas from the
    corners, the same eps guards), so the two libraries agree at the IoU 0.5 boundary to the last bit."""
    a_xyxy = np.concatenate([a[:, :2], a[:, :2] + a[:, 2:4]], axis=1)
    b_xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:4]], axis=1)
    lo = np.maximum(a_xyxy[:, None, :], b_xyxy[None, :, :])
    hi = np.minimum(a_xyxy[:, None, :], b_xyxy[None, :, :])
    inter = np.maximum(hi[..., 2] - lo[..., 0], 0) * np.maximum(hi[..., 3] - lo[..., 1], 0)
    area_a = (a_xyxy[:, 2] - a_xyxy[:, 0]) * (a_xyxy[:, 3] - a_xyxy[:, 1])
    area_b = (b_xyxy[:, 2] - b_xyxy[:, 0]) * (b_xyxy[:, 3] - b_xyxy[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    eps = np.finfo(np.float64).eps
    inter[area_a <= eps, :] = 0.0
    inter[:, area_b <= eps] = 0.0
    inter[union <= eps] = 0.0
    union[union <= eps] = 1.0
    return np.asarray(inter / union, np.float64)


def _motmetrics(gt: Float64Array, tracks: Float64Array, seq: MotSequence) -> MotmetricsScores:
    import motmetrics as mm  # the `lab` extra
    acc = mm.MOTAccumulator(auto_id=False)
    gt_frames = gt[:, 0].astype(np.int64)
    tr_frames = tracks[:, 0].astype(np.int64)
    gt_order, tr_order = np.argsort(gt_frames, kind="stable"), np.argsort(tr_frames, kind="stable")
    gt_bounds = np.searchsorted(gt_frames[gt_order], np.arange(1, seq.length + 2))
    tr_bounds = np.searchsorted(tr_frames[tr_order], np.arange(1, seq.length + 2))
    for t in range(seq.length):
        g = gt[gt_order[gt_bounds[t]:gt_bounds[t + 1]]]
        h = tracks[tr_order[tr_bounds[t]:tr_bounds[t + 1]]]
        dist = 1.0 - _tlwh_iou(g[:, 2:6], h[:, 2:6])
        # motmetrics' convention: NaN = may not be paired. IoU >= 0.5 may pair, as in TrackEval.
        dist[dist > 1.0 - IOU_THRESHOLD] = np.nan
        acc.update(g[:, 1].astype(np.int64).tolist(), h[:, 1].astype(np.int64).tolist(), dist, frameid=t + 1)
    summary = mm.metrics.create().compute(
        acc, metrics=["mota", "idf1", "num_switches", "num_false_positives", "num_misses"], name=seq.name)
    row = summary.loc[seq.name]

    def pct(value: Any) -> float:
        v = float(value)
        return 100.0 * v if math.isfinite(v) else 0.0

    return MotmetricsScores(mota=pct(row["mota"]), idf1=pct(row["idf1"]), idsw=int(row["num_switches"]),
                            fp=int(row["num_false_positives"]), fn=int(row["num_misses"]))


def resolve_protocol(gt_rows: Float64Array, seq: MotSequence, protocol: str | None) -> str:
    """``protocol`` checked against the ground truth, or, when None, read from it (:func:`protocol_for`).

    Raises:
        MotEvaluationError: an unknown protocol, or one with classes for ground truth without a class column.
    """
    if protocol is None:
        return protocol_for(gt_rows, seq.name)
    if protocol not in PROTOCOLS:
        raise MotEvaluationError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}; choose one of them "
                                 f"(or let the ground truth decide)")
    if protocol != "MOT15" and not has_classes(gt_rows, visibility=False):
        raise MotEvaluationError(f"{seq.name}: the {protocol} protocol needs ground truth with a class column "
                                 f"(frame,id,x,y,w,h,conf,class[,visibility], classes 1-13); this has none: "
                                 f"score it with the MOT15 protocol")
    return protocol


def check_ground_truth(seq: MotSequence, protocol: str | None = None) -> str:
    """Read ``seq``'s ground truth and resolve its protocol, before any tracking: a bad file or protocol is said
    up front. Returns the protocol."""
    return resolve_protocol(_load_gt(None, seq), seq, protocol)


def evaluate(gt: str | os.PathLike[str] | MotRows | None, tracks: str | os.PathLike[str] | MotRows,
             seq: MotSequence, protocol: str | None = None) -> MotScores:
    """Score tracker output on one sequence with TrackEval (its benchmark's protocol), cross-checked with
    motmetrics.

    Args:
        gt: the ``gt.txt`` path, ground-truth rows ``(N, >= 7)`` (column 6 is ``conf``; 0 = ignored; MOT16+:
            then ``class, visibility``), or None for ``seq.gt_path``.
        tracks: a MOT tracker ``.txt`` path or rows ``(M, >= 6)``: ``frame, id, x, y, w, h[, conf]``.
        seq: the sequence (its ``length`` sets the frames 1..length evaluated).
        protocol: one of :data:`PROTOCOLS`, or None to read it from the ground truth (:func:`protocol_for`).

    Returns:
        The scores, rates in percent.

    Raises:
        MotFileError: a file is missing or malformed.
        MotEvaluationError: frames outside ``1..seq.length``, negative or fractional ids, an id twice in
            one frame, a protocol with classes for ground truth without them, or TrackEval refusing the data.
    """
    gt_rows = _load_gt(gt, seq)
    track_rows = _load_tracks(tracks, seq)
    protocol = resolve_protocol(gt_rows, seq, protocol)
    te = _trackeval(gt_rows, track_rows, seq, protocol)
    hota, clear, ident, count = te["HOTA"], te["CLEAR"], te["Identity"], te["Count"]

    def mean_pct(key: str) -> float:
        return float(100.0 * np.mean(hota[key]))

    kept_gt, kept_tracks = preprocess(gt_rows, track_rows, protocol)
    return MotScores(
        sequence=seq.name, protocol=protocol,
        hota=mean_pct("HOTA"), deta=mean_pct("DetA"), assa=mean_pct("AssA"), loca=mean_pct("LocA"),
        detre=mean_pct("DetRe"), detpr=mean_pct("DetPr"), assre=mean_pct("AssRe"), asspr=mean_pct("AssPr"),
        mota=100.0 * float(clear["MOTA"]), motp=100.0 * float(clear["MOTP"]), moda=100.0 * float(clear["MODA"]),
        idf1=100.0 * float(ident["IDF1"]), idp=100.0 * float(ident["IDP"]), idr=100.0 * float(ident["IDR"]),
        idsw=int(clear["IDSW"]), fp=int(clear["CLR_FP"]), fn=int(clear["CLR_FN"]), tp=int(clear["CLR_TP"]),
        frag=int(clear["Frag"]), mt=int(clear["MT"]), pt=int(clear["PT"]), ml=int(clear["ML"]),
        gt_ids=int(count["GT_IDs"]), gt_dets=int(count["GT_Dets"]), tracker_ids=int(count["IDs"]),
        tracker_dets=int(count["Dets"]),
        motmetrics=_motmetrics(kept_gt, kept_tracks, seq),
    )
