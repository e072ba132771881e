"""A fleet on files, its events through Redis, watched by Prometheus: three `siamstream run --shard I/3` engines share
one list of twelve streams of the real conveyor video, every part flagged (a bank of flat grey parts), alerts
appended to one Redis stream by every engine, a real Prometheus with the shipped rules scraping all three. The Redis
server (append-only file, fsync always) is stopped and started again while the engines run. Every stream runs on
exactly one engine, loses no frame (file mode is lossless), Prometheus sums the fleet's frames by shard as the
engines assigned them with no fleet alert firing, and every flagged part's alert is in Redis exactly once after
de-duplication on its alert id."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from pipeline.alerts.record import Alert
from pipeline.shards import owner
from tests.alert_servers import RedisServer, wait_until
from tests.engine_runs import readyz, terminate
from tests.integration.test_conveyor import flat_parts_bank
from tests.integration.test_fleet_prometheus import firing
from tests.integration.test_production import query

REPO = Path(__file__).resolve().parents[2]
SHARDS = 3
STREAMS = 12
FRAMES = 150
KEY = "fleet:alerts"

pytestmark = pytest.mark.data


def _clip(video: Path, out: Path, frames: int) -> Path:
    """The first ``frames`` frames of the real video, as a Motion-JPEG AVI."""
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer: cv2.VideoWriter | None = None
    for _ in range(frames):
        ok, frame = cap.read()
        assert ok, f"{video} has fewer than {frames} frames"
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"MJPG"), fps, frame.shape[1::-1])
        writer.write(frame)
    cap.release()
    assert writer is not None
    writer.release()
    return out


def _states(port: int) -> dict[str, str]:
    streams = readyz(port).get("streams", {})
    assert isinstance(streams, dict)
    return {name: s["state"] for name, s in streams.items()}


def test_twelve_streams_on_three_engines_every_event_once_in_redis_across_a_restart(
        tmp_path: Path, shared_data: Callable[..., Path], pretrained_onnx: Path,
        fleet_prometheus: tuple[str, list[int]]) -> None:
    prom, ports = fleet_prometheus
    clip = _clip(shared_data("conveyor_video", "cutted.avi"), tmp_path / "clip.avi", FRAMES)
    bank = flat_parts_bank(tmp_path, pretrained_onnx)
    (tmp_path / "redis").mkdir()
    redis = RedisServer(data_dir=tmp_path / "redis").start()
    names = [f"line{i:02d}" for i in range(STREAMS)]
    streams = "".join(f'\n[[streams]]\nname = "{n}"\nsource = "{clip}"\n' for n in names)
    procs: dict[int, subprocess.Popen[str]] = {}
    try:
        for i in range(SHARDS):
            cfg = tmp_path / f"shard{i}.toml"
            cfg.write_text(
                f'[encoder]\nmodel = "{pretrained_onnx}"\n[anomaly]\nbank = "{bank}"\n[metrics]\nport = {ports[i]}\n'
                f'[output]\nvideo = false\n[fleet]\nshards = {SHARDS}\n'
                f'[alerts]\nredis_url = "{redis.url}"\nredis_key = "{KEY}"\nbackoff_max_s = 1.0\n'
                f'close_timeout_s = 120.0\n{streams}')
            procs[i] = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "-q", "run", "--config", str(cfg),
                                         "--shard", f"{i}/{SHARDS}", "--out", str(tmp_path / f"shard{i}")],
                                        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = redis.client()
        wait_until(lambda: client.exists(KEY) and client.xlen(KEY) > 0, 180, "the first alerts in Redis")
        assert any(s == "running" for p in ports for s in _states(p).values()), "restart while the streams run"
        before = client.xlen(KEY)
        redis.stop()  # the broker goes away mid-run ...
        time.sleep(2.0)
        redis.start()  # ... and comes back with what it had acknowledged
        client = redis.client()
        assert client.xlen(KEY) >= before

        def all_ended() -> bool:
            assert all(p.poll() is None for p in procs.values()), "an engine ended"
            return all(_states(p) and all(s == "ended" for s in _states(p).values()) for p in ports)

        wait_until(all_ended, 400, "every stream to reach the end of its file", step=0.5)

        def frames_by_shard() -> dict[str, float]:  # the fleet's own assignment, joined by the shipped rules' labels
            return {r["metric"]["shard"]: float(r["value"][1]) for r in query(
                prom, "sum by (shard) (siamstream_frames_processed_total * on (stream) group_left (shard) "
                      "max by (stream, shard) (siamstream_stream_shard))")}

        expected = {str(i): float(FRAMES * sum(owner(n, SHARDS) == i for n in names)) for i in range(SHARDS)}
        wait_until(lambda: frames_by_shard() == expected, 30, "Prometheus to see every frame, by shard", step=0.5)
        for alert in ("SiamstreamShardDown", "SiamstreamStreamUnassigned", "SiamstreamStreamRunTwice"):
            assert firing(prom, alert) == [], alert
        results = {}
        for i, proc in procs.items():
            proc.send_signal(2)  # SIGINT: the engines run until stopped; every stream has ended
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results[i] = json.loads(out.strip().splitlines()[-1])
        unique = {a.alert_id: a for a in (Alert.from_bytes(fields[b"alert"]) for _, fields in client.xrange(KEY))}
    finally:
        terminate(procs.values())
        redis.stop()

    # Each stream ran on the one engine its name is assigned to, every frame of its file processed.
    ran = {name: i for i, r in results.items() for name in r["streams"]}
    assert ran == {n: owner(n, SHARDS) for n in names}
    assert all(row["frames"] == FRAMES and row["state"] == "ended" for r in results.values()
               for row in r["streams"].values())
    # Every flagged part (events.jsonl of each stream) is in Redis exactly once after de-duplication.
    flagged = set()
    for name in names:
        lines = (tmp_path / f"shard{ran[name]}" / name / "events.jsonl").read_text().splitlines()
        flagged |= {(e["stream"], e["track_id"], e["frame_index"]) for e in map(json.loads, lines)}
    assert len(flagged) == sum(row["flagged"] for r in results.values() for row in r["streams"].values())
    assert len({s for s, _, _ in flagged}) == STREAMS  # every stream flagged parts
    assert {(a.stream, a.track_id, a.frame_index) for a in unique.values()} == flagged
    assert len(unique) == len(flagged) > before  # and more were appended after the restart
