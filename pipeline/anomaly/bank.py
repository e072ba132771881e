"""The bank of known-good embeddings: a FAISS index plus the metadata that makes it safe to reuse.

Stored as a directory: ``index.faiss`` and ``meta.json``, written to a temporary sibling and renamed,
so a reader never sees half a bank. Embeddings are L2-normalised; scores are L2 distances in [0, 2].
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from pipeline.anomaly.calibrate import false_alarm_upper_bound, split_by_group, threshold_for_false_alarm_rate

BANK_FORMAT = 1
INDEX_TYPES = ("flat", "hnsw")


class BankError(ValueError):
    """A bank is missing, corrupt, empty or made for another encoder. ``str()`` says what and how to fix."""


@dataclass(frozen=True)
class BankMeta:
    encoder_id: str
    embedding_dim: int
    input_size: tuple[int, int]
    index_type: str = "flat"
    metric: str = "l2"
    normalized: bool = True
    k: int = 1
    threshold: float = float("nan")
    false_alarm_rate: float = 0.01
    calibration_samples: int = 0
    calibration_groups: int = 0
    false_alarm_upper_95: float = 1.0
    sample_count: int = 0
    sources: list[str] = field(default_factory=list)
    created: float = 0.0
    updated: float = 0.0
    format: int = BANK_FORMAT


def _new_index(dim: int, index_type: str) -> faiss.Index:
    if index_type == "flat":
        return faiss.IndexFlatL2(dim)
    if index_type == "hnsw":
        return faiss.IndexHNSWFlat(dim, 32)
    raise BankError(f"unknown index type {index_type!r}; valid: {', '.join(INDEX_TYPES)}")


class Bank:
    """FAISS index of good embeddings + metadata. Use :meth:`create`, :meth:`load`, or :func:`build_bank`."""

    def __init__(self, index: faiss.Index, meta: BankMeta) -> None:
        if index.d != meta.embedding_dim:
            raise BankError(f"index dimension {index.d} != metadata embedding_dim {meta.embedding_dim}")
        self.index = index
        self.meta = meta

    @classmethod
    def create(cls, encoder_id: str, embedding_dim: int, input_size: tuple[int, int],
               index_type: str = "flat", k: int = 1) -> Bank:
        now = time.time()
        meta = BankMeta(encoder_id, embedding_dim, tuple(input_size), index_type, k=k,  # type: ignore[arg-type]
                        created=now, updated=now)
        return cls(_new_index(embedding_dim, index_type), meta)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, source: str | None = None) -> None:
        """Append ``(N, D)`` float32 embeddings."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.meta.embedding_dim:
            raise BankError(f"vectors are {x.shape}, the bank holds (N, {self.meta.embedding_dim})")
        self.index.add(x)
        sources = self.meta.sources + ([source] if source and source not in self.meta.sources else [])
        self.meta = replace(self.meta, sample_count=len(self), updated=time.time(), sources=sources)

    def scores(self, vectors: np.ndarray, k: int | None = None) -> np.ndarray:
        """Mean L2 distance to the ``k`` nearest good samples, ``(N,)`` float32."""
        if len(self) == 0:
            raise BankError("the bank is empty: add good samples first (siamstream bank build / bank add)")
        k = min(k or self.meta.k, len(self))
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(x) == 0:
            return np.zeros(0, np.float32)
        sq, _ = self.index.search(x, k)
        return np.sqrt(np.maximum(sq, 0.0)).mean(axis=1).astype(np.float32)

    def with_threshold(self, threshold: float, false_alarm_rate: float, samples: int, groups: int,
                       upper95: float) -> None:
        self.meta = replace(self.meta, threshold=float(threshold), false_alarm_rate=false_alarm_rate,
                            calibration_samples=samples, calibration_groups=groups,
                            false_alarm_upper_95=upper95)

    def check_encoder(self, encoder_id: str, embedding_dim: int, where: str) -> None:
        if self.meta.embedding_dim != embedding_dim or self.meta.encoder_id != encoder_id:
            raise BankError(f"{where}: bank was built with another encoder (bank encoder {self.meta.encoder_id[:12]}, "
                            f"D={self.meta.embedding_dim}; current encoder {encoder_id[:12]}, D={embedding_dim}); "
                            f"rebuild it with `siamstream bank build` using the current model")

    def save(self, path: str | Path) -> None:
        """Write atomically: a temporary sibling directory renamed over ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
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
            raw = json.loads(meta_file.read_text())
            raw["input_size"] = tuple(raw["input_size"])
            meta = BankMeta(**raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise BankError(f"{meta_file}: corrupt bank metadata ({exc}); rebuild the bank") from None
        if meta.format != BANK_FORMAT:
            raise BankError(f"{path}: bank format {meta.format}, this version reads {BANK_FORMAT}; rebuild it")
        try:
            index = faiss.read_index(str(index_file))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise BankError(f"{index_file}: corrupt FAISS index ({first}); rebuild the bank") from None
        if index.ntotal != meta.sample_count:
            raise BankError(f"{path}: index holds {index.ntotal} vectors, metadata says {meta.sample_count}; "
                            f"the bank is corrupt, rebuild it")
        if index.ntotal == 0:
            raise BankError(f"{path}: the bank is empty; add good samples with `siamstream bank build`")
        return cls(index, meta)


def build_bank(vectors: np.ndarray, groups: np.ndarray, encoder_id: str, input_size: tuple[int, int],
               index_type: str = "flat", k: int = 1, holdout_fraction: float = 0.25,
               false_alarm_rate: float = 0.01, sources: list[str] | None = None, seed: int = 0) -> Bank:
    """Bank of good embeddings with a threshold calibrated on held-out good groups only.

    The groups (parts or images) held out are scored against a bank of the others; the threshold is the
    ``1 - false_alarm_rate`` quantile of their scores. Then every sample is added to the bank.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) == 0:
        raise BankError("no good samples: the source gave no detections to build a bank from")
    bank_idx, hold_idx = split_by_group(groups, holdout_fraction, seed)
    calib = Bank.create(encoder_id, x.shape[1], input_size, "flat", k)
    calib.add(x[bank_idx])
    held_scores = calib.scores(x[hold_idx], k)
    threshold = threshold_for_false_alarm_rate(held_scores, false_alarm_rate)
    n_groups = len(np.unique(np.asarray(groups)[hold_idx]))
    bank = Bank.create(encoder_id, x.shape[1], input_size, index_type, k)
    for s in sources or []:
        bank.meta = replace(bank.meta, sources=[*bank.meta.sources, s])
    bank.add(x)
    bank.with_threshold(threshold, false_alarm_rate, len(hold_idx), n_groups, false_alarm_upper_bound(n_groups))
    return bank
