"""Evaluate an encoder the two ways the Siamese literature does: N-way one-shot classification and verification.

The maths here takes embeddings (or a function that makes them) and never a model type, so the same code
scores a PyTorch network during development and the exported ONNX model that the pipeline runs.

One-shot (Lake et al. 2015; Koch et al. 2015): a run holds one *support* image for each of N classes and N
*query* images; each query is assigned the class of its nearest support image (cosine distance between
L2-normalised embeddings), independently of the other queries. The official Omniglot runs are
``all_runs.zip`` (20 runs x 20 queries, ``runXX/class_labels.txt`` the key). :func:`background_oneshot_runs`
draws runs of the same kind (within one alphabet, support and query from different drawers) from training
data, for validation that never touches the official runs.

Verification: every pair of images of held-out identities is a genuine (same identity) or impostor pair; the
ROC curve of the embedding distance, its area, the equal error rate and the distance threshold that gives it.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# uint8 (N, H, W, C) images -> (N, D) float32 L2-normalised embeddings
Embed = Callable[[np.ndarray], np.ndarray]
# a path -> uint8 (H, W, C) image at the model's input size
Load = Callable[[Path], np.ndarray]

_OMNIGLOT_DRAWER = re.compile(r"^(\d+)_(\d+)\.[A-Za-z]+$")


class EvaluationError(ValueError):
    """Evaluation data that cannot be used; ``str()`` names the file, the problem and the fix."""


# --------------------------------------------------------------------------------------------------------------
# One-shot


@dataclass(frozen=True)
class OneShotRun:
    """One N-way run: ``support[i]`` is the only example of class ``i``; query ``q`` belongs to ``answers[q]``."""

    name: str
    support: tuple[Path, ...]
    queries: tuple[Path, ...]
    answers: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.support) < 2:
            raise EvaluationError(f"run {self.name}: {len(self.support)} support image(s); a run needs 2 or more")
        if len(self.queries) != len(self.answers) or not self.queries:
            raise EvaluationError(f"run {self.name}: {len(self.queries)} queries but {len(self.answers)} answers")
        bad = [a for a in self.answers if not 0 <= a < len(self.support)]
        if bad:
            raise EvaluationError(f"run {self.name}: answers {bad} are not support indices 0..{len(self.support) - 1}")

    @property
    def ways(self) -> int:
        return len(self.support)


def load_oneshot_runs(source: Path, extract_to: Path | None = None) -> list[OneShotRun]:
    """The runs of Lake's one-shot benchmark layout: ``runXX/class_labels.txt`` lines ``test/itemNN.png
    training/classMM.png`` (paths relative to the run's parent), support images ``runXX/training/*``.

    ``source`` is the extracted folder or ``all_runs.zip`` (extracted into ``extract_to``, once).
    """
    source = Path(source)
    if not source.exists():
        raise EvaluationError(f"{source}: not found; pass the one-shot runs folder or all_runs.zip "
                              f"(../shared/data/omniglot/all_runs.zip)")
    if source.is_file():
        if extract_to is None:
            raise EvaluationError(f"{source}: an archive needs a folder to extract into")
        root = Path(extract_to) / source.stem
        if not root.is_dir():
            try:
                with zipfile.ZipFile(source) as zf:
                    tmp = root.with_name(root.name + ".partial")
                    zf.extractall(tmp)
                    tmp.rename(root)
            except zipfile.BadZipFile:
                raise EvaluationError(f"{source}: not a readable zip archive; check the file "
                                      f"(sha256sum -c SHA256SUMS in the data folder)") from None
            except OSError as exc:
                raise EvaluationError(f"{source}: cannot extract into {root.parent} ({exc.strerror or exc}); "
                                      f"pass a writable --cache folder") from None
    else:
        root = source
    labels = sorted(root.glob("run*/class_labels.txt"))
    if not labels:
        raise EvaluationError(f"{source}: no runXX/class_labels.txt found; not a one-shot runs folder")
    runs = []
    for path in labels:
        run_dir = path.parent
        support = tuple(sorted((run_dir / "training").glob("*.png")))
        index = {p.relative_to(root).as_posix(): i for i, p in enumerate(support)}
        queries, answers = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise EvaluationError(f"{path}:{n}: expected 'test/itemNN.png training/classMM.png', got {line!r}")
            query, answer = parts
            key = answer if answer.startswith(run_dir.name + "/") else f"{run_dir.name}/{answer}"
            if key not in index:
                raise EvaluationError(f"{path}:{n}: {answer} is not an image in {run_dir / 'training'}")
            q = root / (query if query.startswith(run_dir.name + "/") else f"{run_dir.name}/{query}")
            if not q.is_file():
                raise EvaluationError(f"{path}:{n}: query image {q} is missing")
            queries.append(q)
            answers.append(index[key])
        runs.append(OneShotRun(run_dir.name, support, tuple(queries), tuple(answers)))
    return runs


def background_oneshot_runs(root: Path, n_runs: int = 20, ways: int = 20, seed: int = 0) -> list[OneShotRun]:
    """Runs drawn like the official ones from an Omniglot-style folder ``root/alphabet/character/NNNN_DD.png``:
    the N characters of a run come from one alphabet (those with at least ``ways`` characters, taken in turn),
    support and query images from two different drawers (``DD``). For validation on held-out alphabets.
    """
    root = Path(root)
    alphabets: dict[str, list[dict[str, Path]]] = {}
    for char_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        drawers = {}
        for img in sorted(char_dir.iterdir()):
            m = _OMNIGLOT_DRAWER.match(img.name)
            if m:
                drawers[m.group(2)] = img
        if len(drawers) >= 2:
            alphabets.setdefault(char_dir.parent.name, []).append(drawers)
    usable = sorted(a for a, chars in alphabets.items() if len(chars) >= ways)
    if not usable:
        raise EvaluationError(f"{root}: no alphabet with {ways} characters of two or more drawers "
                              f"(root/alphabet/character/NNNN_DD.png); lower ways or pass another folder")
    rng = np.random.default_rng(seed)
    runs = []
    for r in range(n_runs):
        alphabet = usable[r % len(usable)]
        chars = [alphabets[alphabet][i] for i in rng.choice(len(alphabets[alphabet]), ways, replace=False)]
        common = sorted(set.intersection(*(set(c) for c in chars)))
        if len(common) < 2:
            raise EvaluationError(f"{root / alphabet}: fewer than two drawers common to {ways} characters")
        d_support, d_query = rng.choice(common, 2, replace=False)
        order = rng.permutation(ways)
        runs.append(OneShotRun(f"{alphabet}#{r + 1}", tuple(c[d_support] for c in chars),
                               tuple(chars[i][d_query] for i in order), tuple(int(i) for i in order)))
    return runs


def nearest_support(support: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query embedding, the index of the nearest support embedding (largest cosine similarity;
    ties go to the lower index)."""
    if support.ndim != 2 or queries.ndim != 2 or support.shape[1] != queries.shape[1]:
        raise ValueError(f"support {support.shape} and queries {queries.shape} must be (N, D) and (M, D)")
    return np.argmax(queries @ support.T, axis=1)


@dataclass(frozen=True)
class OneShotResult:
    runs: tuple[str, ...]
    correct: tuple[int, ...]  # per run
    trials: tuple[int, ...]  # per run

    @property
    def per_run(self) -> tuple[float, ...]:
        return tuple(c / t for c, t in zip(self.correct, self.trials, strict=True))

    @property
    def accuracy(self) -> float:
        """Over all trials (the official figure: runs have equal size, so it is also the mean over runs)."""
        return sum(self.correct) / sum(self.trials)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval of the accuracy (95% by default)."""
        n = sum(self.trials)
        p = self.accuracy
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return float(centre - half), float(centre + half)


def evaluate_oneshot(runs: Sequence[OneShotRun], embed: Embed, load: Load) -> OneShotResult:
    """Score every run: embed its support and query images, nearest support per query."""
    names, correct, trials = [], [], []
    for run in runs:
        support = embed(np.stack([load(p) for p in run.support]))
        queries = embed(np.stack([load(p) for p in run.queries]))
        predicted = nearest_support(support, queries)
        names.append(run.name)
        correct.append(int((predicted == np.asarray(run.answers)).sum()))
        trials.append(len(run.answers))
    return OneShotResult(tuple(names), tuple(correct), tuple(trials))


# --------------------------------------------------------------------------------------------------------------
# Verification


def pair_distances(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distance and genuine flag for every unordered pair ``i < j``."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {embeddings.shape} and labels {labels.shape} must be (N, D) and (N,)")
    i, j = np.triu_indices(len(labels), k=1)
    distance = 1.0 - np.sum(embeddings[i] * embeddings[j], axis=1)
    return distance, labels[i] == labels[j]


@dataclass(frozen=True)
class VerificationResult:
    """ROC of genuine-vs-impostor pairs; a pair is declared genuine when its distance is <= a threshold.

    ``fpr``/``tpr``/``thresholds`` trace the ROC from the strictest threshold to the loosest.
    """

    auc: float
    eer: float
    threshold: float  # the distance threshold at the equal error rate
    genuine_pairs: int
    impostor_pairs: int
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """The error rate where false accepts (``fpr``) equal false rejects (``1 - tpr``), interpolated linearly
    between the two ROC points that bracket it, and the threshold there."""
    fnr = 1.0 - tpr
    diff = fpr - fnr  # rises from <= 0 to >= 0 along the ROC
    k = int(np.searchsorted(diff, 0.0, side="left"))
    if k == 0:
        return float(fpr[0]), float(thresholds[0])
    if k >= len(diff):
        return float(fpr[-1]), float(thresholds[-1])
    d0, d1 = diff[k - 1], diff[k]
    t = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    eer = fpr[k - 1] + t * (fpr[k] - fpr[k - 1])
    threshold = thresholds[k - 1] + t * (thresholds[k] - thresholds[k - 1])
    return float(eer), float(threshold)


def evaluate_verification(embeddings: np.ndarray, labels: np.ndarray) -> VerificationResult:
    """ROC AUC, equal error rate and its threshold over all pairs of ``embeddings``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    distance, genuine = pair_distances(embeddings, labels)
    n_gen, n_imp = int(genuine.sum()), int((~genuine).sum())
    if n_gen == 0 or n_imp == 0:
        raise EvaluationError(f"verification needs genuine and impostor pairs; got {n_gen} genuine and {n_imp} "
                              f"impostor pairs: give two or more images of each of two or more identities")
    fpr, tpr, neg_thr = roc_curve(genuine, -distance, drop_intermediate=False)
    thresholds = -neg_thr  # distance thresholds, strictest first; sklearn starts at "accept nothing" (-inf)
    thresholds[~np.isfinite(thresholds)] = float(distance.min()) - 1e-6
    eer, threshold = equal_error_rate(fpr, tpr, thresholds)
    return VerificationResult(auc=float(roc_auc_score(genuine, -distance)), eer=eer, threshold=threshold,
                              genuine_pairs=n_gen, impostor_pairs=n_imp, fpr=fpr, tpr=tpr, thresholds=thresholds)


def save_roc_png(result: VerificationResult, path: Path, title: str = "") -> None:
    """The ROC curve with the equal-error point marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    try:
        ax.plot(result.fpr, result.tpr, lw=2, label=f"ROC (AUC {result.auc:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.plot([result.eer], [1 - result.eer], "o", c="crimson",
                label=f"EER {result.eer:.3f} at distance {result.threshold:.3f}")
        ax.set_xlabel("false accept rate (impostor pairs)")
        ax.set_ylabel("true accept rate (genuine pairs)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(title or f"{result.genuine_pairs} genuine / {result.impostor_pairs} impostor pairs")
        ax.legend(loc="lower right")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Re-identification ranking (CMC and mAP, the Market-1501 protocol)


@dataclass(frozen=True)
class RankingResult:
    """Re-identification scores over the queries that have a true match in the gallery.

    ``cmc[r]`` is the share of those queries whose first true match is at rank ``r + 1`` or better; ``mAP`` the
    mean over them of the average precision of the ranked gallery; ``ranks[q]`` the rank (1-based) of query ``q``'s
    first true match, 0 for a query without one (not scored); ``queries`` counts the scored queries.
    """

    cmc: np.ndarray
    mAP: float
    ranks: np.ndarray
    queries: int

    def rank(self, r: int) -> float:
        """CMC at rank ``r`` (1-based)."""
        return float(self.cmc[min(r, len(self.cmc)) - 1])


def rank_gallery(distances: np.ndarray, query_ids: np.ndarray, query_cams: np.ndarray, gallery_ids: np.ndarray,
                 gallery_cams: np.ndarray, max_rank: int = 50) -> RankingResult:
    """CMC and mAP by the Market-1501 protocol (Zheng et al. 2015).

    For each query, the gallery is sorted by distance (ascending; ties keep gallery order); gallery images of the
    query's identity taken by the query's camera are left out (they would be the same walk past the same
    camera), and so are junk images (identity ``-1``). A query with no true match left is not scored.

    Args:
        distances: ``(Q, G)`` float distances, smaller is more alike.
        query_ids, gallery_ids: ``(Q,)`` / ``(G,)`` integer identities; ``-1`` marks junk.
        query_cams, gallery_cams: ``(Q,)`` / ``(G,)`` integer cameras.
        max_rank: length of the CMC curve.
    """
    d = np.asarray(distances, np.float64)
    qi, qc = np.asarray(query_ids), np.asarray(query_cams)
    gi, gc = np.asarray(gallery_ids), np.asarray(gallery_cams)
    if d.shape != (len(qi), len(gi)) or qc.shape != qi.shape or gc.shape != gi.shape:
        raise ValueError(f"distances {d.shape} must be (queries {qi.shape}, gallery {gi.shape}), cameras alike")
    cmc = np.zeros(max_rank, np.float64)
    aps: list[float] = []
    ranks = np.zeros(len(qi), np.int64)
    for q in range(len(qi)):
        order = np.argsort(d[q], kind="stable")
        keep = ~(((gi[order] == qi[q]) & (gc[order] == qc[q])) | (gi[order] == -1))
        hits = gi[order][keep] == qi[q]
        if not hits.any():
            continue
        positions = np.flatnonzero(hits)
        first = int(positions[0])
        ranks[q] = first + 1
        if first < max_rank:
            cmc[first:] += 1
        aps.append(float(np.mean((np.arange(len(positions)) + 1) / (positions + 1))))
    n = len(aps)
    if n == 0:
        raise EvaluationError("no query has a true match in the gallery from another camera: nothing to score; "
                              "check that query and gallery hold the same identities")
    return RankingResult(cmc / n, float(np.mean(aps)), ranks, n)
