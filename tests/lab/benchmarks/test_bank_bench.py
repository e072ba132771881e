"""`bench bank` parts: the recommendation rule, and one small real measurement (patch features of the synthetic
line through the real encoder, real FAISS indexes of every type)."""

from __future__ import annotations

from pathlib import Path

import cv2
import faiss
import numpy as np

from lab.benchmarks.bank import image_crops, measure, patch_features, recommend
from pipeline import app
from pipeline.anomaly.bank_meta import INDEX_TYPES
from pipeline.config import Config, replace
from pipeline.synthetic import ProductionLineScene, SceneConfig


def test_recommend_takes_the_fastest_index_that_meets_every_target_else_the_most_exact() -> None:
    f = {"flat": {"recall_at_1": 1.0, "p99_ms": 9.0, "memory_mb": 300.0},
         "hnsw": {"recall_at_1": 0.995, "p99_ms": 1.2, "memory_mb": 560.0},
         "ivf-flat": {"recall_at_1": 0.992, "p99_ms": 0.9, "memory_mb": 1100.0},  # too big
         "ivf-pq": {"recall_at_1": 0.6, "p99_ms": 0.3, "memory_mb": 40.0}}  # too inexact
    assert recommend(f) == "hnsw"
    assert recommend({k: v for k, v in f.items() if k in ("flat", "ivf-pq")}) == "flat"


def test_every_index_type_is_measured_on_real_patch_features(tmp_path: Path, pretrained_onnx: Path) -> None:
    frames = [f.image for f in ProductionLineScene(SceneConfig(num_frames=40, seed=1))][::4]
    paths = []
    for i, img in enumerate(frames):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    cfg = replace(Config(), "encoder", model=str(pretrained_onnx))
    encoder = app.build_encoder(cfg.encoder)
    crops = image_crops(paths, encoder.input_size, 8, seed=0)
    assert crops.shape == (80, *encoder.input_size, 3)
    feats = patch_features(encoder, crops)
    patches = encoder.patch_grid[0] * encoder.patch_grid[1]
    assert feats.shape == (80 * patches, encoder.patch_dim)
    vectors, queries = feats[: 70 * patches], feats[70 * patches:].reshape(10, patches, -1)
    exact = faiss.IndexFlatL2(vectors.shape[1])
    exact.add(vectors)
    _, ids = exact.search(queries.reshape(-1, queries.shape[2]), 1)
    cfg = replace(cfg, "bank", nlist=16, pq_m=0)
    for index_type in INDEX_TYPES:
        f = measure(np.ascontiguousarray(vectors), queries, ids[:, 0], index_type, cfg, patches)
        assert f["build_s"] >= 0 and f["memory_mb"] > 0 and 0 < f["p50_ms"] <= f["p99_ms"]
        assert 0.0 <= f["recall_at_1"] <= 1.0
        if index_type == "flat":
            assert f["recall_at_1"] == 1.0
