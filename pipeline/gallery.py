"""One identity across cameras: a gallery of recent tracks' appearance and of enrolled names.

A track that ends (or has lived long enough) hands in its mean re-identification embedding with its camera and time.
The gallery answers "seen before, on which camera, when": the nearest entry of another camera within
``threshold`` (cosine distance), unambiguous by ``margin`` against the nearest entry of any other global identity,
gives the track that entry's global id; otherwise the track starts a new global id. An entry of the same camera is
never the match (the tracker already links a camera's own tracks). Named entries (:meth:`Gallery.enroll`: a few
images of a person or part, the one-shot use of a twin network) match from any camera and give their name.

Each global id keeps its latest embedding per camera; entries older than ``max_age_s`` are forgotten. The index is
FAISS inner product over L2-normalised vectors (exact: a site's recent tracks are thousands, not millions).

Several engines (shards) keep one gallery between them. Each gives new global ids from its own range (``id_base``:
shard ``i`` counts from ``i * ID_RANGE + 1``, so no two shards hand out one id without asking each other; an
enrolled name's id is its CRC-32 above ``NAMES_BASE``, the same on every shard), reports every track entry it
stores to ``on_store`` (:mod:`pipeline.gallery_sync` publishes it to the broker), and takes the other shards'
entries with :meth:`Gallery.add_remote`.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from pipeline.anomaly.bank import search

__all__ = ["ID_RANGE", "Gallery", "GalleryEntry", "GalleryMatch"]

ID_RANGE = 1_000_000_000  # global ids per shard: shard i gives i * ID_RANGE + 1, + 2, ...
NAMES_BASE = 1_000_000 * ID_RANGE  # enrolled names: NAMES_BASE + the CRC-32 of the name


@dataclass
class GalleryEntry:
    global_id: int
    camera: str  # "" for an enrolled name
    seen_at: float
    name: str | None = None


@dataclass(frozen=True)
class GalleryMatch:
    global_id: int
    name: str | None
    new: bool  # no earlier entry matched: a new global id
    distance: float  # to the matched entry (nan when new)
    camera: str | None  # where the matched entry was seen ("" for an enrolled name)
    seen_at: float | None


@dataclass
class Gallery:
    dim: int
    threshold: float  # largest cosine distance that links a track to an earlier entry
    margin: float = 0.0  # the next other identity must be at least this much farther
    max_age_s: float = 3600.0
    id_base: int = 0  # new global ids count from id_base + 1 (a shard's own range)
    on_store: Callable[[GalleryEntry, np.ndarray], None] | None = None  # each entry stored here, with its vector
    _index: faiss.IndexIDMap2 = field(init=False, repr=False)
    _entries: dict[int, GalleryEntry] = field(init=False, default_factory=dict)
    _key: dict[tuple[int, str], int] = field(init=False, default_factory=dict)  # (global id, camera) -> entry id
    _next_entry: int = field(init=False, default=0)
    _next_global: int = field(init=False, default=1)
    _latest: float = field(init=False, default=float("-inf"))  # the newest time a local track was seen
    names: dict[int, str] = field(init=False, default_factory=dict)  # global id -> enrolled name
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)  # streams share one

    def __post_init__(self) -> None:
        if self.dim < 1 or not 0 <= self.threshold <= 2 or self.margin < 0:
            raise ValueError(f"gallery: dim >= 1, threshold in [0, 2], margin >= 0; got {self.dim}, "
                             f"{self.threshold}, {self.margin}")
        if self.id_base < 0:
            raise ValueError(f"gallery: id_base must be >= 0, got {self.id_base}")
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self._next_global = self.id_base + 1

    def __len__(self) -> int:
        return len(self._entries)

    def _normalise(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(vectors, np.float32).reshape(-1, self.dim))
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if not np.all(norms > 0) or not np.all(np.isfinite(x)):
            raise ValueError("gallery: embeddings must be finite and non-zero")
        return x / norms

    def _put(self, vector: np.ndarray, entry: GalleryEntry) -> None:
        key = (entry.global_id, entry.camera)
        old = self._key.pop(key, None)
        if old is not None:
            self._index.remove_ids(faiss.IDSelectorBatch(np.array([old], np.int64)))
            del self._entries[old]
        eid = self._next_entry
        self._next_entry += 1
        self._index.add_with_ids(vector.reshape(1, -1), np.array([eid], np.int64))
        self._entries[eid] = entry
        self._key[key] = eid

    def enroll(self, name: str, embeddings: np.ndarray, now: float = 0.0) -> int:
        """A named identity from one or more embeddings (their mean); returns its global id. Enrolled names do
        not age out."""
        if not name:
            raise ValueError("gallery: an enrolled identity needs a name")
        mean = self._normalise(self._normalise(embeddings).mean(axis=0))[0]
        with self._lock:
            return self._enroll(name, mean, now)

    def _enroll(self, name: str, mean: np.ndarray, now: float) -> int:
        gid = NAMES_BASE + zlib.crc32(name.encode("utf-8"))  # the same on every shard that loads the same names
        while self.names.get(gid, name) != name:
            gid += 1  # two names with one checksum: the later (in the names file's sorted order) moves on
        self.names[gid] = name
        self._put(mean, GalleryEntry(gid, "", now, name))
        return gid

    def assign(self, embedding: np.ndarray, camera: str, now: float, store: bool = True) -> GalleryMatch:
        """The global id of a track of ``camera`` with mean ``embedding``, seen at ``now`` (seconds); the track is
        then stored under it (its camera's entry of that id replaced), unless ``store`` is false (a look-up)."""
        if not camera:
            raise ValueError("gallery: a track needs its camera's name")
        x = self._normalise(embedding)
        with self._lock:
            match = self._assign(x, camera, now, store)
        if store:
            self._stored(GalleryEntry(match.global_id, camera, now, match.name), x[0])
        return match

    def add_remote(self, entry: GalleryEntry, embedding: np.ndarray) -> None:
        """An entry another shard stored (its own global id range); replaces that shard's older entry of the same
        id and camera. Entries already too old are skipped."""
        x = self._normalise(embedding)
        with self._lock:
            if not entry.camera or entry.seen_at < self._latest - self.max_age_s:
                return
            if entry.name is not None:
                self.names[entry.global_id] = entry.name
            self._put(x[0], entry)

    def _stored(self, entry: GalleryEntry, vector: np.ndarray) -> None:
        if self.on_store is not None and entry.camera:  # enrolments come from the names file on every shard
            self.on_store(entry, vector)

    def _assign(self, x: np.ndarray, camera: str, now: float, store: bool) -> GalleryMatch:
        self._latest = max(self._latest, now)
        self._forget(now - self.max_age_s)
        best: tuple[float, GalleryEntry] | None = None
        rival = float("inf")  # the nearest entry of another global id
        if len(self._entries):
            sims, ids = search(self._index, x, min(len(self._entries), 64))  # one query: on this thread
            for sim, eid in zip(sims[0], ids[0], strict=True):
                if eid < 0:
                    continue
                entry = self._entries[int(eid)]
                if entry.camera == camera:
                    continue  # the same camera's tracks are the tracker's business
                distance = 1.0 - float(sim)
                if best is None:
                    best = (distance, entry)
                elif entry.global_id != best[1].global_id:
                    rival = min(rival, distance)
                    break
        if best is not None and best[0] <= self.threshold and rival - best[0] >= self.margin:
            distance, entry = best
            gid = entry.global_id
            if store:
                self._put(x[0], GalleryEntry(gid, camera, now, self.names.get(gid)))
            return GalleryMatch(gid, self.names.get(gid), False, distance, entry.camera, entry.seen_at)
        if not store:
            return GalleryMatch(0, None, True, float("nan"), None, None)
        gid = self._next_global
        self._next_global += 1
        self._put(x[0], GalleryEntry(gid, camera, now))
        return GalleryMatch(gid, None, True, float("nan"), None, None)

    def forget_older_than(self, cutoff: float) -> int:
        """Drop track entries last seen before ``cutoff`` (names stay); returns how many."""
        with self._lock:
            return self._forget(cutoff)

    def _forget(self, cutoff: float) -> int:
        old = [eid for eid, e in self._entries.items() if e.name is None and e.seen_at < cutoff]
        if old:
            self._index.remove_ids(faiss.IDSelectorBatch(np.array(old, np.int64)))
            for eid in old:
                e = self._entries.pop(eid)
                self._key.pop((e.global_id, e.camera), None)
        return len(old)
