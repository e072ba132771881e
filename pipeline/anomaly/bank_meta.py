"""A bank's ``meta.json``: the record, and the one parser that checks every stored field's type and range.

A bank decides which parts are flagged, so a value that cannot be right (a NaN threshold, a negative distance
threshold, ``k = 0``, a count stored as a string) must stop the bank from loading, at start and at hot reload
alike, with the field, the value and the fix named; it must never be used.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

BANK_FORMAT = 1
INDEX_TYPES = ("flat", "hnsw", "ivf-flat", "ivf-pq")
LEVELS = ("global", "patch")
MAX_K = 1024
MAX_TIME = 1e10  # seconds since 1970: the year 2286


class BankError(ValueError):
    """A bank is missing, corrupt, empty or made for another encoder. ``str()`` says what and how to fix."""


@dataclass(frozen=True)
class BankMeta:
    encoder_id: str
    embedding_dim: int  # dimension of the indexed vectors (D for global, C for patch banks)
    input_size: tuple[int, int]
    level: str = "global"
    patches_per_crop: int = 1
    index_type: str = "flat"
    metric: str = "l2"
    k: int = 1
    threshold: float = float("nan")
    false_alarm_rate: float = 0.01
    calibration_samples: int = 0
    calibration_groups: int = 0
    false_alarm_upper_95: float = 1.0
    sample_count: int = 0
    crops: int = 0
    coreset_fraction: float = 1.0
    coreset_coverage: float = 0.0  # every good vector lies within this L2 distance of a kept one
    sources: list[str] = field(default_factory=list)
    created: float = 0.0
    updated: float = 0.0
    nlist: int = 0  # IVF cells; 0 = chosen from the first vectors added (about 4 sqrt(N))
    nprobe: int = 8  # IVF cells searched per query
    pq_m: int = 0  # IVF-PQ sub-quantisers (must divide the dimension); 0 = dim / 4 rounded to a divisor
    format: int = BANK_FORMAT
    # Per-cell normalisation of patch scores (:mod:`pipeline.anomaly.cellnorm`): P means and scales, or empty.
    cell_mean: list[float] = field(default_factory=list)
    cell_scale: list[float] = field(default_factory=list)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


# field -> (check, what it must be). Numbers stored as JSON integers are accepted where floats are expected.
_RULES: dict[str, tuple[Any, str]] = {
    "encoder_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "embedding_dim": (lambda v: _is_int(v) and 1 <= v <= 1 << 20, "an integer in 1..1048576"),
    "input_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(s) and 1 <= s <= 1 << 16 for s in v),
                   "two integers [height, width]"),
    "level": (lambda v: v in LEVELS, f"one of {', '.join(LEVELS)}"),
    "patches_per_crop": (lambda v: _is_int(v) and 1 <= v <= 1 << 16, "an integer >= 1"),
    "index_type": (lambda v: v in INDEX_TYPES, f"one of {', '.join(INDEX_TYPES)}"),
    "metric": (lambda v: v == "l2", "'l2'"),
    "k": (lambda v: _is_int(v) and 1 <= v <= MAX_K, f"an integer in 1..{MAX_K}"),
    "threshold": (_is_number, "a finite number (an anomaly-score threshold)"),
    "false_alarm_rate": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "calibration_samples": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "calibration_groups": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "false_alarm_upper_95": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "sample_count": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "crops": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "coreset_fraction": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "coreset_coverage": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "sources": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings"),
    "created": (lambda v: _is_number(v) and 0 <= v <= MAX_TIME, "a Unix time (a number in 0..1e10)"),
    "updated": (lambda v: _is_number(v) and 0 <= v <= MAX_TIME, "a Unix time (a number in 0..1e10)"),
    "nlist": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "nprobe": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "pq_m": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "format": (_is_int, "an integer"),
    "cell_mean": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of finite numbers"),
    "cell_scale": (lambda v: isinstance(v, list) and all(_is_number(x) and x > 0 for x in v),
                   "a list of finite numbers > 0"),
}
_REQUIRED = ("encoder_id", "embedding_dim", "input_size", "threshold", "sample_count", "k")


def parse_meta(data: bytes, where: str) -> BankMeta:
    """The :class:`BankMeta` that ``data`` (the bytes of ``meta.json``) describes, every field checked.

    Raises:
        BankError: not UTF-8 JSON, not an object, an unknown or missing key, a value of the wrong type or out of
            range, or fields that contradict each other; the message names ``where``, the field and the fix.
    """
    fix = "rebuild the bank with `siamstream bank build` (or restore it from a copy)"
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = ("not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else
                  "nested too deeply" if isinstance(exc, RecursionError) else f"not JSON ({exc})")
        raise BankError(f"{where}: corrupt bank metadata, {reason}; {fix}") from None
    if not isinstance(raw, dict):
        raise BankError(f"{where}: corrupt bank metadata, a JSON {type(raw).__name__} instead of an object; {fix}")
    known = {f.name for f in fields(BankMeta)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise BankError(f"{where}: not a siamstream bank of this version (unknown keys {', '.join(unknown[:5])}); "
                        f"{fix}")
    if "format" in raw and raw["format"] != BANK_FORMAT:
        raise BankError(f"{where}: bank format {raw['format']!r}, this version reads {BANK_FORMAT}; {fix}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise BankError(f"{where}: corrupt bank metadata, missing {', '.join(missing)}; {fix}")
    if raw["sample_count"] == 0:
        raise BankError(f"{where}: the bank is empty; add good samples with `siamstream bank build`")
    for key, value in raw.items():
        check, expected = _RULES[key]
        if not check(value):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise BankError(f"{where}: bank field {key} = {shown} is not {expected}; {fix}")
    meta = BankMeta(**{**raw, "input_size": tuple(raw["input_size"])})
    if meta.level == "global" and meta.patches_per_crop != 1:
        raise BankError(f"{where}: a global bank with patches_per_crop = {meta.patches_per_crop} (must be 1); {fix}")
    if meta.threshold < 0 and not meta.cell_mean:
        raise BankError(f"{where}: bank field threshold = {meta.threshold!r} is below 0, but k-NN distances never are "
                        f"(every part would be flagged); {fix}")
    if meta.cell_mean or meta.cell_scale:
        if meta.level != "patch":
            raise BankError(f"{where}: a {meta.level} bank with a cell normalisation (patch banks only); {fix}")
        if not len(meta.cell_mean) == len(meta.cell_scale) == meta.patches_per_crop:
            raise BankError(f"{where}: cell normalisation of {len(meta.cell_mean)} means and {len(meta.cell_scale)} "
                            f"scales for {meta.patches_per_crop} patches per crop; {fix}")
    return meta
