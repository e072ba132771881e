"""A fleet watched by a real Prometheus with the shipped rules: three `siamstream run --shard I/3` engines on one
stream list of real MJPEG cameras, scraped every second. Frames are summed by shard through the engines' own
assignment, and when one engine dies Prometheus fires SiamstreamShardDown for its shard and
SiamstreamStreamUnassigned for each of its cameras, and nothing for the others."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.shards import owner
from tests.alert_servers import wait_until
from tests.camera_servers import Camera
from tests.engine_runs import readyz, terminate, write_streams
from tests.integration.test_production import get_json, query

REPO = Path(__file__).resolve().parents[2]
SHARDS = 3
CAMERAS = 6


def firing(prometheus: str, alertname: str) -> list[dict[str, str]]:
    alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    return [a["labels"] for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def test_a_shard_that_dies_fires_for_itself_and_its_cameras(
        tmp_path: Path, pretrained_onnx: Path, cameras: Callable[[int], Camera],
        fleet_prometheus: tuple[str, list[int]]) -> None:
    prom, ports = fleet_prometheus
    cams = {f"cam{i}": cameras(i).url for i in range(CAMERAS)}
    shard_of = {n: owner(n, SHARDS) for n in cams}
    procs: dict[int, subprocess.Popen[str]] = {}
    try:
        for i in range(SHARDS):
            cfg = tmp_path / f"fleet{i}.toml"
            write_streams(cfg, pretrained_onnx, ports[i], cams, extra=f"[fleet]\nshards = {SHARDS}\n")
            procs[i] = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "-q", "run", "--config", str(cfg),
                                         "--shard", f"{i}/{SHARDS}", "--out", str(tmp_path / f"shard{i}")],
                                        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def all_running() -> bool:
            return all(readyz(ports[i]).get("ready") for i in range(SHARDS))

        wait_until(all_running, 120, "every engine to be ready")

        def per_shard() -> dict[str, float]:
            return {r["metric"]["shard"]: float(r["value"][1])
                    for r in query(prom, "shard:siamstream_frames_processed:rate5m")}

        busy = {str(s) for s in shard_of.values()}
        wait_until(lambda: set(per_shard()) == busy and all(v > 0 for v in per_shard().values()), 60,
                   "frames per second summed by shard")
        assert firing(prom, "SiamstreamShardDown") == [] and firing(prom, "SiamstreamStreamUnassigned") == []

        victim = max(set(shard_of.values()), key=lambda s: sum(v == s for v in shard_of.values()))
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        wait_until(lambda: firing(prom, "SiamstreamShardDown"), 60, "SiamstreamShardDown to fire")
        down = firing(prom, "SiamstreamShardDown")
        assert [a["shard"] for a in down] == [str(victim)]
        wait_until(lambda: len(firing(prom, "SiamstreamStreamUnassigned")) == sum(
            s == victim for s in shard_of.values()), 30, "SiamstreamStreamUnassigned for each of its cameras")
        unassigned = {a["stream"] for a in firing(prom, "SiamstreamStreamUnassigned")}
        assert unassigned == {n for n, s in shard_of.items() if s == victim}
        assert firing(prom, "SiamstreamStreamRunTwice") == []
    finally:
        terminate(procs.values())


def test_the_recording_rules_load_healthy(fleet_prometheus: tuple[str, list[int]]) -> None:
    prom, _ = fleet_prometheus
    groups: list[dict[str, Any]] = get_json(f"{prom}/api/v1/rules")["data"]["groups"]
    fleet = next(g for g in groups if g["name"] == "siamstream-fleet")
    records = [r for r in fleet["rules"] if r["type"] == "recording"]
    assert len(records) == 4
    wait_until(lambda: all(r["health"] == "ok" for g in get_json(f"{prom}/api/v1/rules")["data"]["groups"]
                           for r in g["rules"]), 30, "every rule evaluated without error")
