"""A real MJPEG-over-HTTP camera on 127.0.0.1 for the integration tests (``multipart/x-mixed-replace``, as IP
cameras send it): the HTTP plumbing shared by the camera doubles; each double decides what its stream sends."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_mjpeg(stream: Callable[[BaseHTTPRequestHandler], None], port: int = 0) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1:``port`` (0: any free one) that answers every GET with the MJPEG
    headers and then ``stream(handler)``; a client hanging up ends that stream quietly."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client released it
                stream(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="mjpeg-camera", daemon=True).start()
    return server


def send_jpeg(handler: BaseHTTPRequestHandler, jpeg: bytes) -> None:
    """One multipart part: a JPEG frame."""
    handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg))
    handler.wfile.flush()
