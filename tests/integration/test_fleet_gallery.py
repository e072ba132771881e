"""One gallery across the engines of a fleet, through a real redis-server: two `siamstream run --shard I/2` engines,
each with one camera. The first camera's parts pass, then the same parts pass the second camera (another engine,
started later): each of its tracks gets the global id the first engine gave, said to be seen before on the first
camera, and the parts' flag events carry it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2

from pipeline.gallery import ID_RANGE
from pipeline.shards import owner
from pipeline.synthetic import ProductionLineScene, SceneConfig
from tests.alert_servers import RedisServer, free_port
from tests.engine_runs import readyz, terminate, wait_for
from tests.integration.test_conveyor import flat_parts_bank

REPO = Path(__file__).resolve().parents[2]


def _scene_video(path: Path, frames: int) -> Path:
    scene = ProductionLineScene(SceneConfig(num_frames=frames, seed=5))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), scene.cfg.fps,
                             (scene.cfg.width, scene.cfg.height))
    for frame in scene:
        writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _camera_names() -> tuple[str, str]:
    """Two stream names that rendezvous hashing puts on shard 0 and shard 1 of 2."""
    names = [f"cam{i}" for i in range(20)]
    return next(n for n in names if owner(n, 2) == 0), next(n for n in names if owner(n, 2) == 1)


def test_a_part_seen_by_one_engine_keeps_its_global_id_on_another(tmp_path: Path, pretrained_onnx: Path,
                                                                 reid_onnx: Path) -> None:
    video = _scene_video(tmp_path / "line.avi", 150)
    bank = flat_parts_bank(tmp_path, pretrained_onnx)  # every part flagged: events to carry the ids
    first, second = _camera_names()
    redis = RedisServer().start()
    ports = [free_port(), free_port()]
    procs: dict[int, subprocess.Popen[str]] = {}
    try:
        for i in (0, 1):
            (tmp_path / f"s{i}.toml").write_text(
                f'[encoder]\nmodel = "{pretrained_onnx}"\n[anomaly]\nbank = "{bank}"\n[metrics]\nport = {ports[i]}\n'
                f'[output]\nvideo = false\n[fleet]\nshards = 2\n[tracker]\nreid_model = "{reid_onnx}"\n'
                f'[gallery]\nenabled = true\nthreshold = 0.05\nmargin = 0.0\nmin_frames = 5\nbroker = "{redis.url}"\n'
                f'\n[[streams]]\nname = "{first}"\nsource = "{video}"\n'
                f'\n[[streams]]\nname = "{second}"\nsource = "{video}"\n')

        def start(i: int) -> subprocess.Popen[str]:
            procs[i] = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "-q", "run", "--config",
                                         str(tmp_path / f"s{i}.toml"), "--shard", f"{i}/2", "--out",
                                         str(tmp_path / f"shard{i}")], cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
            return procs[i]

        def ended(i: int, name: str) -> bool:
            streams = readyz(ports[i]).get("streams", {})
            assert isinstance(streams, dict)
            return streams.get(name, {}).get("state") == "ended"

        wait_for(f"{first} to end on shard 0", lambda: ended(0, first), start(0), 180)
        wait_for(f"{second} to end on shard 1", lambda: ended(1, second), start(1), 180)
        for proc in procs.values():
            proc.send_signal(2)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    finally:
        terminate(procs.values())
        redis.stop()

    def identities(shard: int, name: str) -> list[dict[str, object]]:
        path = tmp_path / f"shard{shard}" / name / "identities.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    one, two = identities(0, first), identities(1, second)
    assert one and all(e["new"] and 0 < int(e["global_id"]) <= ID_RANGE for e in one)  # shard 0's own range
    # the second engine's tracks: the same parts, so the first engine's ids, seen before on the first camera
    assert [e["track_id"] for e in two] == [e["track_id"] for e in one]
    assert [e["global_id"] for e in two] == [e["global_id"] for e in one]
    assert all(not e["new"] and e["seen_before_on"] == first for e in two)
    ids = {e["track_id"]: e["global_id"] for e in two}
    events = [json.loads(line) for line in (tmp_path / "shard1" / second / "events.jsonl").read_text().splitlines()]
    assert events and all(ev["global_id"] == ids[ev["track_id"]] for ev in events)
