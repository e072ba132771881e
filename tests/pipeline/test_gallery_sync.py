"""One gallery for several engines through a real redis-server on 127.0.0.1: a person an engine saw is known to the
others, global ids never collide, an engine that starts late reads the recent history, and a server that goes
away and comes back delays the exchange without losing it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.gallery import ID_RANGE, Gallery
from pipeline.gallery_sync import GallerySync
from tests.alert_servers import RedisServer, wait_until

DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.stop()


def _engine(server: RedisServer, shard: int, model: str = "reid-a") -> tuple[Gallery, GallerySync]:
    g = Gallery(DIM, threshold=0.2, id_base=shard * ID_RANGE)
    return g, GallerySync(g, server.url, shard, model, key="test:gallery", poll_s=0.05)


def test_a_person_seen_by_one_engine_keeps_its_id_on_another(server: RedisServer) -> None:
    rng = np.random.default_rng(0)
    alice, bob = _unit(rng, 2)
    (g0, s0), (g1, s1) = _engine(server, 0), _engine(server, 1)
    try:
        first = g0.assign(alice, "cam-a", 10.0)
        assert first.new and first.global_id == 1
        wait_until(lambda: len(g1) == 1, 10, "shard 1 to receive shard 0's entry")
        again = g1.assign(alice, "cam-b", 20.0)
        assert not again.new and again.global_id == 1 and again.camera == "cam-a" and again.seen_at == 10.0
        new = g1.assign(bob, "cam-b", 21.0)  # a new person on shard 1: an id of shard 1's range
        assert new.new and new.global_id == ID_RANGE + 1
        wait_until(lambda: len(g0) == 3, 10, "shard 0 to receive both of shard 1's entries")
        back = g0.assign(bob, "cam-c", 30.0)
        assert back.global_id == ID_RANGE + 1 and back.camera == "cam-b"
        wait_until(lambda: s1.received == 2, 10, "shard 1 to receive bob's entry of cam-c")
    finally:
        s0.close()
        s1.close()
    # each engine sent its own two entries and took the other's two, never its own back
    assert s0.published == s1.published == s0.received == s1.received == 2


def test_an_engine_that_starts_late_reads_the_recent_gallery(server: RedisServer) -> None:
    rng = np.random.default_rng(1)
    people = _unit(rng, 3)
    g0, s0 = _engine(server, 0)
    ids = [g0.assign(p, "cam-a", float(i)).global_id for i, p in enumerate(people)]
    s0.close()  # sent before it closes
    g2, s2 = _engine(server, 2)
    try:
        wait_until(lambda: len(g2) == 3, 10, "the history")
        assert [g2.assign(p, "cam-z", 5.0).global_id for p in people] == ids
    finally:
        s2.close()


def test_entries_of_another_model_are_not_compared(server: RedisServer) -> None:
    rng = np.random.default_rng(2)
    p = _unit(rng, 1)[0]
    (g0, s0), (g1, s1) = _engine(server, 0, "reid-a"), _engine(server, 1, "reid-b")
    try:
        g0.assign(p, "cam-a", 0.0)
        wait_until(lambda: s0.published == 1, 10, "the entry sent")
        wait_until(lambda: server.client().xlen("test:gallery") == 1, 10, "the entry in the stream")
        assert g1.assign(p, "cam-b", 1.0).new and s1.received == 0
    finally:
        s0.close()
        s1.close()


def test_a_broker_that_goes_away_delays_entries_and_loses_none(server: RedisServer) -> None:
    rng = np.random.default_rng(3)
    people = _unit(rng, 4)
    (g0, s0), (g1, s1) = _engine(server, 0), _engine(server, 1)
    try:
        g0.assign(people[0], "cam-a", 0.0)
        wait_until(lambda: len(g1) == 1, 10, "the first entry")
        server.stop()
        late = [g0.assign(p, "cam-a", 1.0 + i).global_id for i, p in enumerate(people[1:])]
        assert s0.published == 1  # the others wait in memory
        server.start()  # the same port, an empty server (no persistence)
        wait_until(lambda: len(g1) == 4, 30, "the waiting entries after the server came back")
        assert [g1.assign(p, "cam-b", 9.0).global_id for p in people[1:]] == late
    finally:
        s0.close()
        s1.close()
    assert s0.dropped == 0 and s0.published == 4
