"""Run boxmot trackers on given detections: a standalone script for boxmot's own Python environment.

boxmot cannot live in siamstream's environment (it needs ``opencv-python<5`` and ``pandas<3``), so
:mod:`lab.evaluation.boxmot_peers` runs this file with the interpreter of a separate virtual environment. It
imports nothing from siamstream: only numpy, OpenCV and boxmot.

Input: ``--dets`` a ``.npy`` float64 array ``(N, 6)``: ``frame, x, y, w, h, score`` (1-based frames, ``tlwh``
pixels), the detections every tracker of the benchmark gets; ``--frames`` the sequence's frames, for the trackers'
camera-motion compensation: a video file or URL, or ``@LIST`` a text file naming the frame images one per line, in
order (siamstream lists an image folder the way its own image-folder source reads it); ``--embs`` (for the
appearance trackers, :data:`APPEARANCE`) a ``.npy`` float32 ``(N, D)`` array, one embedding per row of ``--dets``:
the trackers are given these embeddings (boxmot's ``Detections.embeddings``) and load no ReID model of their own.
Output in ``--out``: one
``NAME.npy`` per tracker, float64 ``(M, 7)`` MOT rows ``frame, id, x, y, w, h, conf`` (the tracker's boxes), and
``timing.json``: ``{NAME: {"seconds": time inside update() only, "frames": frames run}}``. One thread for torch and
OpenCV, so the trackers' frames per second compare with the other peers'.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# boxmot tracker classes run without a ReID model of boxmot's (its ReID weights would be downloaded: not offline).
TRACKERS: dict[str, tuple[str, str, dict[str, object]]] = {
    "bytetrack": ("boxmot", "ByteTrack", {}),
    "ocsort": ("boxmot", "OcSort", {}),
    "botsort": ("boxmot", "BotSort", {"use_embeddings": False}),
    "boosttrack": ("boxmot", "BoostTrack", {"use_embeddings": False}),
    # appearance trackers: given the caller's embeddings (--embs) with the detections
    "botsort-reid": ("boxmot", "BotSort", {"use_embeddings": True}),
    "strongsort": ("boxmot", "StrongSort", {}),
    "deepocsort": ("boxmot", "DeepOcSort", {}),
}
APPEARANCE: tuple[str, ...] = ("botsort-reid", "strongsort", "deepocsort")


def frames(uri: str, length: int) -> Iterator[np.ndarray]:
    """BGR frames 1..length of ``@LIST`` (a file naming the images in order) or a video file / URL."""
    import cv2

    if uri.startswith("@"):
        files = [line for line in Path(uri[1:]).read_text().splitlines() if line]
        for name in files[:length]:
            img = cv2.imread(name, cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f"boxmot runner: {name}: not a readable image")
            yield img
        return
    cap = cv2.VideoCapture(int(uri) if uri.isdigit() else uri)
    if not cap.isOpened():
        raise SystemExit(f"boxmot runner: {uri}: cannot open the video")
    try:
        for _ in range(length):
            ok, img = cap.read()
            if not ok:
                return
            yield img
    finally:
        cap.release()


def _with_embeddings(tracker: object, d: np.ndarray, embs: np.ndarray, t: int, image: np.ndarray) -> np.ndarray:
    """One ``update`` with boxmot's ``Detections`` carrying the embeddings; ``(K, 6)`` ``x1, y1, x2, y2, id,
    score`` rows (ids from 1, as MOT files number them)."""
    import torch
    from boxmot.structures.detections import Detections
    from boxmot.structures.geometry import Boxes

    xyxy = np.concatenate([d[:, 1:3], d[:, 1:3] + d[:, 3:5]], axis=1).astype(np.float32)
    det = Detections(Boxes(torch.from_numpy(xyxy).reshape(-1, 4)), torch.from_numpy(d[:, 5].astype(np.float32)),
                     torch.zeros(len(d), dtype=torch.int64), str(t),
                     embeddings=torch.from_numpy(np.ascontiguousarray(embs, np.float32)))
    tracks = tracker.update(det, image)  # type: ignore[attr-defined]
    out = np.empty((len(tracks.track_ids), 6), np.float64)
    out[:, :4] = tracks.geometry.values.numpy()
    out[:, 4] = tracks.track_ids.numpy() + 1
    out[:, 5] = tracks.scores.numpy()
    return out


def run(name: str, dets: np.ndarray, uri: str, length: int, fps: float,
        embs: np.ndarray | None = None) -> tuple[np.ndarray, float, int]:
    import importlib
    import inspect

    module, cls_name, kwargs = TRACKERS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    if "frame_rate" in inspect.signature(cls.__init__).parameters:  # ByteTrack, BotSort: buffers in frames
        kwargs = {**kwargs, "frame_rate": max(1, round(fps))}
    print(f"boxmot runner: {name}: {cls_name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})", flush=True)
    tracker = cls(**kwargs)
    if name in APPEARANCE and embs is None:
        raise SystemExit(f"boxmot runner: {name} needs --embs (one embedding per detection row)")
    by_frame = {int(f): np.flatnonzero(dets[:, 0] == f) for f in np.unique(dets[:, 0])}
    rows, seconds, count = [], 0.0, 0
    for t, image in enumerate(frames(uri, length), start=1):
        count = t
        idx = by_frame.get(t, np.zeros(0, np.int64))
        d = dets[idx]
        if name in APPEARANCE:
            assert embs is not None
            start = time.perf_counter()
            out = _with_embeddings(tracker, d, embs[idx], t, image)
            seconds += time.perf_counter() - start
        else:
            inp = np.zeros((len(d), 6), np.float32)
            inp[:, :2] = d[:, 1:3]
            inp[:, 2:4] = d[:, 1:3] + d[:, 3:5]
            inp[:, 4] = d[:, 5]
            start = time.perf_counter()
            raw = tracker.update(inp, image)
            seconds += time.perf_counter() - start
            out = np.asarray(raw, np.float64)
            out = out.reshape(-1, out.shape[1] if out.ndim == 2 and len(out) else 8)
        if len(out):
            r = np.empty((len(out), 7), np.float64)
            r[:, 0] = t
            r[:, 1] = out[:, 4]
            r[:, 2:4] = out[:, 0:2]
            r[:, 4:6] = out[:, 2:4] - out[:, 0:2]
            r[:, 6] = out[:, 5]
            rows.append(r)
    return (np.concatenate(rows) if rows else np.zeros((0, 7))), seconds, count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dets", required=True)
    ap.add_argument("--frames", required=True)
    ap.add_argument("--length", type=int, required=True)
    ap.add_argument("--fps", type=float, required=True)
    ap.add_argument("--trackers", required=True, help=f"comma-separated, of: {', '.join(TRACKERS)}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--embs", help="(N, D) float32 .npy: one embedding per --dets row, for the appearance trackers")
    args = ap.parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    names = [n for n in args.trackers.split(",") if n]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise SystemExit(f"boxmot runner: unknown trackers {unknown}; valid: {', '.join(TRACKERS)}")
    dets = np.load(args.dets)
    embs = np.load(args.embs) if args.embs else None
    if embs is not None and len(embs) != len(dets):
        raise SystemExit(f"boxmot runner: --embs has {len(embs)} rows for {len(dets)} detections")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timing = {}
    for name in names:
        rows, seconds, count = run(name, dets, args.frames, args.length, args.fps, embs)
        np.save(out / f"{name}.npy", rows)
        timing[name] = {"seconds": seconds, "frames": count}
        print(f"boxmot runner: {name}: {count} frames, {len(rows)} rows, {seconds:.2f} s in update()", flush=True)
    (out / "timing.json").write_text(json.dumps(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
