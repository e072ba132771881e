"""Person re-identification data: the standard layouts, merged, and split by identity for validation.

Three layouts are read, as users have them:

- **Market-1501**: ``PPPP_cCsS_FFFFFF_BB.jpg`` (person, camera, sequence, frame, box) in a flat folder, or in its
  ``bounding_box_train/`` when given the data set's root. Identity ``-1`` (junk boxes) and ``0000``
  (distractors) are skipped: neither is a person the model can learn.
- **CUHK03** (``PPPP_KK.jpg``): person and image slot; slots ``00``-``04`` are the first camera of the pair,
  ``05``-``09`` the second (``cuhk03_slots_per_camera``).
- **Identity folders**: ``ROOT/<identity>/<image>``; the camera is read from the file name where it carries one
  (``..._c3...`` or ``cam3``), else every image is camera 0.

Each identity is named ``<source>/<id>``: several sources merge without clashes (Market's ``0002`` and CUHK03's
``0002`` are different people). Images travel as paths until :func:`load_reid_image` reads one as uint8
``(H, W, 3)`` RGB at the model's ``(height, width)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from encoders.data import IMAGE_EXTS, list_images

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.[A-Za-z]+$")
CUHK03_NAME = re.compile(r"^(\d+)_(\d+)\.[A-Za-z]+$")
CAMERA_IN_NAME = re.compile(r"(?:^|[_\-.])c(?:am)?(\d+)", re.IGNORECASE)
LAYOUTS: tuple[str, ...] = ("auto", "market", "cuhk03", "folders")
# CUHK03: image slots 0-4 were taken by the pair's first camera, 5-9 by its second.
CUHK03_SLOTS_PER_CAMERA = 5


class ReidDataError(ValueError):
    """Re-identification data that cannot be used; ``str()`` names the path, the problem and the fix."""


@dataclass(frozen=True)
class ReidSet:
    """Images with identities and cameras.

    Attributes:
        paths: ``N`` image files.
        identities: ``N`` identity names, ``"<source>/<id>"``.
        cameras: ``(N,)`` int64 camera per image, ``"<source>"``-local numbers made unique across sources.
        sources: the source names, in order.
    """

    paths: tuple[Path, ...]
    identities: tuple[str, ...]
    cameras: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.identities) == len(self.cameras)):
            raise ValueError(f"{len(self.paths)} paths, {len(self.identities)} identities and {len(self.cameras)} "
                             f"cameras: one of each per image")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def identity_names(self) -> list[str]:
        """The distinct identities, sorted."""
        return sorted(set(self.identities))

    def labels(self) -> tuple[np.ndarray, list[str]]:
        """``(N,)`` int64 labels indexing the sorted identity names, and those names."""
        names = self.identity_names
        index = {n: i for i, n in enumerate(names)}
        return np.asarray([index[i] for i in self.identities], np.int64), names

    def subset(self, keep: np.ndarray) -> ReidSet:
        """The images where the boolean ``(N,)`` mask ``keep`` is set."""
        idx = np.flatnonzero(np.asarray(keep, bool))
        return ReidSet(tuple(self.paths[i] for i in idx), tuple(self.identities[i] for i in idx),
                       np.asarray(self.cameras)[idx])


def _named_layout(folder: Path) -> str | None:
    """``"market"`` or ``"cuhk03"`` when the folder's image names all follow that naming; else ``None``."""
    names = [p.name for p in list_images(folder, IMAGE_EXTS, recursive=False)[:200]]
    if names and all(MARKET_NAME.match(n) for n in names):
        return "market"
    if names and all(CUHK03_NAME.match(n) for n in names):
        return "cuhk03"
    return None


def _market_root(folder: Path) -> Path:
    """Where a data set's crops are: a Market-1501 root holds ``bounding_box_train/``; a data set as distributed
    often holds its crops in one subfolder (CUHK03's ``images/``): when the folder has no image of its own and one
    subfolder whose names follow the Market-1501 or CUHK03 naming, that subfolder; otherwise the folder itself."""
    sub = folder / "bounding_box_train"
    if sub.is_dir():
        return sub
    if folder.is_dir() and not list_images(folder, IMAGE_EXTS, recursive=False):
        subs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if len(subs) == 1 and _named_layout(subs[0]) is not None:
            return subs[0]
    return folder


def detect_layout(folder: Path) -> str:
    """``"market"``, ``"cuhk03"`` or ``"folders"``, from the folder's contents."""
    folder = _market_root(folder)
    files = list_images(folder, IMAGE_EXTS, recursive=False)
    if not files:
        if any(p.is_dir() for p in folder.iterdir()):
            return "folders"
        raise ReidDataError(f"{folder}: no images and no identity folders; pass a Market-1501 folder "
                            f"(PPPP_cCsS_FFFFFF_BB.jpg), a CUHK03 folder (PPPP_KK.jpg) or a folder of identity folders")
    kind = _named_layout(folder)
    if kind is not None:
        return kind
    bad = next(p.name for p in files[:200] if not MARKET_NAME.match(p.name))
    raise ReidDataError(f"{folder}: image names such as {bad!r} follow neither Market-1501 (PPPP_cCsS_FFFFFF_BB.jpg) "
                        f"nor CUHK03 (PPPP_KK.jpg); put each identity's images in a folder of its own instead")


def read_reid_folder(folder: str | Path, source: str | None = None, layout: str = "auto") -> ReidSet:
    """One re-identification data set from ``folder`` (see the module docstring for the layouts).

    Args:
        folder: the data folder.
        source: the prefix of its identities (default: the folder's name).
        layout: one of :data:`LAYOUTS`; ``"auto"`` detects it.

    Raises:
        ReidDataError: no such folder, unreadable layout, or no identity with two images.
    """
    folder = Path(folder)
    if layout not in LAYOUTS:
        raise ReidDataError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not folder.is_dir():
        raise ReidDataError(f"{folder}: not a folder; pass a folder of re-identification crops")
    kind = detect_layout(folder) if layout == "auto" else layout
    root = _market_root(folder) if kind != "folders" else folder
    name = source or (folder.name if folder.name != "bounding_box_train" else folder.parent.name)
    paths: list[Path] = []
    ids: list[str] = []
    cams: list[int] = []
    if kind == "folders":
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in list_images(d, IMAGE_EXTS, recursive=True):
                m = CAMERA_IN_NAME.search(f.stem)
                paths.append(f)
                ids.append(f"{name}/{d.name}")
                cams.append(int(m.group(1)) if m else 0)
    else:
        pattern = MARKET_NAME if kind == "market" else CUHK03_NAME
        for f in list_images(root, IMAGE_EXTS, recursive=False):
            m = pattern.match(f.name)
            if m is None:
                raise ReidDataError(f"{f}: name does not follow the {kind} layout of the rest of {root}")
            pid = int(m.group(1))
            if kind == "market":
                if pid <= 0:  # -1 junk, 0 distractor
                    continue
                cam = int(m.group(2))
            else:
                cam = int(m.group(2)) // CUHK03_SLOTS_PER_CAMERA
            paths.append(f)
            ids.append(f"{name}/{m.group(1)}")
            cams.append(cam)
    result = ReidSet(tuple(paths), tuple(ids), np.asarray(cams, np.int64))
    counts = _counts(result.identities)
    if not any(c >= 2 for c in counts.values()):
        raise ReidDataError(f"{folder}: {len(result)} images of {len(counts)} identities and none has two images; "
                            f"re-identification training needs at least two images of a person")
    return result


def _counts(identities: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in identities:
        out[i] = out.get(i, 0) + 1
    return out


def merge_reid(sets: Sequence[ReidSet]) -> ReidSet:
    """One set from several; identities keep their source prefix, cameras are renumbered per source so that two
    sources' camera 1 stay different cameras. Raises if two sets share an identity name (the same folder twice)."""
    if not sets:
        raise ReidDataError("no re-identification data given")
    seen: set[str] = set()
    paths: list[Path] = []
    ids: list[str] = []
    cams: list[np.ndarray] = []
    offset = 0
    for s in sets:
        names = set(s.identities)
        clash = names & seen
        if clash:
            raise ReidDataError(f"identity {sorted(clash)[0]!r} is in two of the data sets; give each --data once")
        seen |= names
        paths.extend(s.paths)
        ids.extend(s.identities)
        cams.append(np.asarray(s.cameras, np.int64) + offset)
        offset += int(np.max(s.cameras)) + 1 if len(s) else 0
    return ReidSet(tuple(paths), tuple(ids), np.concatenate(cams) if cams else np.zeros(0, np.int64))


@dataclass(frozen=True)
class ReidSplit:
    """Training images and held-out validation identities, split by identity (never by image).

    ``query`` holds one image per (validation identity, camera); ``gallery`` the validation identities' other
    images. A query is scored against gallery images of other cameras only (the Market-1501 protocol), so
    every validation identity is seen by at least two cameras.
    """

    train: ReidSet
    query: ReidSet
    gallery: ReidSet

    @property
    def validation_identities(self) -> list[str]:
        return self.query.identity_names


def split_by_identity(data: ReidSet, n_identities: int, seed: int = 0, source: str | None = None) -> ReidSplit:
    """Hold out ``n_identities`` identities (seeded) seen by two or more cameras, from ``source`` (an identity
    prefix; default the first source). ``n_identities = 0`` holds out nothing (empty query and gallery)."""
    if n_identities < 0:
        raise ReidDataError(f"validation identities must be >= 0, got {n_identities}")
    cams_of: dict[str, set[int]] = {}
    for ident, cam in zip(data.identities, data.cameras, strict=True):
        cams_of.setdefault(ident, set()).add(int(cam))
    prefix = (source or data.identities[0].split("/", 1)[0]) + "/"
    eligible = sorted(i for i, c in cams_of.items() if i.startswith(prefix) and len(c) >= 2)
    empty = data.subset(np.zeros(len(data), bool))
    if n_identities == 0:
        return ReidSplit(data, empty, empty)
    if len(eligible) < n_identities:
        raise ReidDataError(f"{len(eligible)} identities of {prefix[:-1]} are seen by two cameras; cannot hold out "
                            f"{n_identities} for validation; lower [reid] val_identities")
    rng = np.random.default_rng(seed)
    held = {eligible[i] for i in rng.choice(len(eligible), size=n_identities, replace=False)}
    in_val = np.asarray([i in held for i in data.identities], bool)
    val = data.subset(in_val)
    query = np.zeros(len(val), bool)
    for ident in sorted(held):
        for cam in sorted(cams_of[ident]):
            idx = np.flatnonzero([(i == ident and int(c) == cam) for i, c in zip(val.identities, val.cameras,
                                                                                   strict=True)])
            query[idx[int(rng.integers(len(idx)))]] = True
    return ReidSplit(data.subset(~in_val), val.subset(query), val.subset(~query))


def load_reid_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 ``(height, width, 3)`` RGB, resized to ``size`` = ``(height, width)`` when needed."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ReidDataError(f"{path}: cannot read the image (corrupt or not an image); remove it from the data")
    h, w = size
    if img.shape[:2] != (h, w):
        interp = cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR
        img = cv2.resize(img, (w, h), interpolation=interp)
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def write_market_layout(split: ReidSplit, out: Path) -> Path:
    """The validation identities as a Market-1501 evaluation folder: ``out/query/`` and ``out/bounding_box_test/``
    of links to the images, named ``PPPP_cCsS_NNNNNN_00`` with identities numbered from 1 in sorted order (``S``:
    the recording sequence of a Market-1501 name, else 1), so ``siamstream eval reid --data out`` scores exactly
    this split. Returns ``out``."""
    names = split.validation_identities
    number = {n: i + 1 for i, n in enumerate(names)}
    for sub, part in (("query", split.query), ("bounding_box_test", split.gallery)):
        folder = out / sub
        folder.mkdir(parents=True, exist_ok=True)
        for j, (path, ident, cam) in enumerate(zip(part.paths, part.identities, part.cameras, strict=True)):
            market = MARKET_NAME.match(path.name)
            seq = int(market.group(3)) if market else 1
            link = folder / f"{number[ident]:04d}_c{int(cam)}s{seq}_{j:06d}_00{path.suffix.lower()}"
            if link.is_symlink() or link.exists():
                link.unlink()
            try:
                link.symlink_to(path.resolve())
            except OSError:  # a file system without links: a copy
                link.write_bytes(path.read_bytes())
    return out


# --------------------------------------------------------------------------------------------------------------
# Sampling and augmentation for training


class CrossCameraPKSampler:
    """Batches of ``p`` identities x ``k`` images, each identity's images taken round-robin over its cameras, so
    that a batch's positives come from as many cameras as the identity has (re-identification is across
    cameras). Identities are drawn without replacement within a batch; an identity with fewer than ``k`` images
    repeats them. Every draw comes from the generator seeded with ``seed``.
    """

    def __init__(self, labels: np.ndarray, cameras: np.ndarray, p: int, k: int, batches: int, seed: int = 0) -> None:
        labels = np.asarray(labels, np.int64)
        cameras = np.asarray(cameras, np.int64)
        if labels.shape != cameras.shape or labels.ndim != 1 or not len(labels):
            raise ValueError(f"labels {labels.shape} and cameras {cameras.shape} must be the same non-empty 1-D shape")
        self.by_identity = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.cameras = cameras
        if not 2 <= p <= len(self.by_identity):
            raise ValueError(f"p must be in [2, {len(self.by_identity)}] (the number of identities), got {p}")
        if k < 2:
            raise ValueError(f"k must be >= 2 (a positive needs a second image), got {k}")
        if batches < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        self.p, self.k, self.batches = p, k, batches
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.batches

    def _take(self, idx: np.ndarray) -> list[int]:
        shuffled = idx[self.rng.permutation(len(idx))]
        cams = self.cameras[shuffled]
        # rank of each image within its camera, then cameras in a random order: c1, c2, c1, c2, ...
        within = np.zeros(len(shuffled), np.int64)
        for cam in np.unique(cams):
            where = np.flatnonzero(cams == cam)
            within[where] = np.arange(len(where))
        cam_order = {int(c): i for i, c in enumerate(self.rng.permutation(np.unique(cams)))}
        order = np.lexsort((np.array([cam_order[int(c)] for c in cams]), within))
        picked = shuffled[order]
        return [int(picked[i % len(picked)]) for i in range(self.k)]

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.batches):
            chosen = self.rng.choice(len(self.by_identity), size=self.p, replace=False)
            yield [i for c in chosen for i in self._take(self.by_identity[c])]


@dataclass(frozen=True)
class ReidAugment:
    """The strong baseline's augmentation (Luo et al. 2019) for a batch of uint8 ``(N, H, W, 3)`` person crops:
    horizontal flip (p 0.5), zero padding by ``pad`` pixels and a random crop back to size, brightness and
    contrast jitter (factors in ``1 +- jitter``), and random erasing (Zhong et al. 2020: with probability
    ``erase_p`` a rectangle of 2-40% of the area, aspect 0.3-3.3, filled with noise). Returns a new array."""

    pad: int = 10
    jitter: float = 0.2
    erase_p: float = 0.5

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(f"batch must be uint8 (N, H, W, 3), got {batch.dtype} {batch.shape}")
        n, h, w, _ = batch.shape
        padded = np.pad(batch, ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        out = np.empty_like(batch)
        for i in range(n):
            y0, x0 = rng.integers(0, 2 * self.pad + 1, size=2)
            img = padded[i, y0:y0 + h, x0:x0 + w]
            out[i] = img[:, ::-1] if rng.random() < 0.5 else img
        if self.jitter > 0:
            f = out.astype(np.float32)
            bright = rng.uniform(1 - self.jitter, 1 + self.jitter, size=(n, 1, 1, 1)).astype(np.float32)
            contrast = rng.uniform(1 - self.jitter, 1 + self.jitter, size=(n, 1, 1, 1)).astype(np.float32)
            mean = f.mean(axis=(1, 2, 3), keepdims=True)
            f = (f - mean) * contrast + mean * bright
            out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
        for i in range(n):
            if rng.random() >= self.erase_p:
                continue
            for _ in range(10):
                area = rng.uniform(0.02, 0.4) * h * w
                aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
                eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if 0 < eh < h and 0 < ew < w:
                    y0, x0 = int(rng.integers(0, h - eh)), int(rng.integers(0, w - ew))
                    out[i, y0:y0 + eh, x0:x0 + ew] = rng.integers(0, 256, size=(eh, ew, 3), dtype=np.uint8)
                    break
        return out
