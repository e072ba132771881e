"""Real servers for the alerting tests, all on 127.0.0.1: an HTTP webhook receiver that can go down, hang
and come back on the same port, a mosquitto broker (Debian package ``mosquitto``), and an MQTT subscriber."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``cond`` until it is true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def wait_for_port(port: int, timeout: float, what: str) -> None:
    def accepting() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(accepting, timeout, f"{what} to listen on 127.0.0.1:{port}", step=0.1)


class WebhookReceiver:
    """An HTTP server that records every POSTed JSON body. ``start()``/``stop()`` bring it up and down on the
    same port; ``hang()`` makes it accept requests and never answer until ``release()``; ``status`` is the
    code it answers with, ``reject`` the code (and body) for particular alert ids instead. ``received`` holds
    the accepted alerts, ``requests`` every request: (alert id, status answered, raw body)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/alerts"
        self.status = 200
        self.reject: dict[str, tuple[int, bytes]] = {}  # alert id -> (status, body) answered instead of `status`
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.requests: list[tuple[str, int, bytes]] = []
        self._lock = threading.Lock()
        self._hang = threading.Event()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.hung = 0  # requests held by hang() so far

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver._hang.is_set():
                    with receiver._lock:
                        receiver.hung += 1
                    receiver._release.wait(60)
                    return  # the client timed out long ago; close without an answer
                alert = json.loads(body)
                alert_id = str(alert.get("alert_id", ""))  # "" for other bodies (Alertmanager's notifications)
                status, answer = receiver.reject.get(alert_id, (receiver.status, b""))
                with receiver._lock:
                    receiver.requests.append((alert_id, status, body))
                    if status // 100 == 2:
                        receiver.received.append(alert)
                        receiver.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def hang(self) -> None:
        self._release.clear()
        self._hang.set()

    def release(self) -> None:
        self._hang.clear()
        self._release.set()

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def unique(self) -> dict[str, dict[str, Any]]:
        """Received alerts de-duplicated by ``alert_id``, as a receiver should."""
        return {a["alert_id"]: a for a in self.alerts()}

    def attempts(self, alert_id: str) -> list[tuple[int, bytes]]:
        """(status answered, raw body) of every request that carried ``alert_id``, in order."""
        with self._lock:
            return [(status, body) for aid, status, body in self.requests if aid == alert_id]


def mosquitto_binary() -> str:
    """The mosquitto broker, or skip the test saying how to install it."""
    path = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).is_file()), None)
    if path is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto; .ci/run does)")
    return path


class Mosquitto:
    """A mosquitto broker on 127.0.0.1:``port`` with persistence in ``data_dir``: sessions and queued QoS 1
    messages survive a ``stop()``/``start()`` as they would in production."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.binary = mosquitto_binary()
        self.port = port or free_port()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.data_dir / "mosquitto.conf"
        # Started as root, mosquitto would switch to the `mosquitto` user, who cannot write data_dir: stay us.
        user = pwd.getpwuid(os.getuid()).pw_name
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {user}\n"
                             f"persistence true\npersistence_location {self.data_dir}/\n"
                             f"log_dest file {self.data_dir}/mosquitto.log\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self._proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        try:
            wait_for_port(self.port, 15, "mosquitto")
        except AssertionError:
            self.stop()
            log = self.data_dir / "mosquitto.log"
            raise AssertionError(f"mosquitto did not start: {log.read_text() if log.exists() else ''}") from None
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()  # SIGTERM: mosquitto saves its persistence database, then exits
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None


class MqttSubscriber:
    """A QoS 1 subscriber with a persistent session (fixed client id, clean_session False), so messages
    published while it is away are kept for it by the broker."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber") -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                             protocol=paho.MQTTv311)
        client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]

        def on_connect(c: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            c.subscribe(topic, qos=1)

        def on_subscribe(c: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
            self.subscribed.set()

        def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            with self._lock:
                self.messages.append(json.loads(msg.payload))

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect_async("127.0.0.1", port, 30)
        client.loop_start()
        self.client = client
        wait_until(self.subscribed.is_set, 15, "the MQTT subscriber to subscribe")

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def unique(self) -> dict[str, dict[str, Any]]:
        return {m["alert_id"]: m for m in self.received()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RedisServer:
    """redis-server on 127.0.0.1:``port``. Without ``data_dir`` no persistence (a restart starts empty, as a
    cache-only Redis does); with it, an append-only file fsynced on every write there (a restart keeps every
    acknowledged write, as a broker for events is run)."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.data_dir = data_dir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        persist = (["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
                   if self.data_dir is not None else ["--appendonly", "no"])
        # small stream nodes: MAXLEN ~ trims whole nodes, so trimming shows with a few dozen entries
        self._proc = subprocess.Popen([self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                       *persist, "--protected-mode", "no", "--stream-node-max-entries", "4"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, 15, "redis-server")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)
