"""Alert sinks: push every flagged part to a remote receiver, durably.

* :mod:`~pipeline.alerts.record`: the :class:`Alert` record built from an ``AnomalyEvent``, evidence JPEG included.
* :mod:`~pipeline.alerts.spool`: the on-disk outbox (one JSON file per alert, atomic writes, bounded).
* :mod:`~pipeline.alerts.backoff`: retry delays (exponential, with jitter).
* :mod:`~pipeline.alerts.outbox`: the shared queue + spool + delivery-thread lifecycle of the sinks.
* :mod:`~pipeline.alerts.webhook`: :class:`WebhookSink` (HTTP POST).
* :mod:`~pipeline.alerts.mqtt`: :class:`MqttSink` (MQTT QoS 1, paho-mqtt).

Both sinks follow the :class:`~pipeline.sinks.Sink` protocol (``write`` / ``close``).
"""

from pipeline.alerts.record import Alert, AlertRecordError, alert_id_for
from pipeline.alerts.spool import Spool, SpoolEntry

__all__ = ["Alert", "AlertRecordError", "Spool", "SpoolEntry", "alert_id_for"]
