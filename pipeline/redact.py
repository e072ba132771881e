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
# scheme://rest, up to whitespace, a double quote or an angle bracket; punctuation that ends a sentence or closes
# a quote or a bracket around the URL is put back (see _URL_TAIL). Userinfo may hold ( ) ' [ ] { } unencoded.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"<>]+")
_URL_TAIL = re.compile(r"[)\]}'.,;:!]+$")
# A URL whose "://" is mistyped ("redis:/user:pw@host", "http//user:pw@host") still carries its password: the
# user:password@ part after a scheme-like word is masked all the same.
_LOOSE_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*:?/{0,2})([^\s\"'<>/@:]+:[^\s\"'<>@]*)@")


def _mask_query(query: str) -> str:
    if not query:
        return query
    return "&".join(f"{part.split('=', 1)[0]}={MASK}" if "=" in part else MASK for part in query.split("&"))


def redact_url(url: str) -> str:
    """``url`` with its userinfo (user and password) and every query value replaced by ``***``; other text is
    returned as it is. A password holding ``/ ? # @`` unencoded (which ends the host part of a URL early) is
    masked too: everything up to the last ``@`` is."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return url
    if "@" in rest:
        # userinfo ends at the last "@" (RFC 3986 forbids "@" in it, but passwords carry one often enough)
        rest = f"{MASK}@{rest.rsplit('@', 1)[1]}"
    try:
        parts: SplitResult = urlsplit(f"{scheme}://{rest}")
    except ValueError:  # e.g. an unbalanced "[" in the host: show the scheme only
        return f"{scheme}://{MASK}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, _mask_query(parts.query), parts.fragment))


def redact_text(text: str) -> str:
    """Every URL in ``text`` through :func:`redact_url`; the ``user:password@`` of a URL whose ``://`` is
    mistyped masked too."""
    if "@" in text:
        text = _LOOSE_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@" if "://" not in m.group(0) else m.group(0),
                                   text)
    if "://" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        tail = _URL_TAIL.search(url)
        if tail is None or "@" in url[tail.start():]:
            return redact_url(url)
        return redact_url(url[:tail.start()]) + url[tail.start():]

    return _URL.sub(one, text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line (message and traceback alike) has its URLs masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
