"""One cross-camera gallery for a fleet of engines, kept through a Redis stream.

Where the gallery lives: in the broker the events already go through, plus each engine's own FAISS index — not in a
service of its own. Every engine (shard) appends the track entries it stores (global id, camera, time, the
re-identification vector) to one bounded stream (``XADD ... MAXLEN ~``) and reads the others' entries from it into
its own :class:`~pipeline.gallery.Gallery`. So an engine answers "seen before, on which camera, when" from memory,
without a network round trip per track; an engine that dies loses nothing the others need; one that starts (or
restarts) reads the stream's retained history and knows the recent gallery at once; and there is no extra server
to run, scale or watch. The price is that the gallery is eventually consistent: an entry reaches the other engines
within about ``poll_s`` (two engines that see one new person at the same instant both give it a new id).

Global ids never collide: each shard gives ids from its own range (:data:`pipeline.gallery.ID_RANGE`), and an
entry keeps its origin's id everywhere. A Redis that is down or restarting only delays the exchange: entries to
send wait in memory (up to ``max_pending``, the oldest dropped and counted beyond that) and go out when it is back;
reading resumes where it stopped. Entries of another re-identification model (its vectors are not comparable) or
of another width are skipped, with one warning.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import numpy as np
import redis

from pipeline.alerts.backoff import backoff_delay
from pipeline.gallery import Gallery, GalleryEntry
from pipeline.redact import redact_url

log = logging.getLogger(__name__)

__all__ = ["GallerySync"]


class GallerySync:
    """Keeps ``gallery`` in step with the other shards' through the Redis stream ``key`` at ``url``.

    Args:
        gallery: this engine's gallery; its ``on_store`` is set to publish here.
        url: the Redis server (``redis://``, ``rediss://`` or ``unix://``), checked by the config.
        shard: this engine's shard; its own entries read back from the stream are skipped.
        model_id: the re-identification model's id; entries of another model are skipped.
        key: the stream's key.
        maxlen: the stream is trimmed to about this many entries (``MAXLEN ~``): the history a new engine reads.
        poll_s: how long one read waits for new entries (and so how late an entry may be sent).
        max_pending: entries kept in memory while Redis is unreachable.
        timeout_s: connect and command timeout.
    """

    def __init__(self, gallery: Gallery, url: str, shard: int, model_id: str, *, key: str = "siamstream:gallery",
                 maxlen: int = 100_000, poll_s: float = 0.1, max_pending: int = 10_000,
                 timeout_s: float = 5.0) -> None:
        if not key or maxlen < 1 or not poll_s > 0 or max_pending < 1:
            raise ValueError(f"GallerySync: a key, maxlen >= 1, poll_s > 0 and max_pending >= 1; got {key!r}, "
                             f"{maxlen}, {poll_s}, {max_pending}")
        self.gallery, self.shard, self.model_id = gallery, shard, model_id
        self.key, self.maxlen, self.poll_s = key, maxlen, poll_s
        self.url = redact_url(url)
        self.published = self.received = self.dropped = 0
        self._pending: deque[dict[str, bytes | str]] = deque()
        self._max_pending = max_pending
        self._last_id = b"0-0"  # from the start of the retained history
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s + poll_s,
                                            socket_connect_timeout=timeout_s)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        gallery.on_store = self.publish
        self._thread = threading.Thread(target=self._serve, name="gallery-sync", daemon=True)
        self._thread.start()

    def publish(self, entry: GalleryEntry, vector: np.ndarray) -> None:
        """Queue one entry this engine stored (called by the gallery, on a stream's thread: no network here)."""
        fields: dict[str, bytes | str] = {
            "shard": str(self.shard), "model": self.model_id, "global_id": str(entry.global_id),
            "camera": entry.camera, "seen_at": repr(float(entry.seen_at)), "name": entry.name or "",
            "vector": np.ascontiguousarray(vector, "<f4").tobytes()}
        with self._lock:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("gallery: %d entries wait for the broker %s; the oldest are dropped from now on",
                                self._max_pending, self.url)
            self._pending.append(fields)

    def _send(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                fields = self._pending[0]
            self._client.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            with self._lock:
                self._pending.popleft()
            self.published += 1

    def _read(self) -> None:
        got: Any = self._client.xread({self.key: self._last_id}, count=500, block=max(1, int(self.poll_s * 1000)))
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                self._last_id = entry_id
                self._take(fields)

    def _take(self, f: dict[bytes, bytes]) -> None:
        try:
            if int(f[b"shard"]) == self.shard:
                return
            model = f[b"model"].decode()
            if model != self.model_id:
                self._warn_once(f"model:{model}", "gallery: skipping entries of another re-identification model "
                                f"({model[:12]}; this engine uses {self.model_id[:12]}) on {self.key}")
                return
            vector = np.frombuffer(f[b"vector"], "<f4")
            if vector.size != self.gallery.dim:
                self._warn_once(f"dim:{vector.size}", f"gallery: skipping {vector.size}-d entries on {self.key} "
                                f"(this engine's model gives {self.gallery.dim})")
                return
            entry = GalleryEntry(int(f[b"global_id"]), f[b"camera"].decode(), float(f[b"seen_at"]),
                                 f[b"name"].decode() or None)
            self.gallery.add_remote(entry, vector)
            self.received += 1
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            self._warn_once("malformed", f"gallery: skipping a malformed entry on {self.key} ({exc})")

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)

    def _serve(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._send()
                self._read()
            except redis.RedisError as exc:
                if not failures:
                    log.warning("gallery: the broker %s is unreachable (%s); entries wait and are sent when it is "
                                "back", self.url, redact_url(str(exc)))
                failures += 1
                self._stop.wait(backoff_delay(failures, 0.5, 10.0))
                continue
            if failures:
                log.info("gallery: the broker %s is back", self.url)
                failures = 0

    def close(self) -> None:
        """Stop reading; entries still queued get one last try."""
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self._send()
        except redis.RedisError as exc:
            log.warning("gallery: %d entr(ies) not sent to %s (%s)", len(self._pending), self.url,
                        redact_url(str(exc)))
        self._client.close()
