"""BankReloader against real banks on disk: each saved bank is handed over once, broken ones are reported once,
a bank being renamed into place is no error, and a reader never gets half a bank while a writer saves."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.anomaly.bank import Bank
from pipeline.anomaly.reload import BankReloader

DIM = 8
SAVES = 200  # enough that, without the reloader's checks, a load straddling a save happens in most runs


def marked_bank(n: int, encoder_id: str = "enc") -> Bank:
    """A flat bank of ``n`` vectors whose first component is ``n``: the vectors tell which save they came from."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    x[:, 0] = n
    bank = Bank.create(encoder_id, DIM, (32, 32))
    bank.add(x, source=f"save-{n}", crops=n)
    bank.with_threshold(1.0 + n, 0.01, n, n, 0.5)
    return bank


class Received:
    """on_bank / on_error callbacks that record what they were given."""

    def __init__(self) -> None:
        self.banks: list[Bank] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def on_bank(self, bank: Bank) -> None:
        with self.lock:
            self.banks.append(bank)

    def on_error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.banks]


def reloader(path: Path, got: Received, interval_s: float = 60.0) -> BankReloader:
    return BankReloader(path, interval_s, got.on_bank, got.on_error)


def test_each_saved_bank_is_handed_over_once(tmp_path: Path) -> None:
    path = tmp_path / "bank"
    marked_bank(10).save(path)
    got = Received()
    r = reloader(path, got)
    assert not r.check()  # the bank already in use is not handed over again
    marked_bank(25).save(path)
    assert r.check()
    assert not r.check() and not r.check()
    marked_bank(40).save(path)
    assert r.check()
    assert got.sizes == [25, 40] and got.errors == []
    last = got.banks[-1]
    assert last.meta.sample_count == 40 and last.meta.threshold == 41.0 and last.meta.sources == ["save-40"]
    np.testing.assert_allclose(last.index.reconstruct_n(0, 40)[:, 0], 40.0)


def test_a_bank_saved_again_unchanged_is_still_a_change(tmp_path: Path) -> None:
    # `bank add` always rewrites the directory; the reloader cannot know the content is the same.
    path = tmp_path / "bank"
    bank = marked_bank(10)
    bank.save(path)
    got = Received()
    r = reloader(path, got)
    bank.save(path)
    assert r.check() and got.sizes == [10]


def test_garbage_index_written_in_place_is_reported_once_then_a_good_bank_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "bank"
    marked_bank(10).save(path)
    got = Received()
    r = reloader(path, got)
    (path / "index.faiss").write_bytes(b"garbage")
    assert not r.check() and not r.check() and not r.check()
    assert got.banks == [] and len(got.errors) == 1
    assert "corrupt FAISS index" in got.errors[0] and "rebuild" in got.errors[0]
    marked_bank(12).save(path)
    assert r.check() and got.sizes == [12] and len(got.errors) == 1


def test_metadata_disagreeing_with_its_index_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "bank"
    marked_bank(10).save(path)
    got = Received()
    r = reloader(path, got)
    meta = json.loads((path / "meta.json").read_text())
    meta["sample_count"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    assert not r.check() and not r.check()
    assert got.banks == [] and len(got.errors) == 1 and "index holds 10 vectors" in got.errors[0]
    marked_bank(11).save(path)
    assert r.check() and got.sizes == [11]


def test_a_bank_the_consumer_refuses_is_reported_once(tmp_path: Path) -> None:
    """on_bank raising BankError (the pipeline refusing a bank of another encoder) counts as an error."""
    path = tmp_path / "bank"
    marked_bank(10).save(path)
    got = Received()

    def only_enc(bank: Bank) -> None:
        bank.check_encoder("enc", DIM, 0, "bank reload")
        got.on_bank(bank)

    r = BankReloader(path, 60.0, only_enc, got.on_error)
    marked_bank(10, encoder_id="other").save(path)
    assert not r.check() and not r.check()
    assert got.banks == [] and len(got.errors) == 1 and "built with another encoder" in got.errors[0]
    marked_bank(13).save(path)
    assert r.check() and got.sizes == [13]


def test_missing_bank_mid_rename_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bank"
    marked_bank(10).save(path)
    got = Received()
    r = reloader(path, got)
    aside = tmp_path / ".bank.old"
    path.rename(aside)  # the moment between the two renames of a save
    assert not r.check()
    path.mkdir()  # the new directory is there but its meta.json is not (a writer copying files in)
    assert not r.check()
    path.rmdir()
    assert got.banks == [] and got.errors == []
    marked_bank(20).save(path)
    assert r.check() and got.sizes == [20] and got.errors == []


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        BankReloader(tmp_path, 0.0, lambda _b: None)


def test_background_thread_hands_over_a_new_bank_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "bank"
    marked_bank(10).save(path)
    got = Received()
    r = reloader(path, got, interval_s=0.02).start()
    try:
        marked_bank(30).save(path)
        deadline = time.monotonic() + 10
        while not got.banks and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        r.stop()
    assert got.sizes == [30] and got.errors == []
    marked_bank(31).save(path)  # stopped: nothing is handed over any more
    time.sleep(0.2)
    assert got.sizes == [30]


def test_concurrent_saves_never_hand_over_half_a_bank(tmp_path: Path) -> None:
    """A writer saves banks of changing size as fast as it can while the reloader's thread polls every few
    milliseconds and a consumer scores with whatever bank it was handed last."""
    path = tmp_path / "bank"
    marked_bank(5).save(path)
    got = Received()
    current: list[Bank] = [Bank.load(path)]
    written: list[int] = []
    scored = 0
    failures: list[str] = []
    writing = threading.Event()
    writing.set()

    def on_bank(bank: Bank) -> None:
        got.on_bank(bank)
        current[0] = bank  # what the pipeline does: swap the reference, score with it from the next frame

    def writer() -> None:
        try:
            for i in range(SAVES):
                n = 6 + (i * 7) % 50  # sizes jump about, so a mixed-up bank cannot pass by chance
                marked_bank(n).save(path)
                written.append(n)
                time.sleep(0.001 * (i % 3))
        finally:
            writing.clear()

    def consumer() -> None:
        nonlocal scored
        q = np.random.default_rng(1).normal(size=(16, DIM)).astype(np.float32)
        while writing.is_set():
            bank = current[0]
            scores = bank.scores(q)
            if not (scores.shape == (16,) and np.isfinite(scores).all()):
                failures.append(f"scores {scores} from a bank of {len(bank)}")
            scored += 1

    r = BankReloader(path, 0.003, on_bank, got.on_error).start()
    threads = [threading.Thread(target=writer), threading.Thread(target=consumer)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert r.alive and r.unexpected_errors == 0  # no save, however it interleaved with a poll, upset it
    finally:
        r.stop()
    assert not any(t.is_alive() for t in threads) and not r.alive
    assert failures == [] and scored > 0
    assert got.errors == [], got.errors  # a save under way is no broken bank
    assert len(got.banks) >= 3, got.sizes  # the reloader kept up with part of the saves
    for bank in got.banks:
        n = bank.meta.sample_count
        assert bank.index.ntotal == n == bank.meta.crops and n in written
        assert bank.meta.sources == [f"save-{n}"] and bank.meta.threshold == 1.0 + n
        np.testing.assert_array_equal(bank.index.reconstruct_n(0, n)[:, 0], np.float32(n))
    r.check()  # once the writer is done, the last bank it saved is the one in use
    assert len(current[0]) == written[-1]



def test_a_failing_consumer_is_reported_once_and_the_watcher_keeps_polling(tmp_path: Path) -> None:
    path = tmp_path / "bank"
    marked_bank(10).save(path)
    got = Received()
    calls = {"n": 0}

    def flaky(bank: Bank) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("consumer hiccup")  # not a BankError: still reported, and reloads go on
        got.on_bank(bank)

    r = BankReloader(path, 0.01, flaky, got.on_error).start()
    try:
        marked_bank(11).save(path)
        deadline = time.monotonic() + 10
        while not got.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        marked_bank(12).save(path)
        while not got.banks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.alive and got.errors == ["consumer hiccup"] and got.sizes == [12] and calls["n"] == 2
    finally:
        r.stop()


def test_an_unexpected_error_in_a_poll_is_counted_and_the_watcher_goes_on(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bank"
    marked_bank(10).save(path)
    got = Received()
    r = reloader(path, got, interval_s=0.01)
    real = r.check
    calls = {"n": 0}

    def check() -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk hiccup")
        return real()

    monkeypatch.setattr(r, "check", check)
    r.start()
    try:
        marked_bank(11).save(path)
        deadline = time.monotonic() + 10
        while not got.banks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.alive and r.unexpected_errors == 1 and got.sizes == [11]
    finally:
        r.stop()


def test_metadata_vanishing_while_it_is_read_is_a_bank_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.anomaly.bank import BankError

    path = tmp_path / "bank"
    marked_bank(5).save(path)

    def gone(self: Path, *args: object, **kwargs: object) -> bytes:
        raise FileNotFoundError(2, "No such file or directory")  # a save renamed the directory just now

    monkeypatch.setattr(Path, "read_bytes", gone)
    with pytest.raises(BankError, match="cannot read the bank"):
        Bank.load(path)
