"""URL redaction: userinfo and query values masked wherever a URL is shown, the rest kept readable."""

from __future__ import annotations

import logging

import pytest

from pipeline.redact import RedactingFormatter, redact_text, redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
    ("https://tok3n@hooks.example.com/x", "https://***@hooks.example.com/x"),
    ("https://h.example.com/hook?token=abc&x=1", "https://h.example.com/hook?token=***&x=***"),
    ("http://u:p@h/p?flag", "http://***@h/p?***"),
    ("http://127.0.0.1:5001/alerts", "http://127.0.0.1:5001/alerts"),
    ("http://[::1]:8080/hook?token=abc", "http://[::1]:8080/hook?token=***"),
    ("rtsp://admin:p(ss)@cam/s", "rtsp://***@cam/s"),
    ("rtsp://admin:pa#ss@cam/", "rtsp://***@cam/"),  # "#", "/" and "?" end a URL's host early: still masked
    ("rtsp://admin:pa/ss@cam/", "rtsp://***@cam/"),
    ("rtsp://admin:pa?ss@cam/", "rtsp://***@cam/"),
    ("/data/videos/line1.mp4", "/data/videos/line1.mp4"),
    ("0", "0"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_punctuation_around_a_url_in_text_is_kept() -> None:
    assert redact_text("see http://h/a?x=1, then (http://u:p@h/x).") == "see http://h/a?x=***, then (http://***@h/x)."
    assert redact_text("pw rtsp://a:SEC]RET@cam/x and 'rtsp://a:pa'ss@cam/y'") == \
        "pw rtsp://***@cam/x and 'rtsp://***@cam/y'"


def test_urls_inside_text_and_log_lines_are_masked() -> None:
    text = "camera rtsp://a:pw1@cam/x down; webhook 'https://h/x?k=pw2' failed (pw3 is not a url)"
    assert redact_text(text) == "camera rtsp://***@cam/x down; webhook 'https://h/x?k=***' failed (pw3 is not a url)"
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "opening %s", ("rtsp://a:pw1@cam/x",), None)
    line = RedactingFormatter("%(message)s").format(record)
    assert line == "opening rtsp://***@cam/x"
    try:
        raise OSError("cannot reach http://a:pw4@h/")
    except OSError:
        import sys
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "pw4" not in RedactingFormatter("%(message)s").format(record)


@pytest.mark.parametrize("text", ["got 'redis:/user:s3cret@127.0.0.1/0'", "url http//bob:s3cret@host/hook",
                                  "rtsp:user:s3cret@cam/stream"])
def test_a_mistyped_url_keeps_its_password_hidden(text: str) -> None:
    shown = redact_text(text)
    assert "s3cret" not in shown and "***@" in shown


def test_text_without_a_password_is_left_alone() -> None:
    for text in ("mail bob@example.com", "at 12:30@home", "ratio a:b", "rtsp://cam/stream"):
        assert redact_text(text) == text
