"""Alerts to a Redis stream: one ``XADD`` per flagged part, the stream capped, each alert appended once.

Metropolis-style deployments move events through a broker that many consumers read at their own pace: a Redis
stream keeps the alerts in order, consumer groups (``XREADGROUP``) share them out and acknowledge them, and
``MAXLEN ~`` keeps the stream bounded. The sink shares the webhook's and MQTT's spool and delivery thread
(:class:`~pipeline.alerts.outbox.AlertOutbox`): an alert leaves the spool once Redis has answered the append, and
a Redis that is down or restarting only delays delivery (retried with backoff, alerts kept on disk).

Each append runs as one server-side script (atomic) that appends only when the alert's id is not recorded yet,
then records it (kept ``dedupe_ttl_s``). An answer lost on the way back makes the sink try again,
and the second try appends nothing: within the de-duplication window, an alert is in the stream once, whatever
the network did. Entries carry ``alert_id``, ``stream``, ``track_id``, ``score`` and ``threshold`` as fields for
consumers that filter, and the whole alert (the webhook's JSON body, evidence JPEG included) as ``alert``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from pipeline.alerts.outbox import AlertOutbox
from pipeline.alerts.record import Alert
from pipeline.redact import redact_url

log = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss", "unix")

# KEYS[1] the stream, KEYS[2] the alert's de-duplication key; ARGV: ttl, maxlen, then field, value pairs.
_APPEND_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], id, 'EX', tonumber(ARGV[1]))
return id
"""

def check_redis_url(url: str) -> str:
    """``url`` when it is a ``redis://``, ``rediss://`` or ``unix://`` URL; else ValueError naming the fix."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or (parts.scheme != "unix" and not parts.hostname):
        raise ValueError(f"redis URL {redact_url(url)!r}: expected redis://[user:password@]host[:port][/db], "
                         f"rediss://... (TLS) or unix:///path/to/redis.sock")
    return url


class RedisStreamsSink(AlertOutbox):
    """Append every flagged part to the Redis stream ``key``; see :class:`~pipeline.alerts.outbox.AlertOutbox`.

    Args:
        url: the server, ``redis://[user:password@]host[:port][/db]``, ``rediss://`` or ``unix://``.
        spool_dir: this sink's spool directory.
        key: the stream's key.
        maxlen: the stream is trimmed to about this many entries (``MAXLEN ~``), >= 1.
        dedupe_ttl_s: how long an alert id is remembered against a second append, >= 1.
        timeout_s: connect and command timeout, > 0.
        **kwargs: the :class:`~pipeline.alerts.outbox.AlertOutbox` arguments.
    """

    sink = "redis"

    def __init__(self, url: str, spool_dir: Path, *, key: str = "siamstream:alerts", maxlen: int = 100_000,
                 dedupe_ttl_s: int = 86_400, timeout_s: float = 5.0, **kwargs: Any) -> None:
        check_redis_url(url)
        if not key:
            raise ValueError("RedisStreamsSink: key must be a non-empty stream key")
        if maxlen < 1 or dedupe_ttl_s < 1 or not timeout_s > 0:
            raise ValueError(f"RedisStreamsSink: maxlen >= 1, dedupe_ttl_s >= 1 and timeout_s > 0, got {maxlen}, "
                             f"{dedupe_ttl_s}, {timeout_s}")
        self.url = redact_url(url)  # what logs and errors show
        self.key = key
        self.maxlen = maxlen
        self.dedupe_ttl_s = dedupe_ttl_s
        super().__init__(spool_dir, **kwargs)
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._append = self._client.register_script(_APPEND_ONCE)
        self._start()

    def append(self, alert: Alert) -> bool:
        """One delivery attempt: True when the stream holds the alert (appended now or before)."""
        fields: list[str | bytes] = ["alert_id", alert.alert_id, "stream", alert.stream, "track_id",
                                     str(alert.track_id), "score", f"{alert.score:.6f}", "threshold",
                                     f"{alert.threshold:.6f}", "alert", alert.to_bytes()]
        self._append(keys=[self.key, f"{self.key}:seen:{alert.alert_id}"],
                     args=[self.dedupe_ttl_s, self.maxlen, *fields])
        return True

    def _serve(self) -> None:
        receiver = f"redis {self.url}"
        while (item := self._next_alert()) is not None:
            entry, alert = item
            try:
                self.append(alert)
            except redis.RedisError as exc:
                self._failed()
                self._retry_later(receiver, redact_url(str(exc)))
                continue
            self._delivered(entry, receiver)

    def close(self) -> None:
        super().close()
        self._client.close()
