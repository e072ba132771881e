"""``siamstream eval gallery``: cross-camera identities and one-shot names from the gallery, on held-out identities.

The data is a Market-1501 style folder of identities the model never trained on (``train --recipe reid`` writes one
to ``RUN/validation``). Each (identity, camera) is one track: the mean embedding of its images, as a tracker's
finished track would hand in. The identities are split in two halves, seeded: thresholds are chosen on the first
(calibration) half by a rule fixed here, and the figures are measured on the other half.

- **Re-entries.** The tracks of the test identities arrive in a random order (several orders, seeded), each assigned
  by :meth:`pipeline.gallery.Gallery.assign`. A track whose identity was seen before (on another camera) is right
  when it gets the global id that identity's first track started; a track linked to a global id another identity
  started is a false merge; a first appearance is right when it starts a new id. Threshold and margin: among
  cosine distances in 0.02 steps and the margins of :data:`MARGINS`, the pair with the most right re-entries on the
  calibration identities whose false-merge rate there is at most ``max_false_merge`` (then the larger margin).
- **One-shot names.** Half of the test identities are enrolled from one image each (of one camera); every track of
  theirs on another camera should get its name, and the tracks of the other half (never enrolled) should get
  none. Threshold: the largest distance whose false-name rate on the calibration identities (split the same way)
  is at most ``max_false_merge``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoders.evaluate import EvaluationError
from lab.evaluation.reid_eval import GALLERY_DIR, QUERY_DIR, ReidEmbedder, read_market_folder
from pipeline.gallery import Gallery

__all__ = ["GalleryReport", "Tracks", "enrolment_rates", "evaluate_gallery", "reentry_rates"]

THRESHOLDS = np.round(np.arange(0.05, 1.2001, 0.02), 2)
MARGINS = (0.0, 0.05, 0.1, 0.15)


@dataclass(frozen=True)
class Tracks:
    """One mean embedding per (identity, camera), and one single image embedding per track for enrolment."""

    vectors: np.ndarray  # (T, D) L2-normalised means
    first_image: np.ndarray  # (T, D) one image of the track (for one-shot enrolment)
    ids: np.ndarray  # (T,)
    cams: np.ndarray  # (T,)


MIN_IDENTITIES = 8


def tracks_from(embeddings: np.ndarray, ids: np.ndarray, cams: np.ndarray) -> Tracks:
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (pid, cam) in enumerate(zip(ids.tolist(), cams.tolist(), strict=True)):
        if pid > 0:  # -1 junk, 0 distractors
            groups[(pid, cam)].append(i)
    keys = sorted(groups)
    if not keys:  # no image of a known identity
        empty = np.zeros((0, embeddings.shape[1]), np.float32)
        return Tracks(empty, empty, np.zeros(0, np.int64), np.zeros(0, np.int64))
    means = np.stack([embeddings[groups[k]].mean(axis=0) for k in keys])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    first = np.stack([embeddings[groups[k][0]] for k in keys])
    return Tracks(means.astype(np.float32), first.astype(np.float32), np.array([k[0] for k in keys]),
                  np.array([k[1] for k in keys]))


def reentry_rates(tracks: Tracks, identities: np.ndarray, threshold: float, orders: int = 5,
                  seed: int = 0, margin: float = 0.0) -> dict[str, float]:
    """Right re-entries, false merges and right first appearances of ``identities``' tracks, averaged over
    ``orders`` random arrival orders."""
    sel = np.flatnonzero(np.isin(tracks.ids, identities))
    rng = np.random.default_rng(seed)
    right = reentries = merges = firsts = first_right = 0
    for _ in range(orders):
        gallery = Gallery(tracks.vectors.shape[1], threshold, margin)
        owner: dict[int, int] = {}  # global id -> the identity whose track started it
        first_gid: dict[int, int] = {}
        for t, i in enumerate(rng.permutation(sel)):
            pid = int(tracks.ids[i])
            m = gallery.assign(tracks.vectors[i], f"c{tracks.cams[i]}", float(t))
            if m.new:
                owner[m.global_id] = pid
            elif owner[m.global_id] != pid:
                merges += 1
            if pid in first_gid:
                reentries += 1
                right += int(not m.new and m.global_id == first_gid[pid])
            else:
                firsts += 1
                first_right += int(m.new)
                first_gid[pid] = m.global_id if m.new else -1
    total = orders * len(sel)
    return {"reentry_right": right / max(reentries, 1), "false_merge": merges / max(total, 1),
            "first_right": first_right / max(firsts, 1), "reentries": reentries / orders, "tracks": len(sel)}


def enrolment_rates(tracks: Tracks, enrolled: np.ndarray, others: np.ndarray, threshold: float) -> dict[str, float]:
    """Each identity of ``enrolled`` enrolled from one image of its first camera; its tracks on other cameras
    should get its name; the tracks of ``others`` should get none."""
    gallery = Gallery(tracks.vectors.shape[1], threshold)
    enrol_cam: dict[int, int] = {}
    for pid in enrolled.tolist():
        i = int(np.flatnonzero(tracks.ids == pid)[0])
        gallery.enroll(f"id{pid}", tracks.first_image[i])
        enrol_cam[pid] = int(tracks.cams[i])
    right = asked = false = strangers = 0
    for i in range(len(tracks.ids)):
        pid = int(tracks.ids[i])
        if pid in enrol_cam and tracks.cams[i] != enrol_cam[pid]:
            asked += 1
            right += int(gallery.assign(tracks.vectors[i], f"c{tracks.cams[i]}", 0.0, store=False).name == f"id{pid}")
        elif pid in set(others.tolist()):
            strangers += 1
            false += int(gallery.assign(tracks.vectors[i], f"c{tracks.cams[i]}", 0.0, store=False).name is not None)
    return {"name_right": right / max(asked, 1), "false_name": false / max(strangers, 1), "named_tracks": asked,
            "stranger_tracks": strangers}


def _largest_within(rate: dict[float, float], limit: float) -> float:
    ok = [t for t, r in rate.items() if r <= limit]
    return max(ok) if ok else float(min(rate))


@dataclass(frozen=True)
class GalleryReport:
    threshold: float
    margin: float
    name_threshold: float
    reentry: dict[str, float]
    enrolment: dict[str, float]
    calibration_identities: int
    test_identities: int

    def figures(self) -> dict[str, object]:
        return {"reentry_right": round(self.reentry["reentry_right"], 4),
                "false_merge": round(self.reentry["false_merge"], 4),
                "first_right": round(self.reentry["first_right"], 4), "threshold": self.threshold,
                "margin": self.margin,
                "name_right": round(self.enrolment["name_right"], 4),
                "false_name": round(self.enrolment["false_name"], 4), "name_threshold": self.name_threshold,
                "calibration_identities": self.calibration_identities, "test_identities": self.test_identities}


def evaluate_gallery(model: Path, data: Path, threads: int = 0, max_false_merge: float = 0.05,
                     seed: int = 0) -> GalleryReport:
    embed = ReidEmbedder(model, threads=threads)
    query, gallery = read_market_folder(data / QUERY_DIR), read_market_folder(data / GALLERY_DIR)
    paths = query.paths + gallery.paths
    tracks = tracks_from(embed(paths), np.concatenate([query.ids, gallery.ids]),
                         np.concatenate([query.cams, gallery.cams]))
    multi = np.array(sorted({int(p) for p in tracks.ids if (tracks.ids == p).sum() >= 2}))  # seen by 2+ cameras
    if len(multi) < MIN_IDENTITIES:
        raise EvaluationError(f"{data}: {len(multi)} identities are seen by two or more cameras; the gallery needs at "
                              f"least {MIN_IDENTITIES} (half choose the thresholds, half are measured): use a folder "
                              f"of more identities, e.g. a re-id run's validation/")
    ids = np.random.default_rng(seed).permutation(multi)
    calib, test = ids[: len(ids) // 2], ids[len(ids) // 2:]
    calib_rates = {(float(t), m): reentry_rates(tracks, calib, float(t), seed=seed, margin=m)
                   for t in THRESHOLDS for m in MARGINS}
    ok = [k for k, r in calib_rates.items() if r["false_merge"] <= max_false_merge]
    threshold, margin = max(ok, key=lambda k: (calib_rates[k]["reentry_right"], k[1])) if ok else (0.0, 0.0)
    half = len(calib) // 2
    names = {float(t): enrolment_rates(tracks, calib[:half], calib[half:], float(t))["false_name"]
             for t in THRESHOLDS}
    name_threshold = _largest_within(names, max_false_merge)
    reentry = reentry_rates(tracks, test, threshold, seed=seed + 1, margin=margin)
    half = len(test) // 2
    enrolment = enrolment_rates(tracks, test[:half], test[half:], name_threshold)
    return GalleryReport(threshold, margin, name_threshold, reentry, enrolment, len(calib), len(test))
