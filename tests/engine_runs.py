"""Helpers of the tests that run `siamstream run` with [[streams]] as a process: its config, its /readyz and
/metrics, waiting on it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.camera_servers import Camera


@pytest.fixture
def cameras() -> Iterator[Callable[[int], Camera]]:
    made: list[Camera] = []

    def make(seed: int) -> Camera:
        made.append(Camera(seed))
        return made[-1]

    yield make
    for cam in made:
        cam.close()


def write_streams(path: Path, model: Path, port: int, streams: dict[str, str], extra: str = "") -> None:
    """A config of ``streams`` (name -> source URL) for the small test cameras; ``extra``: more TOML sections."""
    body = "".join(f'\n[[streams]]\nname = "{n}"\nsource = "{u}"\n' for n, u in streams.items())
    path.write_text(f'[encoder]\nmodel = "{model}"\n[metrics]\nport = {port}\n[output]\nvideo = false\n'
                    f'[detector]\nmin_area = 60\n{extra}{body}')


def readyz(port: int) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        return dict(json.loads(e.read()))
    except (urllib.error.URLError, ConnectionError):
        return {}


def samples(port: int, name: str) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.labels["stream"]: s.value for fam in text_string_to_metric_families(body) for s in fam.samples
            if s.name == name and "stream" in s.labels}


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, f"the run ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def running(port: int, names: set[str]) -> bool:
    streams = readyz(port).get("streams", {})
    assert isinstance(streams, dict)
    return set(streams) == names and all(s["state"] == "running" for s in streams.values())


def terminate(procs: Iterable[subprocess.Popen[str]]) -> None:
    """SIGTERM every run still going (each flushes its outputs), then wait for all of them."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        p.communicate(timeout=60)
