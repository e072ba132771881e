"""Watch the config file: a change reads the stream list again, as SIGHUP does.

In Kubernetes a ConfigMap mounted as a volume is updated in place (the kubelet swaps a symbolic link to a new
folder), and no signal reaches the process; on a plain host an editor may write a new file and rename it. So the
watcher compares the file's content (SHA-256), polled every ``interval_s``, rather than its time stamp or inode. A
file that is missing or unreadable for a moment (mid-swap) is skipped until it reads again; a change to a config
that does not load is the reload's business (it keeps the streams as they are and says why).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["ConfigWatcher"]


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


class ConfigWatcher:
    """Calls ``on_change`` (from its own thread) each time the content of ``path`` changes."""

    def __init__(self, path: Path, interval_s: float, on_change: Callable[[], None]) -> None:
        if not interval_s > 0:
            raise ValueError(f"ConfigWatcher: interval_s must be > 0, got {interval_s}")
        self.path, self.interval_s, self.on_change = path, interval_s, on_change
        self.changes = 0
        self._seen = _digest(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="config-watch", daemon=True)

    def start(self) -> ConfigWatcher:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = _digest(self.path)
            if now is None or now == self._seen:
                continue
            self._seen = now
            self.changes += 1
            log.info("%s changed: reading the stream list again", self.path)
            try:
                self.on_change()
            except Exception:  # the watcher outlives one failed reload request
                log.exception("reload after %s changed failed", self.path)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
