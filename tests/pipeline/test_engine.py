"""Several streams in one process (`siamstream run` with [[streams]]): real video files, one real ONNX encoder
shared and batched, real FAISS banks, the real metrics server."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest
from prometheus_client import CollectorRegistry

from pipeline import app
from pipeline.cli import main
from pipeline.config import Config, load_config, replace
from pipeline.engine import Engine
from pipeline.metrics import PipelineMetrics, serve
from pipeline.synthetic import ProductionLineScene, SceneConfig


def _video(path: Path, seed: int, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (640, 360))
    for frame in ProductionLineScene(SceneConfig(num_frames=frames, seed=seed)):
        writer.write(frame.image)
    writer.release()
    return path


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory, pretrained_onnx: Path) -> dict[str, Path]:
    """Two videos of the synthetic line and a bank of its good parts."""
    root = tmp_path_factory.mktemp("streams")
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    good = ProductionLineScene(SceneConfig(num_frames=400, defect_rate=0.0, seed=1000))
    app.bank_from_samples(app.good_samples_from_frames(good, cfg, encoder), cfg, encoder, "good").save(root / "bank")
    return {"a": _video(root / "a.avi", 3, 160), "b": _video(root / "b.avi", 4, 160), "bank": root / "bank",
            "model": pretrained_onnx, "root": root}


def _config(path: Path, line: dict[str, Path], streams: str) -> Path:
    path.write_text(f"""
[encoder]
model = "{line['model']}"
[anomaly]
bank = "{line['bank']}"
[metrics]
enabled = false
[output]
video = false
{streams}
""")
    return path


def _streams(**sources: object) -> str:
    """``[[streams]]`` tables, one per ``name=source``."""
    return "".join(f'[[streams]]\nname = "{name}"\nsource = "{source}"\n' for name, source in sources.items())


def test_each_stream_gets_what_a_run_of_its_own_gives_and_a_broken_one_fails_alone(
        tmp_path: Path, line: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    streams = f"""
[[streams]]
name = "a"
source = "{line['a']}"
[[streams]]
name = "b"
source = "{line['b']}"
[streams.tracker]
min_hits = 2
[[streams]]
name = "nobank"
source = "{line['a']}"
[streams.anomaly]
bank = "{tmp_path / 'missing-bank'}"
"""
    cfg_path = _config(tmp_path / "streams.toml", line, streams)
    code = main(["run", "--config", str(cfg_path), "--out", str(tmp_path / "all")])
    captured = capsys.readouterr()
    assert code == 2  # a stream failed: said, after the others finished
    err = [ln for ln in captured.err.splitlines() if ln.startswith("siamstream: error:")]
    assert len(err) == 1 and "stream nobank" in err[0] and "missing-bank" in err[0]
    doc = json.loads(captured.out.strip().splitlines()[-1])
    assert doc["streams"]["a"]["state"] == doc["streams"]["b"]["state"] == "ended"
    assert doc["streams"]["a"]["frames"] == doc["streams"]["b"]["frames"] == 160
    assert doc["streams"]["nobank"]["state"] == "failed" and doc["failed"] == 1
    # Per stream, the same tracks, scores and flags as a run of that file alone (with that stream's settings).
    for name, extra in (("a", []), ("b", ["--set", "tracker.min_hits=2"])):
        solo = tmp_path / f"solo-{name}"
        assert main(["run", "--config", str(cfg_path), "--source", str(line[name]), "--out", str(solo), *extra]) == 0
        assert (tmp_path / "all" / name / "tracks.txt").read_text() == (solo / "tracks.txt").read_text()
        events = [json.loads(x) for x in (tmp_path / "all" / name / "events.jsonl").read_text().splitlines()]
        solo_events = [json.loads(x) for x in (solo / "events.jsonl").read_text().splitlines()]
        def key(e: dict[str, object]) -> tuple[object, ...]:
            return e["track_id"], e["frame_index"], e["score"]

        assert [key(e) for e in events] == [key(e) for e in solo_events]
        assert all(e["stream"] == name for e in events)
    capsys.readouterr()
    prom = (tmp_path / "all" / "metrics.prom").read_text()
    assert 'siamstream_frames_processed_total{stream="a"} 160.0' in prom
    assert 'siamstream_frames_processed_total{stream="b"} 160.0' in prom
    assert 'siamstream_stream_up{stream="nobank"} 0.0' in prom
    assert 'siamstream_shared_encoder_batch_size_count{encoder="parts"}' in prom


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_readyz_lists_every_stream_and_a_failed_one_is_the_reason(tmp_path: Path, line: dict[str, Path]) -> None:
    long_video = _video(tmp_path / "long.avi", 5, 400)
    streams = _streams(ok=long_video, gone=tmp_path / "no-such-video.mp4")
    cfg = load_config(_config(tmp_path / "streams.toml", line, streams))
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, "ok")
    engine = Engine(cfg, tmp_path / "out", metrics, app.build_encoder(cfg.encoder))
    port = serve(registry, "127.0.0.1", 0, states=engine.states)
    stop = threading.Event()
    runner = threading.Thread(target=engine.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            code, doc = _get(f"http://127.0.0.1:{port}/readyz")
            streams_doc = doc.get("streams", {})
            assert isinstance(streams_doc, dict)
            if streams_doc.get("ok", {}).get("state") == "running" and "gone" in streams_doc and \
                    streams_doc["gone"]["state"] == "failed":
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.1)
        assert code == 503 and doc["ready"] is False
        assert any("stream gone: failed" in r and "no-such-video.mp4" in r for r in doc["reasons"])  # type: ignore[union-attr]
        assert not any(r.startswith("stream ok") for r in doc["reasons"])  # type: ignore[union-attr]
        while (registry.get_sample_value("siamstream_frames_processed_total", {"stream": "ok"}) or 0) < 80:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    assert engine.status["ok"].state == "stopped" and engine.status["ok"].summary is not None
    summary = engine.status["ok"].summary
    assert 0 < summary.frames < 400
    # stopped: every frame it read was processed, then the outputs were flushed
    assert registry.get_sample_value("siamstream_frames_read_total", {"stream": "ok"}) == summary.frames
    assert (tmp_path / "out" / "ok" / "tracks.txt").stat().st_size > 0


def test_streams_of_one_engine_share_one_gallery(tmp_path: Path, line: dict[str, Path], reid_onnx: Path) -> None:
    """Two cameras see the same video: each pair of twin tracks gets one global id, started by whichever decided
    first and linked by the other, across the two streams' threads. (Twins' first frames are the same pixels, so
    a threshold near 0 links them and nothing else: parts of one kind on this line look much alike.)"""
    streams = f"""
[tracker]
reid_model = "{reid_onnx}"
[gallery]
enabled = true
threshold = 0.001
margin = 0.0
min_frames = 5
""" + _streams(cam1=line["a"], cam2=line["a"])
    cfg = load_config(_config(tmp_path / "streams.toml", line, streams))
    metrics = PipelineMetrics(CollectorRegistry(), "cam1")
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    assert reid is not None
    engine = Engine(cfg, tmp_path / "out", metrics, app.build_encoder(cfg.encoder), {str(reid_onnx): reid})
    engine.run(threading.Event())

    def identities(name: str) -> dict[int, dict[str, object]]:
        lines = (tmp_path / "out" / name / "identities.jsonl").read_text().splitlines()
        return {int(e["track_id"]): e for e in map(json.loads, lines)}

    one, two = identities("cam1"), identities("cam2")
    assert one and set(one) == set(two)  # the same tracks on both cameras
    for track in one:
        a, b = one[track], two[track]
        assert a["global_id"] == b["global_id"]
        assert [a["new"], b["new"]].count(True) == 1  # one started it, the other was linked to it
        linked = b if a["new"] else a
        assert linked["seen_before_on"] == ("cam1" if a["new"] else "cam2")


def test_streams_naming_one_bank_hold_one_copy_of_it(tmp_path: Path, line: dict[str, Path]) -> None:
    cfg = load_config(_config(tmp_path / "streams.toml", line, _streams(a=line["a"], b=line["b"], c=line["a"])))
    engine = Engine(cfg, tmp_path / "out", PipelineMetrics(CollectorRegistry(), "a"), app.build_encoder(cfg.encoder))
    status = engine.run(threading.Event())
    assert {n: s.state for n, s in status.items()} == {"a": "ended", "b": "ended", "c": "ended"}
    assert engine._shared.banks.loads == 1  # three streams, the bank read once
