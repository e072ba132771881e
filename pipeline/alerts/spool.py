"""A durable outbox on disk: one JSON file per alert waiting for delivery.

Files are named ``<unix ns, 20 digits>-<sequence, 6 digits>-<alert id>.json`` so the directory listing is the
delivery order (oldest first). A file is written to a hidden ``.tmp-*`` name, flushed and fsynced, renamed
into place and the directory fsynced, so after a crash a spooled alert is either complete or absent; stale
``.tmp-*`` files are deleted when the spool opens. A file that cannot be parsed is renamed to ``*.bad``
(kept for inspection) and counted as dropped. :meth:`Spool.move_out` takes an alert out of the spool into
another folder, file unchanged (the webhook sink's dead-letter folder).

The spool is bounded by ``max_alerts`` files and ``max_bytes`` bytes. Policy when full: the **oldest**
alerts are dropped to make room for the new one, and each drop is counted (``on_drop``). A receiver that is
down for long is told about the most recent parts; every part is in ``events.jsonl`` regardless.

One process owns a spool directory: it holds an exclusive ``flock`` on ``.lock`` while open, and a second
process gets a :class:`~pipeline.sinks.SinkError` naming the directory and the fix.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import IO

from pipeline.alerts.record import Alert, AlertRecordError
from pipeline.sinks import SinkError, check_writable_dir

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{20})-(\d{6})-([0-9A-Za-z-]+)\.json$")
# Warn on the first drop, then on every Nth, so a long outage does not flood the log.
_WARN_EVERY = 100


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled alert: its file name (in delivery order), alert id and size in bytes."""

    name: str
    alert_id: str
    size: int


class Spool:
    """Alerts on disk, oldest first, bounded; thread-safe.

    Args:
        directory: where the files live; created if needed.
        max_alerts: most files kept, >= 1.
        max_bytes: most bytes kept (sum of file sizes), >= 1.
        on_drop: called with the number of alerts dropped (spool full, or a corrupt file).

    Raises:
        SinkError: the directory cannot be created or written, or another process holds it.
        ValueError: a bound is < 1.
    """

    def __init__(self, directory: Path, max_alerts: int = 10_000, max_bytes: int = 256 * 2**20,
                 on_drop: Callable[[int], None] | None = None) -> None:
        if max_alerts < 1:
            raise ValueError(f"Spool: max_alerts must be >= 1, got {max_alerts}")
        if max_bytes < 1:
            raise ValueError(f"Spool: max_bytes must be >= 1, got {max_bytes}")
        self.directory = Path(directory)
        self.max_alerts = max_alerts
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._lock = Lock()
        self._index: OrderedDict[str, SpoolEntry] = OrderedDict()
        self._bytes = 0
        self._seq = itertools.count()
        self.dropped = 0
        check_writable_dir(self.directory)
        self._lock_file: IO[bytes] | None = self._acquire(self.directory / ".lock")
        self._load()

    # -- lifecycle ---------------------------------------------------------------------------------------

    @staticmethod
    def _acquire(path: Path) -> IO[bytes]:
        lock_file = path.open("a+b")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.close()
            raise SinkError(path.parent, "alert spool is in use by another process",
                            "give each siamstream process its own [alerts] spool_dir") from None
        return lock_file

    def _load(self) -> None:
        names = []
        for path in self.directory.iterdir():
            if path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)  # a write that never completed: it was never spooled
            elif _NAME.match(path.name):
                names.append(path.name)
        for name in sorted(names):
            match = _NAME.match(name)
            assert match is not None
            size = (self.directory / name).stat().st_size
            self._index[name] = SpoolEntry(name, match.group(3), size)
            self._bytes += size
        if self._index:
            log.info("alert spool %s: %d alerts from an earlier run waiting for delivery", self.directory,
                     len(self._index))
        with self._lock:
            self._evict()

    def close(self) -> None:
        """Release the directory for another process. Files stay. Idempotent."""
        if self._lock_file is not None:
            lock_file, self._lock_file = self._lock_file, None
            lock_file.close()  # closing the descriptor releases the flock

    # -- queries -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def entries(self) -> list[SpoolEntry]:
        """A snapshot of the spooled alerts, oldest first."""
        with self._lock:
            return list(self._index.values())

    def oldest(self) -> SpoolEntry | None:
        with self._lock:
            return next(iter(self._index.values()), None)

    # -- changes -----------------------------------------------------------------------------------------

    def put(self, alert: Alert, sync: bool = True) -> SpoolEntry:
        """Write ``alert`` (tmp + fsync + rename + directory fsync); drops the oldest alerts if full.

        ``sync=False`` skips both fsyncs: the file survives the process dying (the kernel has it) but not a
        power cut. For callers that must not wait on the disk.

        Raises:
            OSError: the file could not be written (disk full, permissions); nothing is left behind.
        """
        data = alert.to_bytes()
        name = f"{time.time_ns():020d}-{next(self._seq) % 1_000_000:06d}-{alert.alert_id}.json"
        tmp = self.directory / f".tmp-{name}"
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.directory / name)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        if sync:
            _fsync_dir(self.directory)
        entry = SpoolEntry(name, alert.alert_id, len(data))
        with self._lock:
            self._index[name] = entry
            self._bytes += entry.size
            self._evict()
        return entry

    def read(self, entry: SpoolEntry) -> Alert | None:
        """The alert in ``entry``'s file; None if it is gone (delivered or dropped meanwhile) or corrupt.

        A corrupt file is renamed to ``*.bad``, removed from the spool and counted as dropped.
        """
        path = self.directory / entry.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._forget(entry.name)
            return None
        try:
            return Alert.from_bytes(data)
        except AlertRecordError as exc:
            log.error("alert spool %s: %s is unreadable (%s); moved aside as %s.bad", self.directory,
                      entry.name, exc, entry.name)
            try:
                os.replace(path, path.with_name(entry.name + ".bad"))
            except OSError:
                path.unlink(missing_ok=True)
            with self._lock:
                if self._pop(entry.name):
                    self._count_drops(1, full=False)
            return None

    def remove(self, entry: SpoolEntry) -> bool:
        """Delete a delivered alert; False if it was already gone."""
        (self.directory / entry.name).unlink(missing_ok=True)
        return self._forget(entry.name)

    def move_out(self, entry: SpoolEntry, directory: Path) -> Path | None:
        """Move ``entry``'s file, bytes and name unchanged, into ``directory`` (created if needed) and out of the
        spool: rename + fsync of both directories. None if the file was already gone.

        The name keeps the delivery order, so moving the file back into the spool directory queues it again
        (read at the next start).

        Raises:
            OSError: the directory cannot be created or the file not moved (e.g. another file system); the
                alert then stays in the spool.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / entry.name
        try:
            os.replace(self.directory / entry.name, target)
        except FileNotFoundError:
            self._forget(entry.name)
            return None
        _fsync_dir(directory)
        _fsync_dir(self.directory)
        self._forget(entry.name)
        return target

    # -- internals ---------------------------------------------------------------------------------------

    def _forget(self, name: str) -> bool:
        with self._lock:
            return self._pop(name)

    def _pop(self, name: str) -> bool:
        """Remove ``name`` from the index. Called with ``self._lock`` held."""
        entry = self._index.pop(name, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True

    def _evict(self) -> None:
        """Drop the oldest alerts while over a bound. Called with ``self._lock`` held."""
        dropped = 0
        while self._index and (len(self._index) > self.max_alerts or self._bytes > self.max_bytes):
            name, entry = self._index.popitem(last=False)
            self._bytes -= entry.size
            (self.directory / name).unlink(missing_ok=True)
            dropped += 1
        if dropped:
            self._count_drops(dropped, full=True)

    def _count_drops(self, n: int, full: bool) -> None:
        """Count ``n`` dropped alerts. Called with ``self._lock`` held."""
        before = self.dropped
        self.dropped += n
        if full and (before == 0 or before // _WARN_EVERY != self.dropped // _WARN_EVERY):
            log.warning("alert spool %s is full (%d alerts, %d bytes at most): dropped the oldest; %d dropped "
                        "so far. Bring the receiver back or raise [alerts] spool_max_alerts / spool_max_mb",
                        self.directory, self.max_alerts, self.max_bytes, self.dropped)
        if self._on_drop is not None:
            self._on_drop(n)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
