"""The disk spool: atomic one-file-per-alert writes, order, bounds with counted drops, restart, locking."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.alerts.record import Alert
from pipeline.alerts.spool import Spool
from pipeline.sinks import SinkError
from pipeline.types import FrameResult


@pytest.fixture
def alerts(flagged: Callable[..., FrameResult]) -> list[Alert]:
    return [Alert.from_event(e, "run-a", raised_at=float(i)) for i, e in enumerate(flagged(1, 2, 3, 4, 5).events)]


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".lock"))


def test_put_read_remove_in_order(tmp_path: Path, alerts: list[Alert]) -> None:
    spool = Spool(tmp_path / "spool")
    entries = [spool.put(a) for a in alerts]
    assert len(spool) == 5 and spool.nbytes == sum(e.size for e in entries)
    assert files(tmp_path / "spool") == [e.name for e in entries]  # one JSON file each, nothing else
    assert [e.alert_id for e in spool.entries()] == [a.alert_id for a in alerts]  # oldest first
    oldest = spool.oldest()
    assert oldest is not None and spool.read(oldest) == alerts[0]
    assert spool.remove(oldest) and not spool.remove(oldest)
    assert [e.alert_id for e in spool.entries()] == [a.alert_id for a in alerts[1:]]
    assert len(files(tmp_path / "spool")) == 4


def test_move_out_keeps_the_file_and_its_place_in_the_order(tmp_path: Path, alerts: list[Alert]) -> None:
    spool = Spool(tmp_path / "spool")
    entries = [spool.put(a) for a in alerts[:3]]
    data = (tmp_path / "spool" / entries[1].name).read_bytes()
    moved = spool.move_out(entries[1], tmp_path / "aside")
    assert moved == tmp_path / "aside" / entries[1].name and moved.read_bytes() == data
    assert [e.name for e in spool.entries()] == [entries[0].name, entries[2].name]
    assert spool.nbytes == entries[0].size + entries[2].size
    assert files(tmp_path / "spool") == [entries[0].name, entries[2].name]
    assert spool.move_out(entries[1], tmp_path / "aside") is None  # already gone
    spool.close()
    moved.rename(tmp_path / "spool" / moved.name)  # moved back: queued again, in its old place
    again = Spool(tmp_path / "spool")
    assert [e.name for e in again.entries()] == [e.name for e in entries]


def test_a_new_spool_on_the_same_directory_finds_what_an_earlier_one_left(tmp_path: Path,
                                                                         alerts: list[Alert]) -> None:
    first = Spool(tmp_path / "spool")
    for a in alerts[:3]:
        first.put(a)
    first.close()  # the process ends
    (tmp_path / "spool" / ".tmp-00000000000000000001-000000-x.json").write_bytes(b'{"half')  # a crash mid-write
    second = Spool(tmp_path / "spool")
    assert [second.read(e) for e in second.entries()] == alerts[:3]
    assert not any(n.startswith(".tmp-") for n in files(tmp_path / "spool"))


def test_full_spool_drops_the_oldest_and_counts_it(tmp_path: Path, alerts: list[Alert],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    drops: list[int] = []
    spool = Spool(tmp_path / "spool", max_alerts=3, on_drop=drops.append)
    with caplog.at_level(logging.WARNING):
        for a in alerts:
            spool.put(a)
    assert [e.alert_id for e in spool.entries()] == [a.alert_id for a in alerts[2:]]
    assert sum(drops) == 2 and spool.dropped == 2
    assert len(files(tmp_path / "spool")) == 3
    assert "is full" in caplog.text and "spool_max_alerts" in caplog.text


def test_byte_bound_drops_the_oldest(tmp_path: Path, alerts: list[Alert]) -> None:
    size = len(alerts[0].to_bytes())
    spool = Spool(tmp_path / "spool", max_bytes=2 * size + size // 2)
    for a in alerts:
        spool.put(a)
    assert len(spool) == 2 and spool.dropped == 3 and spool.nbytes <= 2 * size + size // 2


def test_a_corrupt_file_is_set_aside_and_counted(tmp_path: Path, alerts: list[Alert]) -> None:
    spool = Spool(tmp_path / "spool")
    bad, good = spool.put(alerts[0]), spool.put(alerts[1])
    (tmp_path / "spool" / bad.name).write_bytes(b"\x00garbage")
    assert spool.read(bad) is None
    assert spool.dropped == 1 and [e.name for e in spool.entries()] == [good.name]
    assert (tmp_path / "spool" / f"{bad.name}.bad").exists()


def test_two_owners_cannot_share_a_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool")
    with pytest.raises(SinkError, match="in use by another process; give each siamstream process its own"):
        Spool(tmp_path / "spool")
    first.close()
    Spool(tmp_path / "spool")  # released: the next run can take it


def test_an_unusable_directory_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SinkError, match="not a directory"):
        Spool(tmp_path / "file")


def test_bounds_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_alerts must be >= 1"):
        Spool(tmp_path / "a", max_alerts=0)
