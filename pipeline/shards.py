"""Which streams one engine of a fleet runs: rendezvous (highest-random-weight) hashing of stream names.

Every engine reads the same stream list and keeps the streams whose highest weight, over the ``count`` shards, is
its own. Weights come from a keyed hash of ``(shard, stream name)`` (BLAKE2b, the same on every machine and Python),
so every engine computes the same owner without talking to the others. Changing ``count`` moves only the streams
that must move: growing from N to N + 1 shards moves to the new shard the streams it now wins, and no stream moves
between the old ones (Thaler and Ravishankar, 1998). A Kubernetes StatefulSet gives each pod a stable ordinal,
which is its shard index (``siamstream-2`` is shard 2); the number of shards is ``[fleet] shards`` of the shared
config, so scaling is: raise it, scale the StatefulSet, and send the pods SIGHUP (or let them notice the changed
file, ``[fleet] watch_config_s``).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterable, Mapping

from pipeline.config import ConfigError, StreamConfig


def weight(shard: int, name: str) -> int:
    """The rendezvous weight of stream ``name`` on ``shard``: 64 bits of BLAKE2b."""
    digest = hashlib.blake2b(f"{shard}\x00{name}".encode(), digest_size=8, person=b"siamstream-shard").digest()
    return int.from_bytes(digest, "big")


def owner(name: str, count: int) -> int:
    """The shard of ``count`` that runs stream ``name``."""
    return max(range(count), key=lambda shard: weight(shard, name))


def assigned(streams: Iterable[StreamConfig], index: int, count: int) -> tuple[StreamConfig, ...]:
    """The streams shard ``index`` of ``count`` runs, in their order."""
    return tuple(s for s in streams if owner(s.name, count) == index)


def parse_shard(text: str, shards: int, env: Mapping[str, str] | None = None,
                hostname: str | None = None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N); ``"auto"``: I is the ordinal at the end of the host name (a StatefulSet pod's, e.g.
    ``siamstream-2``) and N is ``shards`` (``[fleet] shards``, read again with the stream list on SIGHUP)."""
    env = os.environ if env is None else env
    if text == "auto":
        host = hostname if hostname is not None else env.get("HOSTNAME") or socket.gethostname()
        m = re.search(r"-(\d+)$", host)
        if m is None:
            raise ConfigError(f"--shard auto: needs a host name ending in -ORDINAL (a StatefulSet pod), got {host!r}; "
                              f"or pass --shard I/N")
        index, n = int(m.group(1)), shards
    else:
        m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if m is None:
            raise ConfigError(f"--shard {text!r}: expected I/N (this engine's index from 0 and the number of "
                              f"engines, e.g. 0/3) or auto")
        index, n = int(m.group(1)), int(m.group(2))
    if not 0 <= index < n:
        raise ConfigError(f"--shard {index}/{n}: the index must be 0 .. {n - 1} for {n} shards"
                          + (" (raise [fleet] shards, or scale the StatefulSet down)" if text == "auto" else ""))
    return index, n
