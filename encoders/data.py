"""Training data for the Siamese encoders: class folders, pair / P x K / one-class triplet sampling, augmentation.

Images travel as ``uint8`` arrays ``(H, W, C)`` with ``C`` = 1 (grey) or 3 (RGB, not OpenCV's BGR) until
:func:`to_tensor` turns a batch into the encoder's input contract: ``(N, 3, H, W)`` float32 in [0, 1].
Every random choice draws from a ``numpy.random.Generator`` passed in or seeded at construction, so an epoch
is reproducible from its seed.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff")
DEFECT_KINDS: tuple[str, ...] = ("cutpaste", "scratch", "hole", "stain")
BORDER_MODES: dict[str, int] = {
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}
# small_defect: the window a defect is painted in, as a fraction of the image's sides (defects well under 1% of
# the image, as real surface defects are).
SMALL_DEFECT_WINDOW = 0.12
# A synthetic defect must move the pixels under its mask by at least this much on average (grey levels).
MIN_DEFECT_CONTRAST = 10.0


def _check_image(img: np.ndarray, name: str = "image") -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"{name} must be uint8 (H, W, C) with C in (1, 3); got {img.dtype} {img.shape}")


class DataError(ValueError):
    """Training data that cannot be read (an image, an archive); the message names the file and the fix."""


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_image(path: Path, grayscale: bool, size: int) -> np.ndarray:
    """Read one image as uint8 ``(size, size, C)``: C = 1 when ``grayscale`` else 3 (RGB)."""
    flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise DataError(f"{path}: cannot read the image; fix or remove the file")
    if img.shape[0] != size or img.shape[1] != size:
        shrinking = img.shape[0] > size or img.shape[1] > size
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if grayscale:
        return np.ascontiguousarray(img.reshape(size, size, 1))
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def list_images(folder: Path, exts: Sequence[str] = IMAGE_EXTS, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (suffix in ``exts``, case-insensitive), sorted; hidden entries skipped."""
    wanted = {e.lower() for e in exts}
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if p.is_file() and p.suffix.lower() in wanted
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def load_folder_images(folder: Path, grayscale: bool, size: int, exts: Sequence[str] = IMAGE_EXTS) -> list[np.ndarray]:
    """Every image directly inside ``folder`` (a flat folder of one class, e.g. good parts), loaded and resized."""
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist")
    paths = list_images(folder, exts, recursive=False)
    if not paths:
        raise ValueError(f"no images with suffix in {tuple(exts)} in {folder}")
    return [load_image(p, grayscale, size) for p in paths]


def from_zip(zip_path: Path, extract_to: Path) -> Path:
    """Extract ``zip_path`` into ``extract_to`` once and return the data folder.

    A marker file records a finished extraction, so later calls return at once. The folder returned is the
    archive's single top-level directory when it has one (``images_background_small1/`` in the Omniglot zips),
    else ``extract_to`` itself. Members that would land outside ``extract_to`` are rejected.
    """
    zip_path = Path(zip_path)
    extract_to = Path(extract_to)
    if not zip_path.is_file():
        raise DataError("zip archive not found; pass an existing .zip or a folder")
    if not zipfile.is_zipfile(zip_path):
        raise DataError("not a zip archive (damaged or another format); pass a .zip or a folder")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        tops = {n.split("/", 1)[0] for n in names if n and not n.startswith("__MACOSX")}
        single_dir = len(tops) == 1 and any(n.startswith(next(iter(tops)) + "/") for n in names)
        marker = extract_to / f".{zip_path.name}.extracted"
        if not marker.exists():
            extract_to.mkdir(parents=True, exist_ok=True)
            base = extract_to.resolve()
            for name in names:
                target = (base / name).resolve()
                if target != base and base not in target.parents:
                    raise ValueError(f"zip member {name!r} of {zip_path} would extract outside {extract_to}")
            zf.extractall(extract_to)
            marker.touch()
    return extract_to / next(iter(tops)) if single_dir else extract_to


class ImageFolderClasses:
    """A folder of classes: ``root/<class>/.../image``; the class is the path of the first ``depth`` levels.

    ``depth=1``: ``root/s1/1.pgm`` (AT&T faces), class ``"s1"``. ``depth=2``: Omniglot's
    ``root/Balinese/character01/0108_01.png``, class ``"Balinese/character01"``. Images anywhere below a class
    directory belong to it. Attributes: ``paths`` (N), ``labels`` int64 (N,) indexing ``classes`` (sorted names).
    :meth:`load` returns uint8 ``(size, size, C)``, C = 1 when ``grayscale`` else 3 (RGB).
    """

    def __init__(self, root: Path, grayscale: bool, size: int, exts: Sequence[str] = IMAGE_EXTS,
                 depth: int = 1) -> None:
        root = Path(root)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not root.is_dir():
            raise ValueError(f"class folder root {root} does not exist or is not a directory")
        class_dirs = sorted(
            d for d in root.glob("/".join(["*"] * depth))
            if d.is_dir() and not any(part.startswith((".", "__")) for part in d.relative_to(root).parts)
        )
        if not class_dirs:
            raise ValueError(f"no class directories {depth} level(s) below {root}")
        self.root = root
        self.grayscale = grayscale
        self.size = size
        self.depth = depth
        self.classes: list[str] = []
        self.paths: list[Path] = []
        labels: list[int] = []
        for d in class_dirs:
            name = d.relative_to(root).as_posix()
            images = list_images(d, exts)
            if len(images) < 2:
                raise ValueError(f"class {name!r} in {root} has {len(images)} image(s); every class needs at least 2")
            labels.extend([len(self.classes)] * len(images))
            self.classes.append(name)
            self.paths.extend(images)
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``(size, size, C)``."""
        return load_image(self.paths[i], self.grayscale, self.size)

    def load_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Images ``indices`` stacked: uint8 ``(len(indices), size, size, C)``."""
        c = 1 if self.grayscale else 3
        if len(indices) == 0:
            return np.zeros((0, self.size, self.size, c), dtype=np.uint8)
        return np.stack([self.load(int(i)) for i in indices])


def merge_class_folders(datasets: Sequence[ImageFolderClasses]) -> ImageFolderClasses:
    """One data set from several with the same ``grayscale``, ``size`` and ``depth``.

    Classes are matched by name: a class present in two of them (Omniglot's two small background sets share
    the Greek and Latin alphabets) is one class, and an image whose path below the class folder is already
    there is taken once, so overlapping sets add no duplicates.
    """
    if not datasets:
        raise ValueError("no data sets to merge")
    first = datasets[0]
    for d in datasets[1:]:
        if (d.grayscale, d.size, d.depth) != (first.grayscale, first.size, first.depth):
            raise ValueError(f"cannot merge {d.root} with {first.root}: grayscale/size/depth differ")
    members: dict[str, dict[str, Path]] = {}
    for d in datasets:
        for path, label in zip(d.paths, d.labels, strict=True):
            name = d.classes[int(label)]
            key = path.relative_to(d.root / name).as_posix()
            members.setdefault(name, {}).setdefault(key, path)
    merged = object.__new__(ImageFolderClasses)
    merged.root = first.root
    merged.grayscale, merged.size, merged.depth = first.grayscale, first.size, first.depth
    merged.classes = sorted(members)
    merged.paths = []
    labels: list[int] = []
    for i, name in enumerate(merged.classes):
        files = members[name]
        merged.paths.extend(files[k] for k in sorted(files))
        labels.extend([i] * len(files))
    merged.labels = np.asarray(labels, dtype=np.int64)
    return merged


# --------------------------------------------------------------------------------------------------------------
# Index samplers


def _indices_by_class(labels: np.ndarray) -> list[np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-D integer array; got {labels.dtype} {labels.shape}")
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


class BalancedPairSampler:
    """Yields ``(i, j, same)`` index pairs: exactly half same-class, half different-class, in random order.

    Same-class pairs pick a class uniformly among those with >= 2 images, then two distinct images of it;
    different-class pairs pick two distinct classes uniformly, then one image of each. Each ``__iter__`` is a
    new epoch drawn from the sampler's generator; :meth:`reset` rewinds it to ``seed``.
    """

    def __init__(self, labels: np.ndarray, pairs_per_epoch: int, seed: int = 0) -> None:
        self.by_class = _indices_by_class(labels)
        if len(self.by_class) < 2:
            raise ValueError(f"pairs need at least 2 classes; got {len(self.by_class)}")
        self.pairable = [c for c, idx in enumerate(self.by_class) if idx.size >= 2]
        if not self.pairable:
            raise ValueError("same-class pairs need a class with at least 2 images; every class has 1")
        if pairs_per_epoch < 2 or pairs_per_epoch % 2:
            raise ValueError(f"pairs_per_epoch must be a positive even number, got {pairs_per_epoch}")
        self.pairs_per_epoch = pairs_per_epoch
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return self.pairs_per_epoch

    def __iter__(self) -> Iterator[tuple[int, int, bool]]:
        rng = self._rng
        flags = np.zeros(self.pairs_per_epoch, dtype=bool)
        flags[: self.pairs_per_epoch // 2] = True
        rng.shuffle(flags)
        for same in flags:
            if same:
                idx = self.by_class[self.pairable[rng.integers(len(self.pairable))]]
                a, b = rng.choice(idx.size, size=2, replace=False)
                yield int(idx[a]), int(idx[b]), True
            else:
                ca, cb = rng.choice(len(self.by_class), size=2, replace=False)
                ia, ib = self.by_class[ca], self.by_class[cb]
                yield int(ia[rng.integers(ia.size)]), int(ib[rng.integers(ib.size)]), False


class PKBatchSampler:
    """Batches of ``p`` distinct classes x ``k`` images each (for batch-hard triplet mining).

    Classes are drawn uniformly without replacement per batch; images within a class without replacement,
    or with replacement only when the class has fewer than ``k`` images. A batch lists its indices class by
    class. :meth:`reset` rewinds the generator to ``seed``.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, batches_per_epoch: int, seed: int = 0) -> None:
        self.by_class = _indices_by_class(labels)
        if not 1 <= p <= len(self.by_class):
            raise ValueError(f"p must be in [1, {len(self.by_class)}] (the number of classes), got {p}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.p, self.k, self.batches_per_epoch, self.seed = p, k, batches_per_epoch, seed
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng
        for _ in range(self.batches_per_epoch):
            batch: list[int] = []
            for c in rng.choice(len(self.by_class), size=self.p, replace=False):
                idx = self.by_class[c]
                batch.extend(int(i) for i in rng.choice(idx, size=self.k, replace=idx.size < self.k))
            yield batch


# --------------------------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges for :class:`Augment`. Zero ranges, ``scale=(1, 1)`` and zero probabilities switch a step off.

    ``rotation_deg`` / ``shear_deg``: uniform in +-value (shear along x). ``scale``: uniform in [lo, hi].
    ``translate``: fraction of width / height, uniform in +-value. ``brightness``, ``contrast``, ``saturation``:
    factor uniform in [1 - v, 1 + v]. ``hue``: shift as a fraction of the hue circle, uniform in +-value (RGB
    only, as is saturation). ``blur_p``: probability of a Gaussian blur with sigma uniform in ``blur_sigma``
    (pixels). ``hflip``: mirror with probability 0.5 (off: it is not valid for characters). ``border``: how the
    affine warp fills the outside, one of ``BORDER_MODES``; ``fill`` is the grey level for ``"constant"``.
    """

    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    shear_deg: float = 5.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    hflip: bool = False
    border: str = "reflect"
    fill: int = 0

    def __post_init__(self) -> None:
        if self.border not in BORDER_MODES:
            raise ValueError(f"border must be one of {sorted(BORDER_MODES)}, got {self.border!r}")
        checks = [
            ("rotation_deg", self.rotation_deg >= 0, ">= 0"),
            ("shear_deg", 0 <= self.shear_deg < 90, "in [0, 90)"),
            ("scale", 0 < self.scale[0] <= self.scale[1], "0 < lo <= hi"),
            ("translate", 0 <= self.translate < 1, "in [0, 1)"),
            ("brightness", 0 <= self.brightness <= 1, "in [0, 1]"),
            ("contrast", 0 <= self.contrast <= 1, "in [0, 1]"),
            ("saturation", 0 <= self.saturation <= 1, "in [0, 1]"),
            ("hue", 0 <= self.hue <= 0.5, "in [0, 0.5]"),
            ("blur_p", 0 <= self.blur_p <= 1, "in [0, 1]"),
            ("blur_sigma", 0 < self.blur_sigma[0] <= self.blur_sigma[1], "0 < lo <= hi"),
            ("fill", 0 <= self.fill <= 255, "in [0, 255]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"AugmentConfig.{name} must be {expected}, got {getattr(self, name)!r}")

    @classmethod
    def glyph(cls) -> AugmentConfig:
        """For drawn characters on white (Omniglot): geometry only, the outside filled with white; no colour
        jitter or blur, which would only change the ink."""
        return cls(rotation_deg=10.0, scale=(0.85, 1.15), translate=0.08, shear_deg=10.0, brightness=0.0,
                   contrast=0.0, saturation=0.0, hue=0.0, blur_p=0.0, hflip=False, border="constant", fill=255)

    @classmethod
    def identity(cls) -> AugmentConfig:
        """A configuration that leaves every image unchanged."""
        return cls(rotation_deg=0.0, scale=(1.0, 1.0), translate=0.0, shear_deg=0.0, brightness=0.0,
                   contrast=0.0, saturation=0.0, hue=0.0, blur_p=0.0, hflip=False)


def affine_matrix(size_hw: tuple[int, int], angle_deg: float, scale: float, shear_deg: float,
                  translate_xy: tuple[float, float]) -> np.ndarray:
    """2x3 forward matrix: scale, x-shear and rotate about the image centre, then translate (pixels)."""
    h, w = size_hw
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    shear = np.array([[1.0, math.tan(math.radians(shear_deg)), 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    to_origin = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, cx + translate_xy[0]], [0.0, 1.0, cy + translate_xy[1]], [0.0, 0.0, 1.0]])
    m = back @ rot @ shear @ np.diag([scale, scale, 1.0]) @ to_origin
    return m[:2]


def _luma(img: np.ndarray) -> np.ndarray:
    """Grey level (H, W, 1) of a float (H, W, C) image (ITU-R BT.601 weights for RGB)."""
    if img.shape[2] == 1:
        return img
    return (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


class Augment:
    """Random affine, colour jitter, blur and optional flip on one uint8 ``(H, W, C)`` image.

    The output has the input's shape and dtype. Every draw comes from the ``rng`` passed in, in a fixed order,
    so two generators in the same state give the same output.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config if config is not None else AugmentConfig()

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_image(img)
        cfg = self.config
        h, w, c = img.shape
        angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
        scale = rng.uniform(cfg.scale[0], cfg.scale[1])
        shear = rng.uniform(-cfg.shear_deg, cfg.shear_deg)
        tx = rng.uniform(-cfg.translate, cfg.translate) * w
        ty = rng.uniform(-cfg.translate, cfg.translate) * h
        brightness = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        saturation = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        hue = rng.uniform(-cfg.hue, cfg.hue)
        blur = rng.random() < cfg.blur_p
        sigma = rng.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1])
        flip = cfg.hflip and rng.random() < 0.5

        out = img
        if angle != 0 or scale != 1 or shear != 0 or tx != 0 or ty != 0:
            m = affine_matrix((h, w), angle, scale, shear, (tx, ty))
            out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=BORDER_MODES[cfg.border],
                                 borderValue=(cfg.fill,) * 3).reshape(h, w, c)
        if brightness != 1 or contrast != 1 or (c == 3 and (saturation != 1 or hue != 0)):
            f = out.astype(np.float32)
            f *= brightness
            if contrast != 1:
                mean = float(_luma(f).mean())
                f = (f - mean) * contrast + mean
            if c == 3 and saturation != 1:
                grey = _luma(f)
                f = grey + (f - grey) * saturation
            if c == 3 and hue != 0:
                hsv = cv2.cvtColor(np.clip(f, 0, 255) / 255.0, cv2.COLOR_RGB2HSV)
                hsv[..., 0] = (hsv[..., 0] + hue * 360.0) % 360.0
                f = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
            out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
        if blur:
            ksize = 2 * math.ceil(3 * sigma) + 1
            out = cv2.GaussianBlur(out, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT_101).reshape(h, w, c)
        if flip:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------------------------
# Synthetic defects for one-class data


def _contrasting(level: np.ndarray, rng: np.random.Generator, min_delta: float = 60.0) -> np.ndarray:
    """Per channel, a value at least ``min_delta`` away from ``level`` (brighter on dark, darker on bright)."""
    out = np.empty_like(level, dtype=np.float32)
    for i, v in enumerate(level):
        if v < 128:
            out[i] = rng.uniform(min(v + min_delta, 255.0), 255.0)
        else:
            out[i] = rng.uniform(0.0, max(v - min_delta, 0.0))
    return out


def _soft(shape: np.ndarray) -> np.ndarray:
    """0/1 float mask -> alpha with a one-pixel soft inner edge, zero outside the shape."""
    return cv2.GaussianBlur(shape, (3, 3), 0.8) * shape


def _cutpaste(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w, c = img.shape
    area = rng.uniform(0.02, 0.15) * h * w
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
    ph = int(np.clip(round(math.sqrt(area / aspect)), 2, h - 1))
    pw = int(np.clip(round(math.sqrt(area * aspect)), 2, w - 1))
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch: np.ndarray = img[y0:y0 + ph, x0:x0 + pw].astype(np.float32)
    # Colour jitter of the patch (as in CutPaste), with a minimum shift so the paste is never invisible.
    shift = rng.uniform(20.0, 50.0) * (-1.0 if patch.mean() > 127.5 else 1.0)
    patch = (patch - patch.mean()) * rng.uniform(0.8, 1.2) + patch.mean() + shift
    foot: np.ndarray = np.ones((ph, pw), np.float32)
    angle = rng.uniform(-45.0, 45.0) if rng.random() < 0.5 else 0.0
    if angle:
        a = math.radians(angle)
        bw = min(w, math.ceil(abs(pw * math.cos(a)) + abs(ph * math.sin(a))))
        bh = min(h, math.ceil(abs(pw * math.sin(a)) + abs(ph * math.cos(a))))
        m = cv2.getRotationMatrix2D(((pw - 1) / 2.0, (ph - 1) / 2.0), angle, 1.0)
        m[:, 2] += ((bw - pw) / 2.0, (bh - ph) / 2.0)
        patch = cv2.warpAffine(patch, m, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        foot = cv2.warpAffine(foot, m, (bw, bh), flags=cv2.INTER_NEAREST, borderValue=0)
        ph, pw = bh, bw
    patch = patch.reshape(ph, pw, c)
    py, px = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    target = img.astype(np.float32)
    target[py:py + ph, px:px + pw] = patch
    alpha = np.zeros((h, w), np.float32)
    alpha[py:py + ph, px:px + pw] = foot
    return target, alpha


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w, _ = img.shape
    n = int(rng.integers(2, 6))
    step = rng.uniform(0.1, 0.3) * min(h, w)
    pts = [np.array([rng.uniform(0, w - 1), rng.uniform(0, h - 1)])]
    heading = rng.uniform(0, 2 * math.pi)
    for _ in range(n - 1):
        heading += rng.uniform(-0.6, 0.6)
        nxt = pts[-1] + step * np.array([math.cos(heading), math.sin(heading)])
        pts.append(np.clip(nxt, 0, [w - 1, h - 1]))
    shape = np.zeros((h, w), np.uint8)
    thickness = int(rng.integers(1, max(2, min(h, w) // 40) + 1))
    cv2.polylines(shape, [np.rint(np.array(pts)).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    shape_f = shape.astype(np.float32)
    colour = _contrasting(img[shape > 0].mean(axis=0), rng)
    target = np.broadcast_to(colour, img.shape).astype(np.float32)
    return target, np.maximum(_soft(shape_f), shape_f * 0.7)


def _ellipse_shape(h: int, w: int, rng: np.random.Generator, lo: float, hi: float,
                   centre: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], float]:
    """A filled random ellipse (0/1 uint8 ``(H, W)``) with semi-axes in [lo, hi] x min(H, W); its parameters."""
    side = min(h, w)
    axes = (max(2, int(rng.uniform(lo, hi) * side)), max(2, int(rng.uniform(lo, hi) * side)))
    if centre is None:
        centre = (int(rng.integers(axes[0] // 2, w - axes[0] // 2)), int(rng.integers(axes[1] // 2, h - axes[1] // 2)))
    angle = float(rng.uniform(0, 180))
    shape = np.zeros((h, w), np.uint8)
    cv2.ellipse(shape, centre, axes, angle, 0, 360, 1, -1)
    return shape, centre, axes, angle


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w, _ = img.shape
    shape, centre, axes, angle = _ellipse_shape(h, w, rng, 0.04, 0.12)
    inside = img[shape > 0].astype(np.float32)
    level = inside.mean(axis=0)
    target = np.empty(img.shape, np.float32)
    target[:] = level * rng.uniform(0.0, 0.3)
    # A lit rim on one side of the hole: dark parts stay visible even on a dark surface.
    rim = np.zeros((h, w), np.uint8)
    start = float(rng.uniform(0, 360))
    cv2.ellipse(rim, centre, axes, angle, start, start + 200, 1, max(1, min(axes) // 3))
    rim &= shape
    target[rim > 0] = np.minimum(level + rng.uniform(60.0, 120.0), 255.0)
    return target, _soft(shape.astype(np.float32))


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w, _ = img.shape
    shape, (cx, cy), axes, _ = _ellipse_shape(h, w, rng, 0.05, 0.15)
    # Lobes around the first ellipse give an irregular blob.
    for _ in range(int(rng.integers(0, 3))):
        dx, dy = rng.uniform(-1.0, 1.0, size=2) * axes
        lobe = (int(np.clip(cx + dx, 0, w - 1)), int(np.clip(cy + dy, 0, h - 1)))
        shape |= _ellipse_shape(h, w, rng, 0.03, 0.1, centre=lobe)[0]
    colour = _contrasting(img[shape > 0].astype(np.float32).mean(axis=0), rng)
    # Soft edge: opacity ramps up over the outer quarter of the blob and is exactly zero outside it.
    dist = cv2.distanceTransform(shape, cv2.DIST_L2, 3)
    ramp = max(1.0, 0.25 * float(dist.max()))
    alpha = np.clip(dist / ramp, 0.0, 1.0) * rng.uniform(0.6, 0.9)
    target = np.broadcast_to(colour, img.shape).astype(np.float32)
    return target, alpha.astype(np.float32)


_DEFECTS = {"cutpaste": _cutpaste, "scratch": _scratch, "hole": _hole, "stain": _stain}


def synthetic_defect(img: np.ndarray, rng: np.random.Generator, kind: str | None = None,
                     max_tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Paint one synthetic defect on a good image.

    ``img`` uint8 ``(H, W, C)``; ``kind`` one of ``DEFECT_KINDS`` (``None``: drawn uniformly):
    ``"cutpaste"`` a rectangle cut from the image, colour-jittered, optionally rotated and pasted elsewhere
    (CutPaste, Li et al. 2021); ``"scratch"`` a thin random polyline; ``"hole"`` a dark ellipse with a lit rim;
    ``"stain"`` a soft-edged colour blob. Returns the defective copy (same shape and dtype) and a uint8
    ``(H, W)`` mask, 255 where the defect was painted: no pixel outside the mask changes, and the pixels inside
    move by at least ``MIN_DEFECT_CONTRAST`` grey levels on average (redrawn up to ``max_tries`` times).
    """
    _check_image(img)
    if kind is not None and kind not in _DEFECTS:
        raise ValueError(f"kind must be one of {DEFECT_KINDS} or None, got {kind!r}")
    if min(img.shape[:2]) < 8:
        raise ValueError(f"synthetic defects need an image at least 8x8; got {img.shape}")
    name = kind if kind is not None else DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
    src = img.astype(np.float32)
    for _ in range(max_tries):
        target, alpha = _DEFECTS[name](img, rng)
        a = alpha[..., None]
        out = np.clip(np.rint(src * (1.0 - a) + target * a), 0, 255).astype(np.uint8)
        mask = np.where(alpha > 0, 255, 0).astype(np.uint8)
        inside = mask > 0
        if inside.any() and np.abs(out.astype(np.float32) - src)[inside].mean() >= MIN_DEFECT_CONTRAST:
            return out, mask
    raise RuntimeError(f"could not paint a visible {name!r} defect on this image in {max_tries} tries")


def small_defect(img: np.ndarray, rng: np.random.Generator, kind: str | None = None,
                 window_fraction: float = SMALL_DEFECT_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect painted inside a random window of ``window_fraction`` of the image's height and
    width: ``(defective copy, bool mask (H, W))``. Nothing outside the mask changes."""
    if not 0 < window_fraction <= 1:
        raise ValueError(f"window_fraction must be in (0, 1], got {window_fraction}")
    h, w = img.shape[:2]
    wh, ww = max(8, round(h * window_fraction)), max(8, round(w * window_fraction))
    if wh > h or ww > w:
        raise ValueError(f"the image ({h}x{w}) is too small for an 8x8 defect window")
    y0, x0 = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
    window, window_mask = synthetic_defect(np.ascontiguousarray(img[y0:y0 + wh, x0:x0 + ww]), rng, kind)
    out = img.copy()
    out[y0:y0 + wh, x0:x0 + ww] = window
    mask = np.zeros((h, w), bool)
    mask[y0:y0 + wh, x0:x0 + ww] = window_mask > 0
    return out, mask


class OneClassTripletSampler:
    """(anchor, positive, negative) uint8 images from good images only.

    For a source image: anchor and positive are two augmentations of it; the negative is a synthetic defect on
    a third augmentation (a hard negative) or, with probability ``p_other``, an augmentation of another image.
    Sources are visited in a fresh random order each pass. :meth:`reset` rewinds the generator to ``seed``.
    """

    def __init__(self, images: Sequence[np.ndarray], augment: Augment, triplets_per_epoch: int, seed: int = 0,
                 p_other: float = 0.0, defect_kinds: Sequence[str] = DEFECT_KINDS) -> None:
        if not images:
            raise ValueError("need at least one good image")
        for i, img in enumerate(images):
            _check_image(img, f"images[{i}]")
        if not 0 <= p_other <= 1:
            raise ValueError(f"p_other must be in [0, 1], got {p_other}")
        if p_other > 0 and len(images) < 2:
            raise ValueError("p_other > 0 needs at least 2 images")
        bad = [k for k in defect_kinds if k not in _DEFECTS]
        if bad or not defect_kinds:
            raise ValueError(f"defect_kinds must be a non-empty subset of {DEFECT_KINDS}, got {tuple(defect_kinds)}")
        if triplets_per_epoch < 1:
            raise ValueError(f"triplets_per_epoch must be >= 1, got {triplets_per_epoch}")
        self.images = list(images)
        self.augment = augment
        self.triplets_per_epoch = triplets_per_epoch
        self.seed = seed
        self.p_other = p_other
        self.defect_kinds = tuple(defect_kinds)
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return self.triplets_per_epoch

    def sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One triplet around source ``images[index]``."""
        src = self.images[index]
        anchor = self.augment(src, rng)
        positive = self.augment(src, rng)
        if rng.random() < self.p_other:
            other = int(rng.integers(len(self.images) - 1))
            negative = self.augment(self.images[other + (other >= index)], rng)
        else:
            kind = self.defect_kinds[int(rng.integers(len(self.defect_kinds)))]
            negative = synthetic_defect(self.augment(src, rng), rng, kind)[0]
        return anchor, positive, negative

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        rng = self._rng
        order = np.empty(0, dtype=np.int64)
        for t in range(self.triplets_per_epoch):
            if t % len(self.images) == 0:
                order = rng.permutation(len(self.images))
            yield self.sample(int(order[t % len(self.images)]), rng)


# --------------------------------------------------------------------------------------------------------------
# Tensors


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 (or other unsigned integer) ``(N, H, W, C)``, C in (1, 3) -> float32 ``(N, 3, H, W)`` in [0, 1].

    Scales by the dtype's maximum (1/255 for uint8), never by the pixel values; grey images are replicated to
    three channels.
    """
    if batch.ndim != 4 or batch.shape[3] not in (1, 3):
        raise ValueError(f"batch must be (N, H, W, C) with C in (1, 3); got shape {batch.shape}")
    if not np.issubdtype(batch.dtype, np.unsignedinteger):
        raise ValueError(f"batch must have an unsigned integer dtype (uint8, uint16); got {batch.dtype}")
    scale = 1.0 / float(np.iinfo(batch.dtype).max)
    x = torch.from_numpy(np.ascontiguousarray(batch).astype(np.float32) * np.float32(scale))
    x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()
