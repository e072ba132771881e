"""Banks loaded once per process: the streams of one engine that name the same bank share one copy in memory.

A line's bank grows with every ``bank add`` (hundreds of MB at a million patch vectors); eight cameras on one line
would otherwise hold eight copies. A bank is keyed by its resolved path and the identity of its two files
(:func:`pipeline.anomaly.reload.bank_stamp`), so a bank saved again is a new entry: each stream's reloader asks
for it, the first load reads it, the others get the same object. Entries are held weakly and leave memory with
the last stream that uses them. FAISS searches on one CPU index from several threads at once are safe (searching
does not modify the index), and the anomaly stage only searches.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

from pipeline.anomaly.bank import Bank
from pipeline.anomaly.reload import bank_stamp

__all__ = ["BankCache"]


class BankCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # one load at a time: two streams asking together read the files once
        self._banks: weakref.WeakValueDictionary[tuple[str, tuple[int, ...]], Bank] = weakref.WeakValueDictionary()
        self.loads = 0  # banks read from disk

    def load(self, path: str | Path) -> Bank:
        """The bank at ``path``, from memory when the same files were loaded before (:meth:`Bank.load` errors
        otherwise)."""
        p = Path(path).resolve()
        with self._lock:
            stamp = bank_stamp(p)
            key = (str(p), stamp) if stamp is not None else None
            bank = self._banks.get(key) if key is not None else None
            if bank is None:
                bank = Bank.load(p)
                self.loads += 1
                if key is not None and bank_stamp(p) == stamp:  # not replaced while it was read
                    self._banks[key] = bank
            return bank
