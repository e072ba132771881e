"""Banks shared by the streams of one engine: one copy per saved bank, a new one after a save, released with its
last user, and a bad bank reported as Bank.load reports it."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest

from pipeline.anomaly.bank import BankError
from pipeline.anomaly.bank_cache import BankCache
from pipeline.anomaly.reload import BankReloader
from tests.pipeline.anomaly.test_reload import marked_bank


def test_streams_naming_one_bank_share_one_copy_until_it_is_saved_again(tmp_path: Path) -> None:
    marked_bank(10).save(tmp_path / "bank")
    cache = BankCache()
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.load(tmp_path / "bank"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(b is got[0] for b in got) and cache.loads == 1  # four streams, one read
    assert cache.load(tmp_path / "." / "bank") is got[0]  # the same folder by another spelling
    marked_bank(20).save(tmp_path / "bank")  # bank add / build again: new files, a new copy
    newer = cache.load(tmp_path / "bank")
    assert len(newer) == 20 and newer is not got[0] and cache.loads == 2
    assert cache.load(tmp_path / "bank") is newer


def test_a_bank_no_stream_uses_leaves_memory(tmp_path: Path) -> None:
    marked_bank(10).save(tmp_path / "bank")
    cache = BankCache()
    cache.load(tmp_path / "bank")
    gc.collect()
    assert len(cache._banks) == 0  # held weakly: nobody holds it, so it is gone
    cache.load(tmp_path / "bank")
    assert cache.loads == 2  # and read again when a stream asks


def test_errors_are_the_banks_own(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="bank not found"):
        BankCache().load(tmp_path / "missing")


def test_reloaders_of_several_streams_get_one_copy_of_a_new_bank(tmp_path: Path) -> None:
    marked_bank(10).save(tmp_path / "bank")
    cache = BankCache()
    got: list[object] = []
    reloaders = [BankReloader(tmp_path / "bank", 60, got.append, loader=cache.load) for _ in range(3)]
    marked_bank(30).save(tmp_path / "bank")
    assert all(r.check() for r in reloaders)
    assert len(got) == 3 and all(b is got[0] for b in got) and cache.loads == 1
