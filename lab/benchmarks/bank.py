"""``siamstream bench bank``: the anomaly bank at the sizes a line reaches after months of ``bank add``.

Real patch features: crops of the MVTec 3D-AD tire training images (good), at several scales and positions, plain
and mirrored, embedded by the configured encoder (a crop gives one vector per patch). For each size (default 10k,
100k and 1M vectors) and each ``[bank] index`` type, a bank is built as the product builds it
(:meth:`pipeline.anomaly.bank.Bank.add`, IVF cells and PQ codes set as ``[bank]`` sets them) and measured:

- ``build_s``: adding the vectors (training included);
- ``memory_mb``: the index as FAISS serialises it (vectors, codes, graph, cells);
- per-crop scoring latency, p50 and p99: one crop's patches scored as the anomaly stage scores them
  (:meth:`Bank.raw_patch_scores`), crops of the held-out validation images, one at a time;
- ``recall_at_1``: how often the index's nearest neighbour of a query patch is the exact one (``flat``).

The recommended index at a size is chosen by a rule fixed here: among the indexes with recall@1 >= 0.99, p99 <=
5 ms and under 1 GB, the one with the lowest p99; when none qualifies, the highest recall@1.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import faiss
import numpy as np

from lab.evaluation.report import json_line, table
from pipeline.anomaly.bank import Bank, search
from pipeline.anomaly.bank_meta import INDEX_TYPES
from pipeline.config import Config
from pipeline.encoder import Encoder
from pipeline.progress import Progress
from pipeline.types import CropBatch

log = logging.getLogger(__name__)

SCALES = (1.0, 0.7, 0.5, 0.35)  # crop side as a fraction of the image's shorter side
P99_MS, RECALL, MEMORY_MB = 5.0, 0.99, 1024.0


def image_crops(paths: list[Path], size: tuple[int, int], per_image: int, seed: int) -> np.ndarray:
    """``per_image`` crops of each image, uint8 RGB ``(N, H, W, 3)``: square windows at :data:`SCALES` at random
    positions, every other one mirrored."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((len(paths) * per_image, h, w, 3), np.uint8)
    n = 0
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"{path}: not a readable image")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        side = min(img.shape[:2])
        for i in range(per_image):
            s = max(8, int(side * SCALES[i % len(SCALES)]))
            y = int(rng.integers(0, img.shape[0] - s + 1))
            x = int(rng.integers(0, img.shape[1] - s + 1))
            crop = cv2.resize(img[y:y + s, x:x + s], (w, h), interpolation=cv2.INTER_AREA)
            out[n] = crop[:, ::-1] if i % 2 else crop
            n += 1
    return out


def patch_features(encoder: Encoder, crops: np.ndarray, batch: int = 64, what: str = "features") -> np.ndarray:
    """``(N * P, C)`` float32: every patch feature of every crop."""
    h, w = crops.shape[1:3]
    boxes = np.tile(np.array([[0, 0, w, h]], np.float32), (batch, 1))
    rows = []
    with Progress(f"bench bank: {what}", len(crops), "crop") as bar:
        for i in range(0, len(crops), batch):
            part = crops[i:i + batch]
            emb = encoder.embed(CropBatch(part, boxes[:len(part)]), with_patches=True)
            if emb.patches is None:
                raise ValueError("bench bank needs an encoder with patch features ([encoder] patch_stage)")
            rows.append(emb.patches.reshape(-1, emb.patches.shape[2]))
            bar.update(len(part))
    return np.concatenate(rows)


def measure(vectors: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, index_type: str, cfg: Config,
            patches: int) -> dict[str, float]:
    """Build one bank of ``vectors`` and measure it on ``queries`` ``(crops, P, C)``."""
    bank = Bank.create("bench", vectors.shape[1], (0, 0), index_type, 1, "patch", patches, cfg.bank.nlist,
                       cfg.bank.nprobe, cfg.bank.pq_m)
    start = time.perf_counter()
    bank.add(vectors)
    build = time.perf_counter() - start
    memory = len(faiss.serialize_index(bank.index)) / 2**20
    times = []
    for crop in queries:
        t = time.perf_counter()
        bank.raw_patch_scores(crop[None], 1)
        times.append(time.perf_counter() - t)
    _, ids = search(bank.index, queries.reshape(-1, queries.shape[2]), 1)
    return {"build_s": round(build, 2), "memory_mb": round(memory, 1),
            "p50_ms": round(float(np.percentile(times, 50)) * 1000, 3),
            "p99_ms": round(float(np.percentile(times, 99)) * 1000, 3),
            "recall_at_1": round(float(np.mean(ids[:, 0] == exact_ids)), 4)}


def recommend(per_index: dict[str, dict[str, float]]) -> str:
    """The rule of the module docstring."""
    ok = [t for t, f in per_index.items()
          if f["recall_at_1"] >= RECALL and f["p99_ms"] <= P99_MS and f["memory_mb"] < MEMORY_MB]
    if ok:
        return min(ok, key=lambda t: per_index[t]["p99_ms"])
    return max(per_index, key=lambda t: per_index[t]["recall_at_1"])


def main(cfg: Config, encoder: Encoder, data: Path, sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
         query_crops: int = 200, indexes: tuple[str, ...] = INDEX_TYPES, seed: int = 0) -> int:
    grid = encoder.patch_grid
    patches = grid[0] * grid[1]
    train = sorted((data / "train" / "good" / "rgb").glob("*.png"))
    held_out = sorted((data / "validation" / "good" / "rgb").glob("*.png"))
    if not train or not held_out:
        raise FileNotFoundError(f"{data}: no train/good/rgb or validation/good/rgb images")
    per_image = int(np.ceil(max(sizes) / patches / len(train)))
    features = patch_features(encoder, image_crops(train, encoder.input_size, per_image, seed), what="bank crops")
    rng = np.random.default_rng(seed)
    features = features[rng.permutation(len(features))]  # a size's vectors come from every image
    q_per_image = int(np.ceil(query_crops / len(held_out)))
    q = patch_features(encoder, image_crops(held_out, encoder.input_size, q_per_image, seed + 1), what="queries")
    queries = q.reshape(-1, patches, q.shape[1])[:query_crops]
    figures: dict[str, object] = {}
    rows = []
    for size in sizes:
        vectors = np.ascontiguousarray(features[:size])
        if len(vectors) < size:
            raise ValueError(f"bench bank: {len(vectors)} vectors made, {size} asked")
        exact = faiss.IndexFlatL2(vectors.shape[1])
        exact.add(vectors)
        _, exact_ids = exact.search(queries.reshape(-1, queries.shape[2]), 1)
        per_index: dict[str, dict[str, float]] = {}
        for index_type in indexes:
            log.info("bench bank: %d vectors, %s", size, index_type)
            per_index[index_type] = f = measure(vectors, queries, exact_ids[:, 0], index_type, cfg, patches)
            log.info("bench bank: %d vectors, %s: %s", size, index_type, f)  # a run cut short keeps these
            rows.append([size, index_type, f["build_s"], f["memory_mb"], f["p50_ms"], f["p99_ms"], f["recall_at_1"]])
        best = recommend(per_index)
        figures[str(size)] = {**per_index, "recommended": best}
        rows.append([size, f"-> {best}", "", "", "", "", ""])
    largest = figures[str(max(sizes))]
    assert isinstance(largest, dict)
    figures["recommended"] = largest["recommended"]
    print(f"tire train crops, {patches} patches of dimension {features.shape[1]} per crop; {len(queries)} query "
          f"crops from held-out images; [bank] nprobe {cfg.bank.nprobe}, nlist {cfg.bank.nlist or 'auto'}, pq_m "
          f"{cfg.bank.pq_m or 'auto'}; faiss threads {faiss.omp_get_max_threads()}")
    print(table(["vectors", "index", "build s", "memory MB", "p50 ms/crop", "p99 ms/crop", "recall@1"], rows))
    print(json_line(figures))
    return 0
