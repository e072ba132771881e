"""MQTT alert sink: publishes each flagged part to a topic with QoS 1, through paho-mqtt 2.

The payload is :meth:`Alert.to_bytes() <pipeline.alerts.record.Alert.to_bytes>`, published with QoS 1 (at
least once) and not retained. paho's network loop runs on its own thread, connects in the background and
reconnects with a doubling delay between ``backoff_initial_s`` and ``backoff_max_s``, so a broker that is
down at start or goes away does not stop the pipeline. An alert's spool file is deleted only when the
broker's PUBACK for it arrives; paho re-sends unacknowledged messages after a reconnect, and whatever is
still unacknowledged at :meth:`close` stays in the spool for the next run. At most ``max_inflight`` alerts
are handed to paho at a time; the rest wait on disk, so memory stays bounded through a long outage.

There is no dead-letter folder here, unlike the webhook sink: MQTT 3.1.1 has no way to reject one message.
Its PUBACK carries no reason code, and a broker that refuses a message (an ACL, ``message_size_limit``)
still acknowledges it and drops it (mosquitto logs "Dropped too large PUBLISH"). What can fail (connecting,
authenticating) fails for every alert alike and is retried.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from pipeline.alerts.backoff import backoff_delay
from pipeline.alerts.outbox import LOG_EVERY, AlertOutbox
from pipeline.alerts.spool import SpoolEntry

log = logging.getLogger(__name__)



def check_topic(topic: str) -> str:
    """``topic`` if MQTT can publish to it; otherwise a ``ValueError`` that says what to pass."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic or len(topic.encode()) > 65535:
        raise ValueError(f"MQTT topic {topic!r} cannot be published to: it must be non-empty, without the "
                         f"wildcards + and #; e.g. siamstream/alerts")
    return topic


class MqttSink(AlertOutbox):
    """Publish every flagged part to ``topic`` on the broker at ``host:port``.

    Args:
        host: broker host name or address.
        spool_dir: this sink's spool directory.
        port: broker port, 1..65535.
        topic: where alerts are published (no wildcards).
        client_id: MQTT client id; "" picks ``siamstream-<stream>-<random>``.
        keepalive_s: MQTT keep-alive, seconds, >= 5.
        max_inflight: alerts handed to paho and not yet acknowledged, >= 1.
        **kwargs: the :class:`~pipeline.alerts.outbox.AlertOutbox` arguments.

    Raises:
        ValueError: an argument is out of range.
        SinkError: the spool directory cannot be used.
    """

    sink = "mqtt"

    def __init__(self, host: str, spool_dir: Path, *, port: int = 1883, topic: str = "siamstream/alerts",
                 client_id: str = "", keepalive_s: int = 30, max_inflight: int = 20, **kwargs: Any) -> None:
        if not host:
            raise ValueError("MqttSink: host is empty; pass the broker's host name or address")
        if not 1 <= port <= 65535:
            raise ValueError(f"MqttSink: port must be in 1..65535, got {port}")
        if keepalive_s < 5:
            raise ValueError(f"MqttSink: keepalive_s must be >= 5, got {keepalive_s}")
        if max_inflight < 1:
            raise ValueError(f"MqttSink: max_inflight must be >= 1, got {max_inflight}")
        self.host = host
        self.port = port
        self.topic = check_topic(topic)
        self.max_inflight = max_inflight
        super().__init__(spool_dir, **kwargs)
        self.client_id = client_id or f"siamstream-{self.stream}-{self.run_id[:8]}"
        self._acks: list[tuple[int, bool]] = []  # (mid, accepted) from paho's thread, taken by the delivery thread
        self._acks_lock = threading.Lock()
        self._connect_failures = 0
        self.connected = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                             protocol=paho.MQTTv311)
        client.max_inflight_messages_set(max_inflight)
        client.reconnect_delay_set(self.backoff_initial_s, self.backoff_max_s)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(host, port, keepalive_s)
        client.loop_start()
        self._start()

    # -- paho callbacks (paho's network thread) ----------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
                    ) -> None:
        if getattr(reason_code, "is_failure", False):
            self._failed_connection(f"the broker refused the connection ({reason_code})")
            return
        if self._connect_failures:
            log.info("mqtt %s:%d: connected after %d failed attempts", self.host, self.port,
                     self._connect_failures)
        self._connect_failures = 0
        self.connected.set()
        self._wake.set()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._failed_connection("cannot connect")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
                       ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and not self._closing.is_set():
            self.metrics.failures.inc()
            log.warning("mqtt %s:%d: connection lost (%s); unacknowledged alerts stay in %s, reconnecting",
                        self.host, self.port, reason_code, self.spool.directory)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
                    ) -> None:
        with self._acks_lock:
            self._acks.append((mid, not getattr(reason_code, "is_failure", False)))
        self._wake.set()

    def _failed_connection(self, why: str) -> None:
        self._connect_failures += 1
        self.metrics.failures.inc()
        if self._connect_failures == 1 or self._connect_failures % LOG_EVERY == 0:
            log.warning("mqtt %s:%d: %s (attempt %d); %d alerts kept in %s, retrying", self.host, self.port, why,
                        self._connect_failures, len(self.spool), self.spool.directory)

    # -- delivery thread ---------------------------------------------------------------------------------

    def _take_acks(self) -> list[tuple[int, bool]]:
        with self._acks_lock:
            acks, self._acks = self._acks, []
        return acks

    def _serve(self) -> None:
        pending: dict[int, SpoolEntry] = {}  # mid -> spooled alert handed to paho, not yet acknowledged
        handed: set[str] = set()  # their file names
        rejected = 0  # consecutive PUBACKs with a failure reason code: the backoff exponent
        resume_at = 0.0  # time.monotonic() before which nothing new is handed to paho (after a rejection)
        try:
            while True:
                self._drain_queue()
                # Acks are taken after the publishes they answer were recorded (same thread): no lost mid.
                for mid, accepted in self._take_acks():
                    entry = pending.pop(mid, None)
                    if entry is None:
                        continue
                    handed.discard(entry.name)
                    if accepted:
                        self.spool.remove(entry)
                        self.metrics.sent.inc()
                        rejected = 0
                    else:
                        rejected += 1
                        self.metrics.failures.inc()
                        delay = backoff_delay(rejected, self.backoff_initial_s, self.backoff_max_s)
                        resume_at = time.monotonic() + delay
                        log.warning("mqtt %s:%d: the broker rejected alert %s on %s; kept, next try in %.1f s",
                                    self.host, self.port, entry.alert_id, self.topic, delay)
                self._update_spooled()
                left = self._time_left()
                if left is not None and (left <= 0 or (not pending and len(self.spool) == 0)):
                    return
                now = time.monotonic()
                if now >= resume_at and len(pending) < self.max_inflight:
                    self._hand_over(pending, handed)
                wait = 1.0 if left is None else min(1.0, left)
                if resume_at > now:
                    wait = min(wait, resume_at - now)
                if self._wake.wait(max(wait, 0.0)):
                    self._wake.clear()
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def _hand_over(self, pending: dict[int, SpoolEntry], handed: set[str]) -> None:
        """Publish spooled alerts, oldest first, until ``max_inflight`` are waiting for their PUBACK."""
        for entry in self.spool.entries():
            if len(pending) >= self.max_inflight:
                return
            if entry.name in handed:
                continue
            alert = self.spool.read(entry)
            if alert is None:
                continue
            # Queued by paho while disconnected (rc MQTT_ERR_NO_CONN) and sent once it connects.
            info = self._client.publish(self.topic, alert.to_bytes(), qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self.metrics.failures.inc()
                log.warning("mqtt %s:%d: publish failed (%s); alert kept in %s", self.host, self.port,
                            paho.error_string(info.rc), self.spool.directory)
                return
            pending[info.mid] = entry
            handed.add(entry.name)
