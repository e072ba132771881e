"""Secrets out of everything a run shows: URLs with their userinfo and query values masked.

Camera and webhook URLs carry credentials (``rtsp://user:password@cam/``, ``https://host/hook?token=...``).
:func:`redact_url` masks one URL; :func:`redact_text` every URL inside a message; :class:`RedactingFormatter`
applies it to every log line, so a URL that reaches a log by any path is masked there too.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

MASK = "***"
# scheme://rest, up to whitespace or a quote/bracket that would end it in a message.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def _mask_query(query: str) -> str:
    if not query:
        return query
    return "&".join(f"{part.split('=', 1)[0]}={MASK}" if "=" in part else MASK for part in query.split("&"))


def redact_url(url: str) -> str:
    """``url`` with its userinfo (user and password) and every query value replaced by ``***``; other text is
    returned as it is."""
    try:
        parts: SplitResult = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: show the scheme only
        return url.split("://", 1)[0] + "://" + MASK if "://" in url else url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    return urlunsplit((parts.scheme, netloc, parts.path, _mask_query(parts.query), parts.fragment))


def redact_text(text: str) -> str:
    """Every URL in ``text`` through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line (message and traceback alike) has its URLs masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
