"""Webhook alert sink: POSTs each flagged part as JSON to a URL, from a background thread.

The body is :meth:`Alert.to_bytes() <pipeline.alerts.record.Alert.to_bytes>`, with headers
``Content-Type: application/json`` and ``Idempotency-Key: <alert_id>``. Any 2xx answer is an
acknowledgement; anything else (connection refused, timeout, a non-2xx status, a redirect) is a failed
attempt: the alert stays in the spool and is retried, oldest first, after an exponential backoff with
jitter. Redirects are not followed, since a POST redirected as a GET would lose the body.

A 4xx answer other than 408 and 429 rejects the request itself (:func:`is_rejection`): sent again unchanged,
the alert would be rejected again and hold up every alert behind it. After ``max_rejections`` such answers
the alert's file is moved, unchanged, to the dead-letter folder next to the spool (``<spool>-dead-letter``),
counted in ``siamstream_alerts_dead_lettered_total`` and logged, and delivery goes on with the next alert.
Dead-lettered files are never deleted; moving one back into the spool folder queues it again (read at the
next start). 5xx answers, 408, 429, timeouts and connection errors are retried for as long as it takes: a
receiver that is down never costs an alert.

The standard library's ``urllib`` is enough for one small POST at a time; it needs no extra dependency.
"""

from __future__ import annotations

import base64
import http.client
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.alerts.outbox import AlertOutbox
from pipeline.alerts.spool import SpoolEntry
from pipeline.redact import redact_url

log = logging.getLogger(__name__)

# Log the first failure of an outage, then every Nth, so a receiver that is down for hours does not flood the log.
# Characters of a rejecting answer's body kept for the log: enough for a validation message, one line.
_BODY_EXCERPT = 200
# 4xx statuses that ask for the same request again later (Request Timeout, Too Many Requests).
_RETRY_LATER = frozenset({408, 429})


def is_rejection(status: int) -> bool:
    """Whether an HTTP ``status`` rejects the request itself, so that sending it again unchanged cannot succeed:
    every 4xx except 408 and 429."""
    return 400 <= status < 500 and status not in _RETRY_LATER


@dataclass(frozen=True)
class PostResult:
    """One delivery attempt.

    Attributes:
        status: the HTTP status of the answer; None when none came (refused, timed out, cut off).
        error: None on a 2xx answer, otherwise why the attempt failed, one line.
        body: the start of a non-2xx answer's body, whitespace collapsed, at most 200 characters.
    """

    status: int | None
    error: str | None
    body: str = ""

    @property
    def rejected(self) -> bool:
        """The receiver rejected this alert (see :func:`is_rejection`)."""
        return self.status is not None and is_rejection(self.status)


def _excerpt(data: bytes) -> str:
    text = re.sub(r"\s+", " ", data[: _BODY_EXCERPT * 4].decode("utf-8", "replace")).strip()
    return text if len(text) <= _BODY_EXCERPT else text[: _BODY_EXCERPT - 3] + "..."


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status: a failed attempt


def check_webhook_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; otherwise a ``ValueError`` that says what to pass."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook url {redact_url(url)!r} is not an http:// or https:// URL with a host; "
                         f"e.g. http://127.0.0.1:5001/alerts")
    return url


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``http://user:password@host/path`` -> (``http://host/path``, an HTTP Basic ``Authorization`` header), as
    curl and browsers read userinfo; a URL without userinfo comes back as it is, with no header. User and
    password are percent-decoded (``%40`` for ``@`` in a password)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    host = parts.netloc.rsplit("@", 1)[1]
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    bare = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, {"Authorization": f"Basic {token}"}


def _user_agent() -> str:
    try:
        return f"siamstream/{metadata.version('siamstream')}"
    except metadata.PackageNotFoundError:
        return "siamstream"


class WebhookSink(AlertOutbox):
    """POST every flagged part to ``url``; see :class:`~pipeline.alerts.outbox.AlertOutbox` for the rest.

    Args:
        url: the receiver, ``http://`` or ``https://``.
        spool_dir: this sink's spool directory; rejected alerts go to ``<spool_dir>-dead-letter`` beside it.
        timeout_s: per request (connect and each read), > 0.
        max_rejections: rejections (:func:`is_rejection`) of one alert before it is moved to the dead-letter
            folder, >= 0; 0 retries rejected alerts forever, like any other failure.
        **kwargs: the :class:`~pipeline.alerts.outbox.AlertOutbox` arguments.

    Raises:
        ValueError: ``url`` is not an http(s) URL, or an argument is out of range.
        SinkError: the spool directory cannot be used.
    """

    sink = "webhook"

    def __init__(self, url: str, spool_dir: Path, *, timeout_s: float = 5.0, max_rejections: int = 5,
                 **kwargs: Any) -> None:
        self._url, auth = split_credentials(check_webhook_url(url))
        self.url = redact_url(url)  # what logs and errors show
        if not timeout_s > 0:
            raise ValueError(f"WebhookSink: timeout_s must be > 0, got {timeout_s}")
        if max_rejections < 0:
            raise ValueError(f"WebhookSink: max_rejections must be >= 0 (0 = never dead-letter), got {max_rejections}")
        self.timeout_s = float(timeout_s)
        self.max_rejections = max_rejections
        self.dead_letter_dir = Path(spool_dir).parent / f"{Path(spool_dir).name}-dead-letter"
        super().__init__(spool_dir, **kwargs)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._headers = {"Content-Type": "application/json", "User-Agent": _user_agent(), **auth}
        self._start()

    def post(self, body: bytes, alert_id: str, timeout_s: float) -> PostResult:
        """One delivery attempt."""
        request = urllib.request.Request(self._url, data=body, method="POST",
                                         headers={**self._headers, "Idempotency-Key": alert_id})
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            try:
                answer = _excerpt(exc.read())
            except (OSError, http.client.HTTPException):
                answer = ""
            return PostResult(exc.code, f"HTTP {exc.code} {exc.reason}", answer)
        except urllib.error.URLError as exc:
            return PostResult(None, str(exc.reason))
        except (OSError, http.client.HTTPException) as exc:
            return PostResult(None, str(exc) or type(exc).__name__)
        return PostResult(status, None if 200 <= status < 300 else f"HTTP {status}")

    def _serve(self) -> None:
        receiver = f"webhook {self.url}"
        rejected_name, rejections = "", 0  # the alert the receiver rejected last, and how often
        while (item := self._next_alert()) is not None:
            entry, alert = item
            left = self._time_left()
            timeout = self.timeout_s if left is None else max(0.05, min(self.timeout_s, left))
            result = self.post(alert.to_bytes(), alert.alert_id, timeout)
            if result.error is None:
                self._delivered(entry, receiver)
                continue
            self._failed()
            if result.rejected and self.max_rejections:
                # Rejections of the alert at the head are counted; other failures in between (the receiver was
                # down for a while) neither count nor reset the count.
                rejections = rejections + 1 if entry.name == rejected_name else 1
                rejected_name = entry.name
                if rejections >= self.max_rejections and self._dead_letter(entry, result, rejections):
                    self._failures = 0  # the receiver answers: the next alert goes at once
                    continue
            answer = f" ({result.body})" if result.body else ""
            self._retry_later(receiver, f"{result.error}{answer}")

    def _dead_letter(self, entry: SpoolEntry, result: PostResult, rejections: int) -> bool:
        """Move a rejected alert out of the way; False (and the alert stays in the spool) if it cannot be moved."""
        try:
            moved = self.spool.move_out(entry, self.dead_letter_dir)
        except OSError as exc:
            log.error("webhook %s rejected alert %s %d times (%s) but it could not be moved to %s (%s); it stays "
                      "in %s and is retried", self.url, entry.alert_id, rejections, result.error, self.dead_letter_dir,
                      exc.strerror or exc, self.spool.directory)
            return False
        self._update_spooled()
        if moved is None:  # dropped meanwhile (spool full): counted there
            return True
        self.metrics.dead_lettered.inc()
        log.error("webhook %s rejected alert %s %d times (%s: %s); moved to the dead-letter folder %s, delivery goes "
                  "on with the next alert", self.url, entry.alert_id, rejections, result.error,
                  result.body or "empty answer", self.dead_letter_dir)
        return True
