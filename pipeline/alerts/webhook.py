"""Webhook alert sink: POSTs each flagged part as JSON to a URL, from a background thread.

The body is :meth:`Alert.to_bytes() <pipeline.alerts.record.Alert.to_bytes>`, with headers
``Content-Type: application/json`` and ``Idempotency-Key: <alert_id>``. Any 2xx answer is an
acknowledgement; anything else (connection refused, timeout, a non-2xx status, a redirect) is a failed
attempt: the alert stays in the spool and is retried, oldest first, after an exponential backoff with
jitter. Redirects are not followed, since a POST redirected as a GET would lose the body.

The standard library's ``urllib`` is enough for one small POST at a time; it needs no extra dependency.
"""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.alerts.backoff import backoff_delay
from pipeline.alerts.outbox import AlertOutbox

log = logging.getLogger(__name__)

# Log the first failure of an outage, then every Nth, so a receiver that is down for hours does not flood the log.
_LOG_EVERY = 10


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status: a failed attempt


def check_webhook_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; otherwise a ``ValueError`` that says what to pass."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"webhook url {url!r} is not an http:// or https:// URL with a host; "
                         f"e.g. http://127.0.0.1:5001/alerts")
    return url


def _user_agent() -> str:
    try:
        return f"siamstream/{metadata.version('siamstream')}"
    except metadata.PackageNotFoundError:
        return "siamstream"


class WebhookSink(AlertOutbox):
    """POST every flagged part to ``url``; see :class:`~pipeline.alerts.outbox.AlertOutbox` for the rest.

    Args:
        url: the receiver, ``http://`` or ``https://``.
        spool_dir: this sink's spool directory.
        timeout_s: per request (connect and each read), > 0.
        **kwargs: the :class:`~pipeline.alerts.outbox.AlertOutbox` arguments.

    Raises:
        ValueError: ``url`` is not an http(s) URL, or an argument is out of range.
        SinkError: the spool directory cannot be used.
    """

    sink = "webhook"

    def __init__(self, url: str, spool_dir: Path, *, timeout_s: float = 5.0, **kwargs: Any) -> None:
        self.url = check_webhook_url(url)
        if not timeout_s > 0:
            raise ValueError(f"WebhookSink: timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        super().__init__(spool_dir, **kwargs)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._headers = {"Content-Type": "application/json", "User-Agent": _user_agent()}
        self._start()

    def post(self, body: bytes, alert_id: str, timeout_s: float) -> str | None:
        """One delivery attempt; None on a 2xx answer, else why it failed (one line)."""
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={**self._headers, "Idempotency-Key": alert_id})
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            return str(exc.reason)
        except (OSError, http.client.HTTPException) as exc:
            return str(exc) or type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _serve(self) -> None:
        failures = 0  # consecutive failed attempts: the backoff exponent
        down_since = 0.0
        while True:
            self._drain_queue()
            left = self._time_left()
            if left is not None and left <= 0:
                return
            entry = self.spool.oldest()
            if entry is None:
                if left is not None:
                    return  # closing and everything delivered
                if self._wake.wait(1.0):
                    self._wake.clear()
                continue
            alert = self.spool.read(entry)
            if alert is None:  # dropped (spool full) or unreadable meanwhile
                self._update_spooled()
                continue
            timeout = self.timeout_s if left is None else max(0.05, min(self.timeout_s, left))
            error = self.post(alert.to_bytes(), alert.alert_id, timeout)
            if error is None:
                self.spool.remove(entry)
                self.metrics.sent.inc()
                self._update_spooled()
                if failures:
                    log.info("webhook %s is back after %d failed attempts (%.0f s); delivering %d spooled alerts",
                             self.url, failures, time.monotonic() - down_since, len(self.spool))
                failures = 0
                continue
            failures += 1
            self.metrics.failures.inc()
            if failures == 1:
                down_since = time.monotonic()
            delay = backoff_delay(failures, self.backoff_initial_s, self.backoff_max_s)
            if failures == 1 or failures % _LOG_EVERY == 0:
                log.warning("webhook %s: %s (attempt %d); %d alerts kept in %s, next try in %.1f s", self.url,
                            error, failures, len(self.spool), self.spool.directory, delay)
            self._pause(delay)
