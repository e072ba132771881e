"""Watch a bank directory and hand a changed bank to the running pipeline: no restart after `bank add`.

A background thread polls the bank's ``meta.json`` and ``index.faiss`` (a bank is written to a temporary
sibling and renamed into place, so a changed file means a complete new bank). It loads the new bank fully,
checks it was made by the running encoder, and only then hands it over; the pipeline swaps it in between two
frames. A bank that cannot be loaded is logged and counted, and the previous bank stays in use. The two files
are opened one after the other, so a save can land between them: a load during which the files changed is
discarded, neither handed over nor reported, and the next poll reads the new bank whole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from pipeline.anomaly.bank import Bank, BankError

log = logging.getLogger(__name__)


def bank_stamp(path: Path) -> tuple[int, ...] | None:
    """Identity of the bank's two files; the size as well, since a file rewritten in place within one tick of
    the coarse file-system clock keeps its inode and its mtime."""
    try:
        meta, index = (path / "meta.json").stat(), (path / "index.faiss").stat()
    except OSError:
        return None  # mid-rename, or removed: look again next time
    return tuple(v for st in (meta, index) for v in (st.st_mtime_ns, st.st_ino, st.st_size))


class BankReloader:
    """Polls ``path`` every ``interval_s`` seconds; calls ``on_bank(bank)`` with each new, loadable bank.

    ``on_error(message)`` is called once per changed bank that cannot be used; ``loader`` reads a bank
    (:meth:`Bank.load`, or a :class:`~pipeline.anomaly.bank_cache.BankCache` shared by the streams)."""

    def __init__(self, path: str | Path, interval_s: float, on_bank: Callable[[Bank], None],
                 on_error: Callable[[str], None] | None = None,
                 loader: Callable[[Path], Bank] = Bank.load) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.path = Path(path)
        self.interval_s = interval_s
        self.on_bank = on_bank
        self.on_error = on_error or (lambda _m: None)
        self.loader = loader
        self._seen = bank_stamp(self.path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.unexpected_errors = 0  # polls that failed other than by a broken bank (logged with their traceback)

    def start(self) -> BankReloader:
        self._thread = threading.Thread(target=self._loop, name="bank-reloader", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the polling thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def check(self) -> bool:
        """One poll: True when a new bank was handed over."""
        stamp = bank_stamp(self.path)
        if stamp is None or stamp == self._seen:
            return False
        try:
            bank = self.loader(self.path)
        except BankError as exc:
            if bank_stamp(self.path) != stamp:
                return False  # a save replaced the files while they were read: not broken, read it next time
            return self._broken(stamp, exc)
        if bank_stamp(self.path) != stamp:
            return False  # the index and the metadata may come from two saves: read the new bank next time
        try:
            self.on_bank(bank)
        except Exception as exc:  # refused (BankError) or failed: either way, reported once
            return self._broken(stamp, exc)
        self._seen = stamp
        return True

    def _broken(self, stamp: tuple[int, ...], exc: Exception) -> bool:
        self._seen = stamp  # report a broken bank once, not every poll
        log.error("bank reload: %s; the previous bank stays in use", exc, exc_info=not isinstance(exc, BankError))
        self.on_error(str(exc))
        return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive any one bad poll; the running bank stays in use
                self.unexpected_errors += 1
                log.exception("bank reload: unexpected error while checking %s; will look again", self.path)
