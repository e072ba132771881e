"""A real MJPEG-over-HTTP camera on 127.0.0.1 for the integration tests (``multipart/x-mixed-replace``, as IP
cameras send it): the HTTP plumbing shared by the camera doubles; each double decides what its stream sends."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from pipeline.synthetic import ProductionLineScene, SceneConfig


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


FPS = 5.0  # slow enough that a busy 2-core machine keeps up with several cameras: a drop would be the test's finding


def _jpegs(seed: int) -> list[bytes]:
    scene = ProductionLineScene(SceneConfig(num_frames=120, seed=seed))
    return [cv2.imencode(".jpg", cv2.resize(f.image, (320, 180)))[1].tobytes() for f in scene]


class Camera:
    """An endless MJPEG camera at :data:`FPS` on 127.0.0.1, sending the synthetic line of ``seed`` at 320x180."""

    def __init__(self, seed: int) -> None:
        self.closed = threading.Event()
        self.jpegs = _jpegs(seed)
        self.server = serve_mjpeg(self._stream)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        i = 0
        while not self.closed.is_set():
            send_jpeg(handler, self.jpegs[i % len(self.jpegs)])
            i += 1
            time.sleep(1.0 / FPS)

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()
