"""The alert receiver of deploy/compose.yaml until you plug in your own: prints one line per alert of each
Alertmanager notification to stdout (``docker compose logs alert-receiver``) and answers 200.

Alertmanager in compose (alertmanager/alertmanager.compose.yml) posts to ``http://alert-receiver:5001/alerts``.
To have the alerts go to your own receiver, either change that URL to your receiver's address, or replace the
``alert-receiver`` service in compose.yaml with your receiver, listening on port 5001 at /alerts.

Standard library only: it runs on the stock Python image.

    python log_receiver.py --port 5001 --path /alerts
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def describe(notification: Any) -> list[str]:
    """One line per alert of an Alertmanager webhook notification (payload version 4):
    ``<status> <alertname> {<other labels>} <summary>``.

    Raises:
        ValueError: ``notification`` is not an object with a list of ``alerts``.
    """
    if not isinstance(notification, dict) or not isinstance(notification.get("alerts"), list):
        raise ValueError("not an Alertmanager notification: expected an object with a list of alerts")
    lines = []
    for alert in notification["alerts"]:
        labels = alert.get("labels", {})
        others = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
        summary = alert.get("annotations", {}).get("summary", "")
        status = alert.get("status", notification.get("status", "unknown"))
        lines.append(f"{status} {labels.get('alertname', '?')} {{{others}}} {summary}".rstrip())
    return lines


def serve(port: int, path: str, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """An HTTP server that prints the alerts POSTed to ``path``; call ``serve_forever()`` on it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != path:
                self._answer(404, f"post to {path}")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                lines = describe(json.loads(body))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                self._answer(400, str(exc))
                return
            for line in lines:
                print(line, flush=True)
            self._answer(200, "")

        def _answer(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the alerts are the log

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the alerts Alertmanager posts, one line each.")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=5001, help="port to listen on (default: 5001)")
    parser.add_argument("--path", default="/alerts", help="URL path Alertmanager posts to (default: /alerts)")
    args = parser.parse_args(argv)
    server = serve(args.port, args.path, args.host)
    print(f"alert-receiver: listening on {args.host}:{args.port}{args.path}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
