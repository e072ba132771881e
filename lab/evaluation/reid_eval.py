"""``siamstream eval reid``: an exported ONNX re-identification encoder on a Market-1501 style evaluation folder.

``DATA/query/`` and ``DATA/bounding_box_test/`` hold crops named ``PPPP_cCsS_FFFFFF_BB.jpg``; identity ``-1``
marks junk boxes (ignored) and ``0000`` distractors (wrong matches for every query). Each query is ranked against
the gallery by the cosine distance of the model's embeddings, run in ONNX Runtime exactly as the tracker runs
them (:class:`~pipeline.encoder.OnnxEncoder`), at the model's own input shape (non-square for person models).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from encoders.data import IMAGE_EXTS, list_images
from encoders.evaluate import EvaluationError, RankingResult, VerificationResult, evaluate_verification, rank_gallery
from encoders.reid_data import MARKET_NAME, ReidDataError, load_reid_image
from pipeline.encoder import OnnxEncoder
from pipeline.progress import Progress
from pipeline.types import CropBatch

log = logging.getLogger(__name__)

QUERY_DIR = "query"
GALLERY_DIR = "bounding_box_test"


@dataclass(frozen=True)
class MarketFolder:
    """One side of a Market-1501 evaluation folder: image paths with ``(N,)`` int64 identities, cameras and
    recording sequences (``sS`` of the name)."""

    paths: tuple[Path, ...]
    ids: np.ndarray
    cams: np.ndarray
    seqs: np.ndarray


def read_market_folder(folder: Path) -> MarketFolder:
    """Images of ``folder`` named by the Market-1501 convention (any other name is an error naming the file)."""
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: not found; the evaluation folder needs {QUERY_DIR}/ and {GALLERY_DIR}/ "
                              f"(the Market-1501 layout)")
    paths = list_images(folder, IMAGE_EXTS, recursive=False)
    if not paths:
        raise EvaluationError(f"{folder}: no images")
    ids, cams, seqs = [], [], []
    for p in paths:
        m = MARKET_NAME.match(p.name)
        if m is None:
            raise EvaluationError(f"{p}: name is not PPPP_cCsS_FFFFFF_BB.jpg (Market-1501); rename it or remove it")
        ids.append(int(m.group(1)))
        cams.append(int(m.group(2)))
        seqs.append(int(m.group(3)))
    return MarketFolder(tuple(paths), np.asarray(ids, np.int64), np.asarray(cams, np.int64),
                        np.asarray(seqs, np.int64))


class ReidEmbedder:
    """Paths -> L2-normalised embeddings with an ONNX encoder, at the model's own ``(height, width)``."""

    def __init__(self, model: Path, device: str = "auto", threads: int = 0, batch: int = 64) -> None:
        self.encoder = OnnxEncoder(model, device=device, threads=threads, max_batch=batch)
        self.size = self.encoder.input_size
        self.batch = batch

    def load(self, path: Path) -> np.ndarray:
        try:
            return load_reid_image(path, self.size)
        except ReidDataError as exc:
            raise EvaluationError(str(exc)) from None

    def __call__(self, paths: tuple[Path, ...]) -> np.ndarray:
        h, w = self.size
        out = []
        with Progress("embedding crops", len(paths), "image") as bar:
            for start in range(0, len(paths), self.batch):
                images = np.stack([self.load(p) for p in paths[start:start + self.batch]])
                xyxy = np.tile(np.array([0, 0, w, h], np.float32), (len(images), 1))
                out.append(self.encoder.embed(CropBatch(images, xyxy), with_patches=False).vectors)
                bar.update(len(images))
        return np.concatenate(out) if out else np.zeros((0, self.encoder.embedding_dim), np.float32)


@dataclass(frozen=True)
class SceneDistances:
    """Pairs of images of one camera's recording (camera and sequence), the kind a tracker's video gates measure
    (:mod:`pipeline.tracking.gates`: the same person in consecutive frames, two people of one frame): the distance
    that keeps 99% of same-identity pairs and the one that accepts 1% of different-identity pairs. They are what
    ``deploy/configs/people.toml`` holds until a video's own pairs are enough (NaN: no such pair)."""

    same_p99: float
    different_p1: float
    same_pairs: int
    different_pairs: int


@dataclass(frozen=True)
class ReidReport:
    """Ranking figures, and verification over every pair of the folder's images (a seeded sample of
    :data:`MAX_VERIFICATION_IMAGES` of them in larger folders): the cosine distance at the
    equal error rate and the one that accepts 1% of impostor pairs (what a tracker's appearance gates can be set
    from: see ``deploy/configs/people.toml``)."""

    result: RankingResult
    queries: int
    gallery: int
    seconds: float
    cmc_png: Path | None
    matches_png: Path | None
    verification: VerificationResult
    threshold_far_1pct: float
    scene: SceneDistances

    def figures(self) -> dict[str, float | int]:
        r = self.result
        return {"rank1": round(r.rank(1), 4), "rank5": round(r.rank(5), 4), "rank10": round(r.rank(10), 4),
                "mAP": round(r.mAP, 4), "queries": r.queries, "gallery": self.gallery}

    def thresholds(self) -> dict[str, float]:
        return {"threshold_eer": round(self.verification.threshold, 4), "eer": round(self.verification.eer, 4),
                "threshold_far_1pct": round(self.threshold_far_1pct, 4),
                "same_camera_same_p99": round(self.scene.same_p99, 4),
                "same_camera_different_p1": round(self.scene.different_p1, 4)}


# All pairs of at most this many images feed the verification figures (4.5 million pairs): a full Market-1501 test
# set (23,100 images, 267 million pairs) would need gigabytes for the same thresholds.
MAX_VERIFICATION_IMAGES = 3000


def _sample(ids: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of the non-junk images, or of a seeded sample of ``limit`` of them."""
    keep = np.flatnonzero(np.asarray(ids) >= 0)
    if len(keep) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=limit, replace=False))
    return keep


def pair_verification(embeddings: np.ndarray, ids: np.ndarray, limit: int = MAX_VERIFICATION_IMAGES,
                      seed: int = 0) -> VerificationResult:
    """Verification over every pair of the non-junk images, or of a seeded sample of ``limit`` of them."""
    keep = _sample(ids, limit, seed)
    return evaluate_verification(embeddings[keep], np.asarray(ids)[keep])


def scene_distances(embeddings: np.ndarray, ids: np.ndarray, scenes: np.ndarray,
                    limit: int = MAX_VERIFICATION_IMAGES, seed: int = 0) -> SceneDistances:
    """:class:`SceneDistances` over the pairs of one scene (``scenes``: ``(N,)`` or ``(N, k)`` keys, e.g. camera
    and sequence) among the images :func:`pair_verification` uses."""
    keep = _sample(ids, limit, seed)
    e, i = np.asarray(embeddings, np.float64)[keep], np.asarray(ids)[keep]
    _, c = np.unique(np.asarray(scenes).reshape(len(ids), -1)[keep], axis=0, return_inverse=True)
    c = c.reshape(-1)
    same, different = [], []
    for cam in np.unique(c):
        rows = np.flatnonzero(c == cam)
        a, b = np.triu_indices(len(rows), 1)
        d = 1.0 - np.einsum("ij,ij->i", e[rows[a]], e[rows[b]])
        one = i[rows[a]] == i[rows[b]]
        same.append(d[one])
        different.append(d[~one])
    s = np.concatenate(same) if same else np.zeros(0)
    o = np.concatenate(different) if different else np.zeros(0)
    return SceneDistances(float(np.percentile(s, 99)) if len(s) else float("nan"),
                          float(np.percentile(o, 1)) if len(o) else float("nan"), len(s), len(o))


def far_threshold(result: VerificationResult, rate: float) -> float:
    """The largest distance threshold whose false-accept rate (impostor pairs at or below it) is <= ``rate``."""
    ok = np.flatnonzero(result.fpr <= rate)
    return float(result.thresholds[ok[-1]]) if len(ok) else float(result.thresholds[0])


def evaluate_reid(model: Path, data: Path, out_dir: Path | None = None, threads: int = 0,
                  device: str = "auto") -> ReidReport:
    """Rank ``data``'s gallery for each of its queries with ``model``; with ``out_dir``, write ``cmc.png`` and
    ``matches.png`` (queries with their top-5 matches, right ones framed green)."""
    data = Path(data)
    query = read_market_folder(data / QUERY_DIR)
    gallery = read_market_folder(data / GALLERY_DIR)
    embed = ReidEmbedder(Path(model), device=device, threads=threads)
    started = time.perf_counter()
    q = embed(query.paths)
    g = embed(gallery.paths)
    seconds = time.perf_counter() - started
    log.info("embedded %d queries and %d gallery images in %.1f s", len(q), len(g), seconds)
    distances = 1.0 - q @ g.T
    result = rank_gallery(distances, query.ids, query.cams, gallery.ids, gallery.cams)
    everything, ids = np.concatenate([q, g]), np.concatenate([query.ids, gallery.ids])
    verification = pair_verification(everything, ids)
    scene = scene_distances(everything, ids, np.stack([np.concatenate([query.cams, gallery.cams]),
                                                       np.concatenate([query.seqs, gallery.seqs])], axis=1))
    cmc_png = matches_png = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        cmc_png = save_cmc_png(result, out_dir / "cmc.png", title=f"{data.name}: {Path(model).name}")
        matches_png = save_matches_png(distances, query, gallery, embed, out_dir / "matches.png")
    return ReidReport(result, len(query.paths), len(gallery.paths), seconds, cmc_png, matches_png, verification,
                      far_threshold(verification, 0.01), scene)


def save_cmc_png(result: RankingResult, path: Path, title: str = "") -> Path:
    """The CMC curve (rank 1 to 50) with rank-1 and mAP in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = np.arange(1, len(result.cmc) + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(ranks, result.cmc, marker=".")
    ax.set_xlabel("rank")
    ax.set_ylabel("queries matched by this rank")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}\nrank-1 {result.rank(1):.3f}, mAP {result.mAP:.3f}, {result.queries} queries",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_matches_png(distances: np.ndarray, query: MarketFolder, gallery: MarketFolder, embed: ReidEmbedder,
                     path: Path, rows: int = 12, top: int = 5, seed: int = 0) -> Path:
    """``rows`` queries (seeded choice) each followed by its ``top`` nearest gallery images under the protocol,
    framed green when right, red when wrong."""
    h, w = embed.size
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(query.paths), size=min(rows, len(query.paths)), replace=False))
    gap = 4
    sheet = np.full((len(chosen) * (h + 2 * gap), (top + 1) * (w + 2 * gap) + 3 * gap, 3), 255, np.uint8)
    for r, qi in enumerate(chosen):
        order = np.argsort(distances[qi], kind="stable")
        keep = ~(((gallery.ids[order] == query.ids[qi]) & (gallery.cams[order] == query.cams[qi]))
                 | (gallery.ids[order] == -1))
        best = order[keep][:top]
        y = r * (h + 2 * gap) + gap
        sheet[y:y + h, gap:gap + w] = embed.load(query.paths[qi])
        for c, gi in enumerate(best):
            x = (c + 1) * (w + 2 * gap) + 3 * gap
            tile = embed.load(gallery.paths[gi]).copy()
            colour = (0, 170, 0) if gallery.ids[gi] == query.ids[qi] else (210, 0, 0)
            cv2.rectangle(tile, (0, 0), (w - 1, h - 1), colour, 3)
            sheet[y:y + h, x:x + w] = tile
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return path
