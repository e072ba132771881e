"""The bank of known-good samples: a FAISS index plus the metadata that makes it safe to reuse.

Two levels:

- ``global``: one vector per crop (the encoder's embedding); a crop's score is its k-NN distance.
- ``patch``: PatchCore-style local features, P per crop; a crop's score is the largest k-NN distance of any
  of its patches, so a small scratch or hole is not averaged away.

Index types: ``flat`` (exact), ``hnsw`` (graph, approximate, no training), ``ivf-flat`` (inverted lists
over k-means cells, exact distances within the ``nprobe`` cells searched) and ``ivf-pq`` (inverted lists with
product-quantised codes: about ``dim / m`` times less memory, approximate distances) for large banks. The IVF
quantisers are trained on the first vectors added; later additions (``siamstream bank add``) reuse them.

Stored as a directory: ``index.faiss`` and ``meta.json``, written to a temporary sibling and renamed,
so a reader never sees half a bank. Scores are L2 distances.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import faiss
import numpy as np

from pipeline.anomaly.bank_meta import INDEX_TYPES, LEVELS, BankError, BankMeta, parse_meta
from pipeline.anomaly.calibrate import false_alarm_upper_bound, group_folds, threshold_for_false_alarm_rate
from pipeline.anomaly.cellnorm import CellNorm, fit_cell_norm, leave_one_out
from pipeline.anomaly.coreset import chunked_greedy_coreset
from pipeline.anomaly.faiss_file import IndexFileError, check_index_file
from pipeline.types import Embeddings

HNSW_M = 32
HNSW_EF_SEARCH = 64
PQ_BITS = 8


SMALL_SEARCH = 1024


def search(index: faiss.Index, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``; batches of fewer than :data:`SMALL_SEARCH` queries (a frame's crops and patches) run on
    this thread alone. FAISS splits queries over OpenMP threads, and for a few hundred of them starting and syncing
    the threads costs more than the search, the more so when other work (decoding, the encoder, other streams)
    holds the cores. Large batches (calibration, evaluation) use every thread."""
    if len(x) >= SMALL_SEARCH:
        return index.search(x, k)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # this thread's OpenMP setting only
    try:
        return index.search(x, k)
    finally:
        faiss.omp_set_num_threads(before)


def auto_nlist(n: int) -> int:
    """IVF cells for ``n`` training vectors: about ``4 sqrt(n)``, with at least 39 vectors per cell (FAISS's
    rule of thumb for k-means) and at least one cell."""
    return int(max(1, min(round(4 * np.sqrt(n)), n // 39)))


def auto_pq_m(dim: int) -> int:
    """Sub-quantisers for IVF-PQ: the largest divisor of ``dim`` that leaves at least 4 dimensions each."""
    return max(m for m in range(1, dim + 1) if dim % m == 0 and dim // m >= 4) if dim >= 4 else 1


def _new_index(dim: int, index_type: str, train: np.ndarray | None = None, nlist: int = 0,
               pq_m: int = 0) -> faiss.Index:
    """An empty index; IVF types are trained on ``train`` ``(M, dim)`` (required for them)."""
    if index_type == "flat":
        return faiss.IndexFlatL2(dim)
    if index_type == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M)
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        return hnsw
    if index_type not in INDEX_TYPES:
        raise BankError(f"unknown index type {index_type!r}; valid: {', '.join(INDEX_TYPES)}")
    if train is None:
        raise BankError(f"{index_type} index needs vectors to train its quantiser")
    n = len(train)
    cells = nlist or auto_nlist(n)
    need = cells if index_type == "ivf-flat" else max(cells, 1 << PQ_BITS)
    if n < need:
        raise BankError(f"{index_type} index with {cells} cells needs at least {need} vectors to train, got {n}; "
                        f"add more good samples, lower [bank] nlist, or use [bank] index = \"flat\"")
    quantizer = faiss.IndexFlatL2(dim)
    index: faiss.Index
    if index_type == "ivf-flat":
        index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_L2)
    else:
        m = pq_m or auto_pq_m(dim)
        if dim % m:
            raise BankError(f"[bank] pq_m = {m} does not divide the feature dimension {dim}; pick a divisor of "
                            f"{dim} or 0 (automatic)")
        index = faiss.IndexIVFPQ(quantizer, dim, cells, m, PQ_BITS)
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    return index


def _set_search_params(index: faiss.Index, meta: BankMeta) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = max(1, min(meta.nprobe, ivf.nlist))
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, meta.k)


def crop_features(emb: Embeddings, level: str) -> np.ndarray:
    """The rows a bank of ``level`` indexes for each crop: ``(N, P, C)`` (P = 1 for global banks)."""
    if level == "global":
        return emb.vectors[:, None, :]
    if level == "patch":
        if emb.patches is None:
            raise BankError("patch-level bank but the encoder gives no patch features: use an encoder with a "
                            "'patches' output (the built-in one has it) or build a global bank "
                            "(--set bank.level=\"global\")")
        return emb.patches
    raise BankError(f"unknown bank level {level!r}; valid: {', '.join(LEVELS)}")


class Bank:
    """FAISS index of good features + metadata. Use :meth:`create`, :meth:`load`, or :func:`build_bank`."""

    def __init__(self, index: faiss.Index, meta: BankMeta) -> None:
        if index.d != meta.embedding_dim:
            raise BankError(f"index dimension {index.d} != metadata embedding_dim {meta.embedding_dim}")
        self.index = index
        self.meta = meta
        self._cell_norm_cache: tuple[list[float], list[float], CellNorm] | None = None
        _set_search_params(index, meta)

    @classmethod
    def create(cls, encoder_id: str, dim: int, input_size: tuple[int, int], index_type: str = "flat",
               k: int = 1, level: str = "global", patches_per_crop: int = 1, nlist: int = 0, nprobe: int = 8,
               pq_m: int = 0) -> Bank:
        """An empty bank. IVF indexes are built and trained when the first vectors are added."""
        if level not in LEVELS:
            raise BankError(f"unknown bank level {level!r}; valid: {', '.join(LEVELS)}")
        if index_type not in INDEX_TYPES:
            raise BankError(f"unknown index type {index_type!r}; valid: {', '.join(INDEX_TYPES)}")
        now = time.time()
        meta = BankMeta(encoder_id, dim, (int(input_size[0]), int(input_size[1])), level, patches_per_crop,
                        index_type, k=k, created=now, updated=now, nlist=nlist, nprobe=nprobe, pq_m=pq_m)
        # IVF: an empty flat index stands in until the first add() trains the real one.
        index = _new_index(dim, "flat" if index_type.startswith("ivf") else index_type)
        return cls(index, meta)

    @property
    def trained(self) -> bool:
        """Whether the index is the configured type (IVF indexes are built on the first add)."""
        return not self.meta.index_type.startswith("ivf") or faiss.try_extract_index_ivf(self.index) is not None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, source: str | None = None, crops: int = 0) -> None:
        """Append ``(M, dim)`` float32 rows (crop embeddings, or patch features for patch banks)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.meta.embedding_dim:
            raise BankError(f"vectors are {x.shape}, the bank holds (N, {self.meta.embedding_dim})")
        if not self.trained:
            self.index = _new_index(x.shape[1], self.meta.index_type, x, self.meta.nlist, self.meta.pq_m)
            ivf = faiss.extract_index_ivf(self.index)
            pq_m = int(self.index.pq.M) if isinstance(self.index, faiss.IndexIVFPQ) else 0
            self.meta = replace(self.meta, nlist=int(ivf.nlist), pq_m=pq_m)
            _set_search_params(self.index, self.meta)
        self.index.add(x)
        sources = self.meta.sources + ([source] if source and source not in self.meta.sources else [])
        self.meta = replace(self.meta, sample_count=len(self), crops=self.meta.crops + crops,
                            updated=time.time(), sources=sources)

    def scores(self, vectors: np.ndarray, k: int | None = None) -> np.ndarray:
        """Mean L2 distance of each row to its ``k`` nearest good rows, ``(M,)`` float32."""
        if len(self) == 0:
            raise BankError("the bank is empty: add good samples first (siamstream bank build)")
        k = min(k or self.meta.k, len(self))
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(x) == 0:
            return np.zeros(0, np.float32)
        sq, _ = search(self.index, x, k)
        return np.sqrt(np.maximum(sq, 0.0)).mean(axis=1).astype(np.float32)

    @property
    def cell_norm(self) -> CellNorm | None:
        """The per-cell normalisation :meth:`patch_scores` applies, or None. Built once per metadata lists
        (every frame asks for it)."""
        if not self.meta.cell_mean:
            return None
        mean, scale = self.meta.cell_mean, self.meta.cell_scale
        cached = self._cell_norm_cache
        if cached is None or cached[0] is not mean or cached[1] is not scale:  # the lists themselves, held
            cached = self._cell_norm_cache = (mean, scale, CellNorm(np.asarray(mean, np.float32),
                                                                    np.asarray(scale, np.float32)))
        return cached[2]

    def with_cell_norm(self, norm: CellNorm | None) -> None:
        """Store ``norm`` (None: none) with the bank; it must have one cell per patch of a crop."""
        if norm is not None and (self.meta.level != "patch" or norm.cells != self.meta.patches_per_crop):
            raise BankError(f"a cell normalisation of {norm.cells} cells does not fit this {self.meta.level} bank "
                            f"of {self.meta.patches_per_crop} patches per crop")
        self.meta = replace(self.meta, cell_mean=[] if norm is None else [float(v) for v in norm.mean],
                            cell_scale=[] if norm is None else [float(v) for v in norm.scale])

    def raw_patch_scores(self, features: np.ndarray, k: int | None = None) -> np.ndarray:
        """k-NN distance of every patch of every crop from ``(N, P, C)`` features, ``(N, P)`` float32."""
        n, p, c = features.shape
        if n == 0:
            return np.zeros((0, p), np.float32)
        return self.scores(features.reshape(n * p, c), k).reshape(n, p)

    def patch_scores(self, features: np.ndarray, k: int | None = None) -> np.ndarray:
        """Score of every patch of every crop from ``(N, P, C)`` features, ``(N, P)`` float32: the k-NN distance,
        normalised per cell when the bank carries a :attr:`cell_norm`."""
        raw = self.raw_patch_scores(features, k)
        norm = self.cell_norm
        if norm is None:
            return raw
        if raw.shape[1] != norm.cells:
            raise BankError(f"crops have {raw.shape[1]} patches, the bank's cell normalisation {norm.cells}; the "
                            f"encoder's input size differs from the bank's, rebuild the bank")
        return norm.apply(raw)

    def score_crops(self, features: np.ndarray, k: int | None = None) -> np.ndarray:
        """Anomaly score per crop from ``(N, P, C)`` features: the largest patch score, ``(N,)`` float32."""
        return self.patch_scores(features, k).max(axis=1) if len(features) else np.zeros(0, np.float32)

    def score_embeddings(self, emb: Embeddings, k: int | None = None) -> np.ndarray:
        return self.score_crops(crop_features(emb, self.meta.level), k)

    def with_threshold(self, threshold: float, false_alarm_rate: float, samples: int, groups: int,
                       upper95: float) -> None:
        self.meta = replace(self.meta, threshold=float(threshold), false_alarm_rate=false_alarm_rate,
                            calibration_samples=samples, calibration_groups=groups,
                            false_alarm_upper_95=upper95)

    def check_encoder(self, encoder_id: str, embedding_dim: int, patch_dim: int, where: str,
                      patches: int = 0) -> None:
        """Fail unless the bank was built by this encoder (same weights, same feature dimension) and, for a bank
        with a cell normalisation, for crops of ``patches`` patches (0: not checked)."""
        dim = patch_dim if self.meta.level == "patch" else embedding_dim
        if self.meta.encoder_id != encoder_id or self.meta.embedding_dim != dim:
            raise BankError(f"{where}: bank was built with another encoder (bank: encoder {self.meta.encoder_id[:12]}, "
                            f"{self.meta.level} features of dim {self.meta.embedding_dim}; current: encoder "
                            f"{encoder_id[:12]}, dim {dim or 'none'}); rebuild it with `siamstream bank build` "
                            f"using the current model")
        norm = self.cell_norm
        if norm is not None and patches and patches != norm.cells:
            raise BankError(f"{where}: bank normalises {norm.cells} patches per crop (input "
                            f"{self.meta.input_size[0]}x{self.meta.input_size[1]}), the encoder gives {patches}; use "
                            f"the encoder's input size the bank was built with, or rebuild the bank")

    def save(self, path: str | Path) -> None:
        """Write atomically: a temporary sibling directory renamed over ``path``."""
        path = Path(path)
        if path.exists() and not (path / "meta.json").is_file():
            raise BankError(f"{path}: exists and is not a bank; refusing to replace it, choose another --out")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        except OSError as exc:
            raise BankError(
                f"{path}: cannot write the bank here ({exc.strerror or exc}); choose a writable --out") from None
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            meta = asdict(self.meta)
            meta["input_size"] = list(self.meta.input_size)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, allow_nan=True))
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path: str | Path) -> Bank:
        path = Path(path)
        if not path.exists():
            raise BankError(f"{path}: bank not found; build one with `siamstream bank build --source DIR_OR_VIDEO "
                            f"--out {path}`")
        meta_file, index_file = path / "meta.json", path / "index.faiss"
        if not meta_file.is_file() or not index_file.is_file():
            raise BankError(f"{path}: not a bank (needs meta.json and index.faiss); rebuild it with "
                            f"`siamstream bank build`")
        try:
            meta = parse_meta(meta_file.read_bytes(), str(meta_file))
            index, dim = _read_index(index_file)
        except OSError as exc:  # e.g. a save renamed the directory between the check above and this read
            raise BankError(f"{path}: cannot read the bank ({exc.strerror or exc}); check the path and its "
                            f"permissions") from None
        if dim != meta.embedding_dim:
            raise BankError(f"{path}: index holds vectors of dimension {dim}, metadata says {meta.embedding_dim}; "
                            f"the bank is corrupt, rebuild it")
        if meta.cell_mean:
            try:
                CellNorm(np.asarray(meta.cell_mean, np.float32), np.asarray(meta.cell_scale, np.float32))
            except (ValueError, TypeError) as exc:
                raise BankError(f"{meta_file}: corrupt cell normalisation ({exc}); rebuild the bank") from None
        if index.ntotal != meta.sample_count:
            raise BankError(f"{path}: index holds {index.ntotal} vectors, metadata says {meta.sample_count}; "
                            f"the bank is corrupt, rebuild it")
        kind = "ivf" if faiss.try_extract_index_ivf(index) is not None else (
            "hnsw" if isinstance(index, faiss.IndexHNSW) else "flat")
        if kind != meta.index_type.split("-")[0]:
            raise BankError(f"{path}: metadata says a {meta.index_type} index but index.faiss holds a {kind} one; "
                            f"the bank is corrupt, rebuild it")
        return cls(index, meta)


def _read_index(index_file: Path) -> tuple[faiss.Index, int]:
    """The index in ``index_file`` and its dimension. The file is opened once: its structure is checked (the
    lengths it states against its size, before FAISS allocates anything), then FAISS reads the same open file, so a
    save that replaces the file meanwhile cannot slip another one in, and the file is never held in memory twice."""
    with index_file.open("rb") as fh:
        try:
            dim, _ = check_index_file(fh)
            fh.seek(0)
            index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))  # type: ignore[attr-defined]  # not in the stubs
        except (IndexFileError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise BankError(f"{index_file}: corrupt FAISS index ({first}); rebuild the bank") from None
    return index, dim


def _reduce_rows(features: np.ndarray, max_vectors: int, coreset_fraction: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Rows of ``(N, P, C)`` features as ``(M, C)``: a greedy k-center coreset of ``coreset_fraction`` of
    them (chunked, see :func:`chunked_greedy_coreset`), with the fraction lowered so that at most
    ``max_vectors`` are kept. Returns the rows and the coverage radius (0 when every row is kept)."""
    rows = features.reshape(-1, features.shape[-1])
    fraction = min(coreset_fraction, max_vectors / len(rows))
    if fraction >= 1.0:
        return rows, 0.0
    picks, coverage = chunked_greedy_coreset(rows, fraction, seed=int(rng.integers(1 << 31)))
    return rows[picks], coverage


def out_of_fold_patch_scores(features: np.ndarray, groups: np.ndarray, make_bank: Callable[[np.ndarray], Bank],
                             folds: int, seed: int = 0, progress: Callable[[str], None] | None = None) -> np.ndarray:
    """``(N, P)`` raw k-NN distances of each sample's patches (``features`` ``(N, P, C)``) against a bank that
    ``make_bank`` builds from the samples of the other folds; folds split by ``groups`` (a part's crops stay
    together), so no sample is scored against itself or its own part. The threshold calibration of
    :func:`build_bank` (``bank build``) and of ``eval anomaly``."""
    oof = np.empty(features.shape[:2], np.float32)
    for i, held in enumerate(group_folds(groups, folds, seed)):
        rest = np.setdiff1d(np.arange(len(features)), held)
        oof[held] = make_bank(features[rest]).raw_patch_scores(features[held])
        if progress is not None:
            progress(f"calibration fold {i + 1}/{folds}: {len(held)} good samples scored out of fold")
    return oof


def calibration_patch_scores(oof: np.ndarray, groups: np.ndarray, cell_norm: bool
                             ) -> tuple[CellNorm | None, np.ndarray]:
    """The out-of-fold patch scores a threshold is calibrated on and, with ``cell_norm``, the per-cell statistics
    they give the bank: each group's scores normalised with the statistics of the other groups
    (:func:`~pipeline.anomaly.cellnorm.leave_one_out`), as a new part will be at run time."""
    if not cell_norm:
        return None, oof
    return fit_cell_norm(oof), leave_one_out(oof, np.asarray(groups))


def build_bank(features: np.ndarray, groups: np.ndarray, encoder_id: str, input_size: tuple[int, int],
               level: str = "global", index_type: str = "flat", k: int = 1, folds: int = 5,
               false_alarm_rate: float = 0.01, max_vectors: int = 50_000, coreset_fraction: float = 1.0,
               sources: list[str] | None = None, seed: int = 0, nlist: int = 0, nprobe: int = 8,
               pq_m: int = 0, cell_norm: bool = False) -> Bank:
    """Bank of good features with a threshold calibrated on good samples only.

    Args:
        features: ``(N, P, C)`` per good crop (P = 1 for a global bank).
        groups: ``(N,)`` the part (track) or image each crop came from.

    The threshold is the ``1 - false_alarm_rate`` quantile of out-of-fold crop scores: folds split by
    group, each fold scored against a bank of the other folds, reduced exactly as the final bank is. Then
    every sample goes into the bank, reduced to a greedy k-center coreset of ``coreset_fraction`` of the
    vectors (at most ``max_vectors``). ``folds = 0`` skips the calibration (threshold ``nan``) for callers
    that calibrate on held-out good samples of their own. The fold banks use the final bank's index type, so approximate
    indexes (HNSW, IVF-PQ) are calibrated with the distances they will give at run time.

    With ``cell_norm`` (patch banks, ``folds`` >= 2) the out-of-fold patch scores also give each grid cell its
    mean and spread over good samples (:mod:`pipeline.anomaly.cellnorm`), stored with the bank, and the
    threshold is calibrated on scores normalised with the statistics of the other parts (each group's crops
    left out together, :func:`~pipeline.anomaly.cellnorm.leave_one_out`).
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, None, :]
    if len(x) == 0:
        raise BankError("no good samples: the source gave no detections to build a bank from")
    rng = np.random.default_rng(seed)
    n, p, c = x.shape
    if cell_norm and (level != "patch" or not folds or len(np.unique(np.asarray(groups))) < 3):
        raise BankError("cell normalisation needs a patch bank (level = 'patch'), calibration folds (folds >= 2) and "
                        f"good samples of at least 3 parts (got level {level!r}, folds {folds}, "
                        f"{len(np.unique(np.asarray(groups)))} parts); set cell_norm = false otherwise")
    if folds and len(np.unique(np.asarray(groups))) < 2:
        raise BankError("good samples come from only one part or image: the threshold is calibrated by scoring "
                        "good parts against other good parts, so give at least 2 (many more for a reliable "
                        "threshold)")
    def fold_bank(rows: np.ndarray) -> Bank:  # reduced exactly as the final bank is
        calib = Bank.create(encoder_id, c, input_size, index_type, k, level, p, nlist, nprobe, pq_m)
        calib.add(_reduce_rows(rows, max_vectors, coreset_fraction, rng)[0])
        return calib

    norm, crop_oof = None, np.zeros(0, np.float32)
    if folds:
        norm, oof = calibration_patch_scores(out_of_fold_patch_scores(x, groups, fold_bank, folds, seed), groups,
                                             cell_norm)
        crop_oof = oof.max(axis=1)
    threshold = threshold_for_false_alarm_rate(crop_oof, false_alarm_rate) if folds else float("nan")
    n_groups = len(np.unique(np.asarray(groups)))
    bank = Bank.create(encoder_id, c, input_size, index_type, k, level, p, nlist, nprobe, pq_m)
    bank.meta = replace(bank.meta, sources=list(sources or []))
    rows, coverage = _reduce_rows(x, max_vectors, coreset_fraction, rng)
    bank.meta = replace(bank.meta, coreset_fraction=len(rows) / (n * p), coreset_coverage=coverage)
    bank.add(rows, crops=n)
    bank.with_cell_norm(norm)
    if not folds:  # the caller calibrates (e.g. on a validation split)
        return bank
    # Crops of one part are not independent: the bound counts parts, the conservative sample size.
    bank.with_threshold(threshold, false_alarm_rate, n, n_groups, false_alarm_upper_bound(n_groups))
    return bank


@contextlib.contextmanager
def bank_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the bank at ``path`` (a ``.NAME.lock`` file beside it) while reading,
    changing and writing it back, so two `bank add` runs on one bank do not lose each other's samples."""
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    # Nothing to protect: loading it will say what is wrong. (A bank being saved is briefly absent while its new
    # folder is renamed in: its lock file, made by whoever is saving it, says to wait.)
    if not path.is_dir() and not lock.exists():
        yield
        return
    try:
        fh = open(lock, "a")  # noqa: SIM115 - held for the duration of the with-block
    except OSError as exc:
        raise BankError(f"{lock}: cannot create the bank's lock file ({exc.strerror or exc}); check that "
                        f"{path.parent} is writable") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_samples(bank: Bank, features: np.ndarray, source: str, coreset_fraction: float | None = None,
                   max_new_vectors: int = 50_000, seed: int = 0) -> int:
    """Add good ``(N, P, C)`` features to ``bank`` in place (``siamstream bank add``); returns vectors added.

    The new vectors are reduced like the bank's own (a greedy k-center coreset of the same fraction, unless
    ``coreset_fraction`` is given) and the stated coverage becomes the larger of the two. The threshold is
    kept: good samples added to the bank can only lower good parts' scores, so the calibrated false-alarm
    rate stays an upper bound (rebuild the bank to recalibrate it). A cell normalisation is kept for the same
    reason."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, None, :]
    if len(x) == 0:
        raise BankError(f"{source}: no good samples found to add")
    if x.shape[-1] != bank.meta.embedding_dim:
        raise BankError(f"{source}: features of dimension {x.shape[-1]}, the bank holds {bank.meta.embedding_dim}; "
                        f"use the encoder the bank was built with")
    fraction = bank.meta.coreset_fraction if coreset_fraction is None else coreset_fraction
    rows, coverage = _reduce_rows(x, max_new_vectors, fraction, np.random.default_rng(seed))
    bank.add(rows, source=source, crops=len(x))
    bank.meta = replace(bank.meta, coreset_coverage=max(bank.meta.coreset_coverage, coverage))
    return len(rows)
