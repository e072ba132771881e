"""A stream's tracks handed to the gallery: one global identity across cameras, and enrolled names.

Each confirmed track's re-identification embeddings (the vectors the tracker compared) are summed while it lives;
once a track has been seen in ``min_frames`` frames it hands its mean to the shared :class:`~pipeline.gallery.Gallery`
with the stream's name as its camera, and gets a global id: an earlier track of another camera, an enrolled name,
or a new identity. The id is decided then, while the track lives, so that the part's events and alerts carry it
(:meth:`IdentityStage.label`). The gallery keeps that mean of the track's first ``min_frames`` frames: every track
is compared on the same footing, however long it lived. Each decision is an :class:`IdentityEvent`, given to
``on_identity`` (``OUT/identities.jsonl``). The enrolled names are
a file (:func:`load_names`, written by ``siamstream gallery add``): names with their embeddings and the id of the
model that made them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.gallery import Gallery
from pipeline.types import AnomalyEvent, TrackObservation, TrackState

__all__ = ["GalleryNamesError", "IdentityEvent", "IdentityStage", "add_names", "load_names"]


class GalleryNamesError(ValueError):
    """The enrolled names cannot be used. ``str()`` names the file and the fix."""


@dataclass(frozen=True)
class IdentityEvent:
    stream: str
    track_id: int
    global_id: int
    name: str | None
    new: bool  # the first time this identity is seen
    frames: int  # frames the track had been seen in when its id was decided
    last_seen: float  # the track's timestamp then, seconds
    seen_before_on: str | None  # the camera of the matched earlier track ("" for an enrolled name)
    seen_before_at: float | None
    distance: float | None

    def to_json(self) -> str:
        d = asdict(self)
        if d["distance"] is not None and not math.isfinite(d["distance"]):
            d["distance"] = None
        return json.dumps(d)


class IdentityStage:
    def __init__(self, gallery: Gallery, camera: str, min_frames: int,
                 on_identity: Callable[[IdentityEvent], None]) -> None:
        self.gallery, self.camera, self.min_frames, self.on_identity = gallery, camera, min_frames, on_identity
        self._sum: dict[int, np.ndarray] = {}
        self._frames: dict[int, int] = {}
        self._last: dict[int, float] = {}
        self.assigned: dict[int, int] = {}  # live track id -> global id
        self._names: dict[int, str] = {}  # live track id -> the enrolled name its identity matched

    def observe(self, observations: list[TrackObservation], appearance: np.ndarray, timestamp: float
                ) -> list[IdentityEvent]:
        """Add this frame's embedding of every confirmed track that matched a detection; a track that reaches
        ``min_frames`` gets its global id now. Returns (and reports) the identities decided in this frame."""
        out = []
        for o in observations:
            t = o.track_id
            if o.detection_index < 0 or o.state != TrackState.CONFIRMED or t in self.assigned:
                continue
            v = np.asarray(appearance[o.detection_index], np.float64)
            norm = float(np.linalg.norm(v))
            if not norm > 0:
                continue
            prev = self._sum.get(t)
            self._sum[t] = v / norm if prev is None else prev + v / norm
            self._frames[t] = self._frames.get(t, 0) + 1
            self._last[t] = timestamp
            if self._frames[t] == self.min_frames:
                out.append(self._decide(t))
        return out

    def _decide(self, t: int) -> IdentityEvent:
        total, frames, last = self._sum.pop(t), self._frames.pop(t), self._last.pop(t)
        m = self.gallery.assign(total / frames, self.camera, last)
        self.assigned[t] = m.global_id
        if m.name is not None:
            self._names[t] = m.name
        event = IdentityEvent(self.camera, t, m.global_id, m.name, m.new, frames, last, m.camera, m.seen_at,
                              None if m.new else m.distance)
        self.on_identity(event)
        return event

    def label(self, events: list[AnomalyEvent]) -> list[AnomalyEvent]:
        """``events`` with their parts' global ids (and names), where the gallery has decided them."""
        return [replace(e, global_id=self.assigned[e.track_id], name=self._names.get(e.track_id))
                if e.track_id in self.assigned else e for e in events]

    def end(self, track_ids: list[int]) -> None:
        """The tracks ended: forget them (their gallery entries stay)."""
        for t in track_ids:
            for state in (self._sum, self._frames, self._last, self.assigned, self._names):
                state.pop(t, None)


def load_names(path: str | Path, gallery: Gallery, model_id: str) -> int:
    """Enrol every name of the file at ``path`` into ``gallery``; returns how many. The file must come from the
    same re-identification model (``model_id``)."""
    p = Path(path)
    names, vectors, stored_id = _read(p)
    if stored_id != model_id:
        raise GalleryNamesError(f"{p}: names were enrolled with another re-identification model ({stored_id[:12]}; "
                                f"now {model_id[:12]}); enrol them again with `siamstream gallery add`")
    if vectors.shape[1] != gallery.dim:
        raise GalleryNamesError(f"{p}: holds {vectors.shape[1]}-d vectors, the model gives {gallery.dim}; enrol the "
                                f"names again with `siamstream gallery add`")
    for name in sorted(set(names)):
        gallery.enroll(name, vectors[[i for i, n in enumerate(names) if n == name]])
    return len(set(names))


def _read(p: Path) -> tuple[list[str], np.ndarray, str]:
    if not p.is_file():
        raise GalleryNamesError(f"{p}: no such names file; enrol someone with `siamstream gallery add NAME IMAGE...` "
                                f"or set [gallery] names = \"\"")
    try:
        with np.load(p, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            vectors = np.asarray(z["vectors"], np.float32)
            model_id = str(z["model_id"])
    except (OSError, KeyError, ValueError):
        raise GalleryNamesError(f"{p}: not a names file written by `siamstream gallery add` (an .npz of names and "
                                f"vectors); point --names / [gallery] names at one, or at a new path to start "
                                f"one") from None
    if vectors.ndim != 2 or len(vectors) != len(names) or not np.all(np.isfinite(vectors)):
        raise GalleryNamesError(f"{p}: damaged names file ({len(names)} names, vectors {vectors.shape}); delete it "
                                f"and enrol again")
    return names, vectors, model_id


def add_names(path: str | Path, name: str, vectors: np.ndarray, model_id: str) -> int:
    """Append ``vectors`` (one per image) under ``name`` to the names file at ``path`` (created if absent),
    atomically; returns the images now enrolled under ``name``."""
    p = Path(path)
    if not name or "\n" in name:
        raise GalleryNamesError("a name is needed (one line of text)")
    names: list[str] = []
    stored = np.zeros((0, vectors.shape[1]), np.float32)
    if p.exists():
        names, stored, old_id = _read(p)
        if old_id != model_id:
            raise GalleryNamesError(f"{p}: names were enrolled with another re-identification model; enrol into a new "
                                    f"file, or with that model")
        if stored.shape[1] != vectors.shape[1]:
            raise GalleryNamesError(f"{p}: holds {stored.shape[1]}-d vectors, the model gives {vectors.shape[1]}")
    names += [name] * len(vectors)
    stored = np.concatenate([stored, np.asarray(vectors, np.float32)])
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".npz", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, names=np.array(names), vectors=stored, model_id=np.array(model_id))
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return names.count(name)
