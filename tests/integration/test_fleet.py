"""A fleet of engines on one machine: three `siamstream run --shard auto` processes (StatefulSet-style host names)
sharing one stream list of real MJPEG cameras. Every camera runs on exactly one engine, growing the fleet from 2
to 3 moves only the cameras the new engine wins, and an engine killed and started again takes its cameras back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pipeline.shards import owner
from tests.alert_servers import free_port
from tests.camera_servers import Camera
from tests.engine_runs import readyz, terminate, wait_for, write_streams

REPO = Path(__file__).resolve().parents[2]
CAMERAS = 6


def _fleet_view(port: int) -> tuple[dict[str, float], dict[str, str], set[str]]:
    """What an engine publishes of the fleet: its shard (-> shard count), every listed stream's shard, and the
    streams it says it runs."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    shard: dict[str, float] = {}
    assigned: dict[str, str] = {}
    own: set[str] = set()
    for fam in text_string_to_metric_families(body):
        for smp in fam.samples:
            if smp.name == "siamstream_fleet_shard":
                shard[smp.labels["shard"]] = smp.value
            elif smp.name == "siamstream_fleet_stream_assigned" and smp.value == 1:
                assigned[smp.labels["stream"]] = smp.labels["shard"]
            elif smp.name == "siamstream_stream_shard" and smp.value == 1:
                own.add(smp.labels["stream"])
    return shard, assigned, own


def _running_streams(port: int) -> set[str]:
    streams = readyz(port).get("streams", {})
    assert isinstance(streams, dict)
    return {name for name, s in streams.items() if s["state"] == "running"}


def test_each_camera_runs_on_one_engine_through_growth_and_a_crash(
        tmp_path: Path, pretrained_onnx: Path, cameras: Callable[[int], Camera]) -> None:
    cams = {f"cam{i}": cameras(i).url for i in range(CAMERAS)}
    ports = [free_port() for _ in range(3)]
    cfgs = [tmp_path / f"fleet{i}.toml" for i in range(3)]  # the same list; each engine its own metrics port

    def write(shards: int) -> None:
        for i, cfg in enumerate(cfgs):
            write_streams(cfg, pretrained_onnx, ports[i], cams, extra=f"[fleet]\nshards = {shards}\n")

    def expect(shards: int) -> list[set[str]]:
        return [{n for n in cams if owner(n, shards) == i} for i in range(shards)]

    write(2)
    procs = {i: subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfgs[i]), "--shard",
                                  "auto", "--out", str(tmp_path / f"shard{i}")], cwd=REPO,
                                 env={**os.environ, "HOSTNAME": f"siamstream-{i}"}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(2)}
    try:
        two = expect(2)
        for i in range(2):
            wait_for(f"shard {i} of 2", lambda i=i: _running_streams(ports[i]) == two[i], procs[i])  # type: ignore[misc]
            # the metrics say the same: this engine is shard i of 2, every listed camera's shard, and its own
            assert _fleet_view(ports[i]) == ({str(i): 2.0}, {n: str(owner(n, 2)) for n in cams}, two[i])

        write(3)  # grow: the new engine starts, the others read the list again
        procs[2] = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfgs[2]),
                                     "--shard", "auto", "--out", str(tmp_path / "shard2")], cwd=REPO,
                                    env={**os.environ, "HOSTNAME": "siamstream-2"}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        for i in range(2):
            procs[i].send_signal(signal.SIGHUP)
        three = expect(3)
        for i in range(3):
            wait_for(f"shard {i} of 3", lambda i=i: _running_streams(ports[i]) == three[i], procs[i])  # type: ignore[misc]
        assert set().union(*three) == set(cams) and sum(len(s) for s in three) == CAMERAS  # each exactly once
        for i in range(3):  # the old engines published the new assignment on SIGHUP
            assert _fleet_view(ports[i]) == ({str(i): 3.0}, {n: str(owner(n, 3)) for n in cams}, three[i])
        for i in range(2):
            assert three[i] <= two[i]  # nothing moved between the old engines

        procs[1].kill()  # a crash: its cameras are not taken by the others ...
        procs[1].wait(10)
        for i in (0, 2):
            assert _running_streams(ports[i]) == three[i]
        procs[1] = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfgs[1]),
                                     "--shard", "auto", "--out", str(tmp_path / "shard1-again")], cwd=REPO,
                                    env={**os.environ, "HOSTNAME": "siamstream-1"}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        wait_for("shard 1 back", lambda: _running_streams(ports[1]) == three[1], procs[1])  # ... it takes them back
    finally:
        terminate(procs.values())
