"""Tracks handed to the cross-camera gallery at run time: identities.jsonl, shared global ids, enrolled names."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipeline import app
from pipeline.config import Config, ConfigError, load_config, replace
from pipeline.demo import SceneSource
from pipeline.gallery import Gallery
from pipeline.identity import GalleryNamesError, IdentityEvent, IdentityStage, add_names, load_names
from pipeline.metrics import PipelineMetrics
from pipeline.runner import run
from pipeline.sinks import EventsJsonlSink
from pipeline.synthetic import ProductionLineScene, SceneConfig
from pipeline.types import AnomalyEvent

REPO = Path(__file__).resolve().parents[2]


def _cfg(pretrained_onnx: Path, reid_onnx: Path) -> Config:
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    cfg = replace(cfg, "tracker", reid_model=str(reid_onnx))
    return replace(cfg, "gallery", enabled=True, threshold=0.05, margin=0.0, min_frames=5)


def _camera(cfg: Config, name: str, gallery: Gallery, out: Path, seed: int) -> list[dict[str, object]]:
    cfg = replace(replace(cfg, "output", stream_name=name, video=False), "anomaly", bank="")
    encoder = app.build_encoder(cfg.encoder)
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    pipe, sinks, _ = app.build_stream(cfg, encoder, PipelineMetrics(CollectorRegistry(), name), out, 25.0, reid,
                                      gallery)
    run(SceneSource(ProductionLineScene(SceneConfig(num_frames=150, seed=seed)), name), pipe, sinks)
    return [json.loads(line) for line in (out / "identities.jsonl").read_text().splitlines()]


def test_the_same_parts_on_a_second_camera_keep_their_global_ids(pretrained_onnx: Path, reid_onnx: Path,
                                                                 tmp_path: Path) -> None:
    cfg = _cfg(pretrained_onnx, reid_onnx)
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    gallery = app.build_gallery(cfg, reid)
    assert gallery is not None
    first = _camera(cfg, "cam1", gallery, tmp_path / "cam1", seed=5)
    assert first and all(e["new"] and e["stream"] == "cam1" and e["frames"] >= 5 for e in first)
    assert len({e["global_id"] for e in first}) == len(first)
    # The same scene seen by a second camera: identical crops, identical tracks, so every track links to its twin.
    second = _camera(cfg, "cam2", gallery, tmp_path / "cam2", seed=5)
    assert [e["track_id"] for e in second] == [e["track_id"] for e in first]
    assert [e["global_id"] for e in second] == [e["global_id"] for e in first]
    assert all(not e["new"] and e["seen_before_on"] == "cam1" and e["distance"] < 0.05 for e in second)
    # Beside each camera's tracks.txt, its rows under the global ids: one id per part on both cameras.
    for cam, events in (("cam1", first), ("cam2", second)):
        ids = {e["track_id"]: e["global_id"] for e in events}
        local = [r.split(",") for r in (tmp_path / cam / "tracks.txt").read_text().splitlines()]
        glob = [r.split(",") for r in (tmp_path / cam / "tracks_global.txt").read_text().splitlines()]
        kept = [r for r in local if int(r[1]) in ids]
        assert kept and len(glob) == len(kept)
        assert all(g[0] == k[0] and int(g[1]) == ids[int(k[1])] and g[2:] == k[2:]
                   for g, k in zip(glob, kept, strict=True))
    same = [(tmp_path / cam / "tracks_global.txt").read_text() for cam in ("cam1", "cam2")]
    assert same[0] == same[1]


def test_gallery_add_enrols_names_that_tracks_then_carry(pretrained_onnx: Path, reid_onnx: Path,
                                                          tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        images.append(tmp_path / f"alice{i}.png")
        cv2.imwrite(str(images[-1]), rng.integers(0, 255, size=(128, 64, 3)).astype(np.uint8))
    names = tmp_path / "names.npz"
    config = tmp_path / "c.toml"
    config.write_text(f'[tracker]\nreid_model = "{reid_onnx}"\n[gallery]\nenabled = true\nnames = "{names}"\n')
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "gallery", "add", "alice", *map(str, images),
                           "--config", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"name": "alice", "images": 2, "enrolled": 2,
                                                                "names": str(names)}
    cfg = load_config(config)
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    assert reid is not None
    gallery = app.build_gallery(cfg, reid)
    assert gallery is not None and list(gallery.names.values()) == ["alice"]
    h, w = reid.input_size
    crop = cv2.cvtColor(cv2.resize(cv2.imread(str(images[0])), (w, h), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_BGR2RGB)
    from pipeline.types import CropBatch

    vec = reid.embed(CropBatch(crop[None], np.array([[0, 0, w, h]], np.float32)), with_patches=False).vectors[0]
    assert gallery.assign(vec, "cam9", 0.0).name == "alice"  # one of her own images, from any camera
    with pytest.raises(GalleryNamesError, match="another re-identification model"):
        load_names(names, Gallery(reid.embedding_dim, 0.4), "some-other-model")


def test_names_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "n.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(GalleryNamesError, match="not a names file"):
        load_names(bad, Gallery(4, 0.4), "m")
    with pytest.raises(GalleryNamesError, match="no such names file"):
        load_names(tmp_path / "missing.npz", Gallery(4, 0.4), "m")
    assert add_names(tmp_path / "ok.npz", "bob", np.ones((3, 4), np.float32), "m") == 3
    with pytest.raises(GalleryNamesError, match="holds 4-d vectors, the model gives 8"):
        load_names(tmp_path / "ok.npz", Gallery(8, 0.4), "m")
    with pytest.raises(GalleryNamesError, match="another re-identification model"):
        add_names(tmp_path / "ok.npz", "bob", np.ones((1, 4), np.float32), "other")


def test_the_gallery_needs_a_reid_model() -> None:
    with pytest.raises(ConfigError, match=r"\[gallery\] enabled compares people across cameras"):
        load_config(None, ["gallery.enabled=true"])


def test_flagged_parts_carry_their_global_id_in_events_and_alerts(pretrained_onnx: Path, reid_onnx: Path,
                                                                  tmp_path: Path) -> None:
    from pipeline.alerts.record import Alert

    cfg = replace(_cfg(pretrained_onnx, reid_onnx), "output", stream_name="line1", video=False)
    encoder = app.build_encoder(cfg.encoder)
    good = tmp_path / "flat-parts"  # a bank of flat grey "parts": every real part is far from it and gets flagged
    good.mkdir()
    for i in range(4):
        assert cv2.imwrite(str(good / f"{i}.png"), np.full((128, 128, 3), 60 + 10 * i, np.uint8))
    bank = app.bank_from_samples(app.good_samples_from_images(good, encoder, cfg.bank.level), cfg, encoder, "good")
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    gallery = app.build_gallery(cfg, reid)
    assert gallery is not None
    decided: list[IdentityEvent] = []
    pipe = app.build_pipeline(cfg, encoder, PipelineMetrics(CollectorRegistry(), "line1"), bank, tmp_path, reid,
                              IdentityStage(gallery, "line1", 5, decided.append))
    summary = run(SceneSource(ProductionLineScene(SceneConfig(num_frames=150, seed=3)), "line1"), pipe,
                  [EventsJsonlSink(tmp_path / "events.jsonl")])
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert summary.flagged and len(events) == len(summary.flagged)
    # every flagged part was decided (it lived at least 5 frames) and its event names that decision's global id
    ids = {e.track_id: e.global_id for e in decided}
    assert all(ev["global_id"] == ids[ev["track_id"]] and ev["name"] is None for ev in events)
    # and the alert sent for it carries the same, through its JSON and back
    event = AnomalyEvent("line1", events[0]["track_id"], events[0]["frame_index"], 1.0, 2.0, 1.0, 3,
                         (0.0, 0.0, 1.0, 1.0), "", events[0]["global_id"], "alice")
    alert = Alert.from_event(event, "run", 5.0)
    assert Alert.from_bytes(alert.to_bytes()) == alert
    assert alert.to_json()["global_id"] == events[0]["global_id"] and alert.to_json()["name"] == "alice"
    # without the gallery neither key is there
    assert "global_id" not in Alert.from_event(dataclasses.replace(event, global_id=None), "run", 5.0).to_json()


def test_a_broker_url_that_cannot_work_is_refused_without_its_secret() -> None:
    with pytest.raises(ConfigError, match=r"\[gallery\] broker.*or rediss:// \(TLS\) URL with a host") as err:
        load_config(None, ['gallery.broker="http://u:hunter2@127.0.0.1:6379"'])
    assert "hunter2" not in str(err.value)


def test_a_shared_gallery_needs_the_fleet_streams(reid_onnx: Path, tmp_path: Path) -> None:
    """Engines sharing a gallery give ids from their shard's range: one process on --source has no shard."""
    config = tmp_path / "c.toml"
    config.write_text(f'[tracker]\nreid_model = "{reid_onnx}"\n[gallery]\nenabled = true\n'
                      f'broker = "redis://u:hunter2@127.0.0.1:1/0"\n')
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "run", "--config", str(config), "--source",
                           str(tmp_path / "x.mp4"), "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "list the cameras as [[streams]] and run each engine with --shard I/N" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
