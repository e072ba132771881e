"""Rendezvous hashing of stream names over the engines of a fleet."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pipeline.config import ConfigError, StreamConfig
from pipeline.shards import assigned, owner, parse_shard, weight

NAMES = [f"cam-{i:03d}" for i in range(600)]


def test_every_stream_has_exactly_one_shard_and_the_split_is_even() -> None:
    streams = [StreamConfig(n, f"rtsp://h/{n}") for n in NAMES]
    parts = [assigned(streams, i, 3) for i in range(3)]
    names = [s.name for part in parts for s in part]
    assert sorted(names) == sorted(NAMES)  # each exactly once
    assert all(150 <= len(p) <= 250 for p in parts), [len(p) for p in parts]


def test_growing_the_fleet_moves_streams_only_to_the_new_shard() -> None:
    for n in (1, 2, 3, 5):
        before = {name: owner(name, n) for name in NAMES}
        after = {name: owner(name, n + 1) for name in NAMES}
        moved = [name for name in NAMES if before[name] != after[name]]
        assert all(after[name] == n for name in moved)  # none moved between the old shards
        assert 0.5 * len(NAMES) / (n + 1) <= len(moved) <= 1.5 * len(NAMES) / (n + 1)  # about a fair share


def test_weights_are_the_same_on_every_machine() -> None:
    # fixed values: not Python's salted hash(), so two processes (or two hosts) agree
    assert weight(0, "line1") == weight(0, "line1") != weight(1, "line1")
    assert owner("line1", 4) == owner("line1", 4)
    assert Counter(owner(n, 4) for n in NAMES[:8]) == Counter(owner(n, 4) for n in NAMES[:8])


@pytest.mark.parametrize(("text", "host", "expected"), [
    ("0/3", "x", (0, 3)), ("2/3", "x", (2, 3)), ("auto", "siamstream-2", (2, 4)), ("auto", "a-b-0", (0, 4)),
])
def test_parse_shard(text: str, host: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text, 4, env={}, hostname=host) == expected


@pytest.mark.parametrize(("text", "host", "fragment"), [
    ("3/3", "x", "0 .. 2"), ("1-3", "x", "expected I/N"), ("auto", "laptop", "ending in -ORDINAL"),
    ("auto", "siamstream-4", "raise [fleet] shards"),
])
def test_a_bad_shard_is_one_line_with_the_fix(text: str, host: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_shard(text, 4, env={}, hostname=host)
