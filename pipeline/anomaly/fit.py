"""``siamstream anomaly fit``: the anomaly recipe for a new line, chosen from its good images alone.

A new line has good parts only, so its settings (input scale, feature stages, smoothing, coreset size, per-cell
normalisation, index, an adapted trunk) cannot be chosen on real defects. Each candidate :class:`Recipe` builds a
bank from the manifest's ``train`` images and scores the ``validation`` images twice: as they are, and with one
probe defect painted on the object in each copy (:mod:`pipeline.anomaly.probes`; kinds the adaptation never
paints). The rule, fixed here: **the highest probe image AUROC (to 3 decimals; then pixel AP) among the recipes
at least ``budget_margin`` (10%) under the latency budget; the fastest recipe when none is**. Then the chosen
recipe's bank is built from train and calibrated on the held-out good images (:mod:`pipeline.anomaly.image_bank`),
and :func:`write_fit` writes a complete config, the encoder, the bank and a report.

Latency. A recipe's time per image (embed, search, map) is measured on a few probe images, each time between two
timings of a fixed reference operation (the built-in encoder, stage 4 at 224 x 224, on the same images), three
times. The recipe's cost is the median of its time over the mean of the references around it, so a load that
slows both cancels; its milliseconds are that ratio times the median of every reference timing of the run. Only a
recipe at least the margin under the budget counts as within it, so the noise left cannot move a recipe across. The
report gives each recipe's ratio and how close it came to the budget.

Image sizes. Images of one size are used as they are; otherwise every image is resized to the median height and
median width of the train and validation images (the policy and how many images it changed are reported), and a
recipe's ``scale`` multiplies that working size.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.anomaly.bank import Bank
from pipeline.anomaly.image_bank import CalibratedBank, MapGeometry, calibrated_image_bank, image_scores
from pipeline.anomaly.images import image_patch_features, image_size, patch_grid_of, read_rgb
from pipeline.anomaly.manifest import ManifestError, ManifestRow
from pipeline.anomaly.maps import map_scores
from pipeline.anomaly.probes import ProbeSet, probe_set
from pipeline.anomaly.separation import auroc, average_precision
from pipeline.config import Config, ConfigError, replace
from pipeline.encoder import Encoder

if TYPE_CHECKING:
    from encoders.adapt import AdaptConfig

__all__ = ["BASELINE", "RECIPES", "CandidateResult", "FitResult", "FitSettings", "ProbeScore", "Recipe", "SizePolicy",
           "choose", "fit_anomaly", "recipe_config", "score_on_probes", "size_policy", "write_fit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """One candidate: keys of ``[encoder]``, ``[bank]`` and ``[anomaly]`` over the base config, the input
    scale over the working image size (or a fixed size), and whether the trunk is adapted to the train images."""

    name: str
    encoder: Mapping[str, object]
    bank: Mapping[str, object]
    anomaly: Mapping[str, object] = field(default_factory=dict)
    scale: float = 1.0
    size: tuple[int, int] | None = None
    adapt: bool = False


# A recipe sets how features are indexed and reduced; the false-alarm target and the calibration folds stay the
# user's ([bank] false_alarm_rate, folds).
_BANK: dict[str, object] = {"index": "ivf-flat", "nprobe": 8, "coreset_fraction": 0.05, "max_vectors": 500_000}
_S43: dict[str, object] = {"stage": 4, "patch_stage": 4, "patch_detail_stage": 3}
_S32: dict[str, object] = {"stage": 3, "patch_stage": 3, "patch_detail_stage": 2}
_S3: dict[str, object] = {"stage": 3, "patch_stage": 3, "patch_detail_stage": 0}
_SIGMA2: dict[str, object] = {"map_sigma": 2.0, "map_border": 8}
RECIPES: tuple[Recipe, ...] = (
    Recipe("s4+s3 2x sigma2", _S43, _BANK, _SIGMA2, scale=2.0),
    Recipe("s4+s3 2x sigma4", _S43, _BANK, {"map_sigma": 4.0, "map_border": 8}, scale=2.0),
    Recipe("s4+s3 1.75x sigma2", _S43, _BANK, _SIGMA2, scale=1.75),
    Recipe("s4+s3 1.75x sigma2 adapted", _S43, _BANK, _SIGMA2, scale=1.75, adapt=True),
    Recipe("s4+s3 1.5x sigma2", _S43, _BANK, _SIGMA2, scale=1.5),
    Recipe("s4+s3 1.5x sigma2 10%", _S43, {**_BANK, "coreset_fraction": 0.1}, _SIGMA2, scale=1.5),
    Recipe("s4+s3 1x sigma2", _S43, _BANK, _SIGMA2, scale=1.0),
    Recipe("s3+s2 1x sigma2", _S32, _BANK, _SIGMA2, scale=1.0),
    Recipe("s3 2x sigma2", _S3, _BANK, _SIGMA2, scale=2.0),
    Recipe("s4 1x sigma4", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 0}, _BANK,
           {"map_sigma": 4.0, "map_border": 8}, scale=1.0),
    # Each patch scored against how good images score at that cell (pipeline.anomaly.cellnorm).
    Recipe("s4+s3 1.75x sigma2 cellnorm", _S43, {**_BANK, "cell_norm": True}, _SIGMA2, scale=1.75),
    Recipe("s4+s3 1.75x sigma2 adapted cellnorm", _S43, {**_BANK, "cell_norm": True}, _SIGMA2, scale=1.75,
           adapt=True),
    Recipe("s3 2x sigma2 cellnorm", _S3, {**_BANK, "cell_norm": True}, _SIGMA2, scale=2.0),
)
# The PatchCore-style baseline (stage-4 features, 224 x 224, 10% coreset, exact search): the reference operation
# of the latency budget, and the peer of ``bench anomaly``.
BASELINE = Recipe("patchcore-s4-224", {"stage": 4, "patch_stage": 4, "patch_detail_stage": 0},
                  {"index": "flat", "coreset_fraction": 0.1, "max_vectors": 500_000},
                  {"map_sigma": 4.0, "map_border": 0}, size=(224, 224))


@dataclass(frozen=True)
class FitSettings:
    budget_ms: float = 50.0  # per image: embed, search and map, on this machine
    budget_margin: float = 0.1  # a recipe counts as within the budget only this far under it (noise cannot flip it)
    per_image: int = 4  # probe defects painted per validation image (one each, on copies)
    defect_size: float = 0.08  # a probe defect's extent, as a fraction of the object's shorter side
    seed: int = 0  # the probes, the coresets, the folds and the adaptation
    adapt: bool = True  # try the recipes with an adapted trunk (minutes each on a CPU)
    adapt_steps: int = 800
    recipes: tuple[str, ...] = ()  # names of the recipes to try; () = all of RECIPES
    timing_images: int = 8
    timing_repeats: int = 3

    def __post_init__(self) -> None:
        if not self.budget_ms > 0:
            raise ConfigError(f"anomaly fit --budget-ms {self.budget_ms}: give a positive time per image, e.g. 50")
        if not 0 <= self.budget_margin < 1:
            raise ConfigError(f"anomaly fit budget margin {self.budget_margin}: allowed 0 .. 1 (a share of the budget)")
        if not 0 < self.defect_size <= 0.5:
            raise ConfigError(f"anomaly fit --defect-size {self.defect_size}: give a fraction of the object's shorter "
                              f"side in (0, 0.5], e.g. 0.08")
        if not 1 <= self.per_image <= 32:
            raise ConfigError(f"anomaly fit --per-image {self.per_image}: allowed 1 .. 32")
        names = {r.name for r in RECIPES}
        unknown = [n for n in self.recipes if n not in names]
        if unknown:
            raise ConfigError(f"anomaly fit --recipes: no recipe {unknown[0]!r}; choose among: "
                              f"{', '.join(repr(n) for n in names)}")

    def candidates(self) -> tuple[Recipe, ...]:
        chosen = [r for r in RECIPES if not self.recipes or r.name in self.recipes]
        return tuple(r for r in chosen if self.adapt or not r.adapt)


@dataclass(frozen=True)
class SizePolicy:
    """The working size every image is brought to, and what that changed."""

    size_hw: tuple[int, int]
    images: int
    resized: int  # images not already at size_hw
    aspect_range: tuple[float, float]  # smallest and largest width / height among the images

    def describe(self) -> str:
        h, w = self.size_hw
        if not self.resized:
            return f"all {self.images} images are {h}x{w} (height x width): used as they are"
        lo, hi = self.aspect_range
        return (f"{self.resized} of {self.images} images resized to {h}x{w} (the median height and width; aspect "
                f"ratios {lo:.2f}..{hi:.2f})")


def size_policy(paths: list[Path]) -> SizePolicy:
    sizes = [image_size(p) for p in paths]
    if len(set(sizes)) == 1:
        h, w = sizes[0]
    else:
        h = round(statistics.median(s[0] for s in sizes))
        w = round(statistics.median(s[1] for s in sizes))
    aspects = [s[1] / s[0] for s in sizes]
    return SizePolicy((h, w), len(sizes), sum(s != (h, w) for s in sizes), (min(aspects), max(aspects)))


def recipe_config(base: Config, recipe: Recipe) -> Config:
    cfg = replace(base, "encoder", **recipe.encoder)
    cfg = replace(cfg, "anomaly", **recipe.anomaly)
    return replace(cfg, "bank", level="patch", **recipe.bank)


def recipe_size(recipe: Recipe, working: tuple[int, int]) -> tuple[int, int]:
    if recipe.size is not None:
        return recipe.size
    return round(working[0] * recipe.scale), round(working[1] * recipe.scale)


@dataclass(frozen=True)
class CandidateResult:
    name: str
    input_hw: tuple[int, int]
    image_auroc: float
    pixel_ap: float
    per_kind_auroc: dict[str, float]
    cost_ratio: float  # time per image over the reference operation's, median of the repeats
    ms_per_image: float  # cost_ratio x the run's median reference time
    within_budget: bool
    bank_vectors: int
    seconds: float  # the whole candidate: embedding, bank, probes, timing

    def closeness(self, budget_ms: float) -> float:
        """How far under (> 0) or over (< 0) the budget, as a share of it."""
        return 1.0 - self.ms_per_image / budget_ms

    def figures(self, budget_ms: float) -> dict[str, object]:
        return {"input": list(self.input_hw), "probe_image_auroc": round(self.image_auroc, 4),
                "probe_pixel_ap": round(self.pixel_ap, 4),
                "probe_auroc_per_kind": {k: round(v, 4) for k, v in self.per_kind_auroc.items()},
                "cost_ratio": round(self.cost_ratio, 3), "ms_per_image": round(self.ms_per_image, 2),
                "within_budget": self.within_budget, "budget_closeness": round(self.closeness(budget_ms), 3),
                "bank_vectors": self.bank_vectors, "seconds": round(self.seconds, 1)}


@dataclass
class FitResult:
    chosen: Recipe
    config: Config  # the base config with the chosen recipe's keys (encoder model and bank paths set on writing)
    encoder_path: Path  # the chosen recipe's ONNX encoder (the built-in export, or the adapted trunk)
    calibrated: CalibratedBank
    candidates: dict[str, CandidateResult]
    size: SizePolicy
    probes: ProbeSet
    reference_ms: list[float]
    adapt_seconds: dict[str, float]
    settings: FitSettings
    seconds: float

    @property
    def bank(self) -> Bank:
        return self.calibrated.bank


def choose(candidates: dict[str, CandidateResult]) -> str:
    """The rule: the highest probe image AUROC (to 3 decimals; then the higher pixel AP) among the candidates
    within the budget; the fastest candidate when none is."""
    fast = [c for c in candidates.values() if c.within_budget]
    if not fast:
        return min(candidates.values(), key=lambda c: c.ms_per_image).name
    return max(fast, key=lambda c: (round(c.image_auroc, 3), c.pixel_ap)).name


class _Encoders:
    """Builds each candidate's encoder once per (network, size): the built-in export in the cache, or a trunk
    adapted to the train images under ``work``."""

    def __init__(self, base: Config, work: Path, train: list[Path], settings: FitSettings,
                 say: Callable[[str], None], adapt: AdaptConfig | None = None) -> None:
        self.base, self.work, self.train, self.settings, self.say = base, work, train, settings, say
        self.adapt = adapt
        self.adapt_seconds: dict[str, float] = {}
        self._paths: dict[str, Path] = {}

    def path(self, recipe: Recipe, cfg: Config, size: tuple[int, int]) -> Path:
        enc = cfg.encoder
        key = repr((enc.stage, enc.pooling, enc.patch_stage, enc.patch_detail_stage, size, recipe.adapt))
        if key in self._paths:
            return self._paths[key]
        if recipe.adapt:
            from encoders.adapt import adapt_to_onnx

            path = self.work / f"adapted-{len(self._paths)}.onnx"
            self.say(f"{recipe.name}: adapting the trunk on {len(self.train)} train images at {size[0]}x{size[1]}")
            images = [read_rgb(p, size) for p in self.train]
            _, result = adapt_to_onnx(images, path, stage=enc.stage, pooling=enc.pooling,
                                      patch_stage=enc.patch_stage, patch_detail_stage=enc.patch_detail_stage,
                                      cfg=self._adapt_config(), progress=self.say)
            self.adapt_seconds[recipe.name] = result.seconds
        else:
            from encoders.export import ensure_pretrained_onnx

            path = ensure_pretrained_onnx(enc.cache_dir, enc.stage, enc.pooling, size, enc.patch_stage,
                                          enc.patch_detail_stage)
        self._paths[key] = path
        return path

    def _adapt_config(self) -> AdaptConfig:
        from encoders.adapt import AdaptConfig

        return self.adapt or AdaptConfig(steps=self.settings.adapt_steps, seed=self.settings.seed)

    def encoder(self, path: Path, cfg: Config) -> Encoder:
        from pipeline import app

        return app.build_encoder(replace(cfg, "encoder", model=str(path), engine="onnxruntime").encoder)


class _Clock:
    """Times a candidate between timings of the reference operation (see the module's docstring)."""

    def __init__(self, reference: Encoder, images: np.ndarray, repeats: int) -> None:
        self.reference, self.images, self.repeats = reference, images, repeats
        self.reference_ms: list[float] = []

    def _reference(self) -> float:
        started = time.perf_counter()
        image_patch_features(self.images, self.reference, batch=len(self.images))
        ms = 1000 * (time.perf_counter() - started) / len(self.images)
        self.reference_ms.append(ms)
        return ms

    def ratio(self, run: Callable[[np.ndarray], None]) -> float:
        ratios = []
        before = self._reference()
        for _ in range(self.repeats):
            started = time.perf_counter()
            run(self.images)
            ms = 1000 * (time.perf_counter() - started) / len(self.images)
            after = self._reference()
            ratios.append(ms / ((before + after) / 2))
            before = after
        return float(statistics.median(ratios))

    def typical_ms(self) -> float:
        return float(statistics.median(self.reference_ms))


@dataclass(frozen=True)
class ProbeScore:
    """How one recipe's bank separates the probe defects from the good images."""

    image_auroc: float
    pixel_ap: float
    per_kind_auroc: dict[str, float]
    bank: Bank
    geometry: MapGeometry


def score_on_probes(cfg: Config, encoder: Encoder, train: list[Path], probes: ProbeSet,
                    working: tuple[int, int], seed: int = 0) -> ProbeScore:
    """Build ``cfg``'s bank from the ``train`` images through ``encoder`` and score ``probes`` (images at the
    ``working`` size): image AUROC of the painted copies against the good images, pixel AP on the painted masks,
    and the AUROC of each kind. No threshold is set (only the ranking of scores counts here)."""
    geometry = MapGeometry(patch_grid_of(encoder), working, cfg.anomaly.map_sigma, cfg.anomaly.map_border)
    feats = image_patch_features(train, encoder)
    fitted = calibrated_image_bank(feats, np.zeros((0, *feats.shape[1:]), np.float32), encoder.encoder_id,
                                   encoder.input_size, geometry, cfg.bank, source=str(train[0].parent), seed=seed,
                                   calibrate=False)
    maps = geometry.maps(fitted.bank.patch_scores(image_patch_features(probes.images, encoder)))
    scores = map_scores(maps)
    y = probes.is_anomaly
    kinds = np.array(probes.kinds)
    per_kind = {k: auroc(y[(kinds == k) | ~y], scores[(kinds == k) | ~y]) for k in sorted(set(probes.kinds) - {"good"})}
    return ProbeScore(auroc(y, scores), average_precision(probes.masks, maps), per_kind, fitted.bank, geometry)


def _check_rows(rows: list[ManifestRow]) -> tuple[list[Path], list[Path]]:
    train = [r.image for r in rows if r.split == "train" and not r.is_anomaly]
    validation = [r.image for r in rows if r.split == "validation" and not r.is_anomaly]
    if len(train) < 3:
        raise ManifestError(f"anomaly fit needs at least 3 good train images to build banks from; the manifest has "
                            f"{len(train)}: add train rows (split=train, is_anomaly=0)")
    if len(validation) < 3:
        raise ManifestError(f"anomaly fit paints probe defects on held-out good images and needs at least 3 "
                            f"validation rows; the manifest has {len(validation)}: move some good images to "
                            f"split=validation")
    return train, validation


def fit_anomaly(rows: list[ManifestRow], base: Config, settings: FitSettings, work: Path,
                progress: Callable[[str], None] | None = None, recipes: tuple[Recipe, ...] | None = None,
                adapt: AdaptConfig | None = None) -> FitResult:
    """Score every candidate on probe defects and build the chosen one's calibrated bank (the module's
    docstring). ``work`` keeps adapted encoders; test rows are never read. ``recipes`` replaces the candidates of
    ``settings`` and ``adapt`` the adaptation's settings (both for tests and experiments)."""
    say = progress or log.info
    started = time.perf_counter()
    train, validation = _check_rows(rows)
    policy = size_policy(train + validation)
    say(f"images: {policy.describe()}")
    working = policy.size_hw
    probes = probe_set([read_rgb(p, working) for p in validation], settings.per_image, settings.defect_size,
                       settings.seed)
    say(f"probes: {int(probes.is_anomaly.sum())} defects painted on copies of {len(validation)} validation images "
        f"(object found in {probes.objects_found} of them), extent {settings.defect_size:.0%} of the object")
    encoders = _Encoders(base, work, train, settings, say, adapt)
    ref_cfg = recipe_config(base, BASELINE)
    reference = encoders.encoder(encoders.path(BASELINE, ref_cfg, recipe_size(BASELINE, working)), ref_cfg)
    timing = probes.images[np.flatnonzero(probes.is_anomaly)[:settings.timing_images]]
    clock = _Clock(reference, timing, settings.timing_repeats)
    results: dict[str, CandidateResult] = {}
    chosen_state: dict[str, tuple[Path, Config]] = {}
    candidates = recipes if recipes is not None else settings.candidates()
    for i, recipe in enumerate(candidates, start=1):
        t0 = time.perf_counter()
        cfg = recipe_config(base, recipe)
        size = recipe_size(recipe, working)
        path = encoders.path(recipe, cfg, size)
        encoder = encoders.encoder(path, cfg)
        score = score_on_probes(cfg, encoder, train, probes, working, settings.seed)

        def run(images: np.ndarray, enc: Encoder = encoder, bank: Bank = score.bank,
                geo: MapGeometry = score.geometry) -> None:
            image_scores(bank.patch_scores(image_patch_features(images, enc, batch=len(images))), geo)

        ratio = clock.ratio(run)
        results[recipe.name] = CandidateResult(recipe.name, size, score.image_auroc, score.pixel_ap,
                                               score.per_kind_auroc, ratio, 0.0, False, len(score.bank),
                                               time.perf_counter() - t0)
        chosen_state[recipe.name] = (path, cfg)
        say(f"candidate {i}/{len(candidates)} {recipe.name}: probe image AUROC {results[recipe.name].image_auroc:.3f}, "
            f"pixel AP {results[recipe.name].pixel_ap:.3f}, {ratio:.2f}x the reference")
    typical = clock.typical_ms()
    for name, r in list(results.items()):
        ms = r.cost_ratio * typical
        results[name] = CandidateResult(r.name, r.input_hw, r.image_auroc, r.pixel_ap, r.per_kind_auroc, r.cost_ratio,
                                        ms, ms <= settings.budget_ms * (1 - settings.budget_margin),
                                        r.bank_vectors, r.seconds)
    name = choose(results)
    chosen = next(r for r in candidates if r.name == name)
    path, cfg = chosen_state[name]
    say(f"chosen: {name} ({results[name].ms_per_image:.1f} ms per image against a budget of "
        f"{settings.budget_ms:g}); building its bank and calibrating it on held-out good images")
    encoder = encoders.encoder(path, cfg)
    geometry = MapGeometry(patch_grid_of(encoder), working, cfg.anomaly.map_sigma, cfg.anomaly.map_border)
    calibrated = calibrated_image_bank(image_patch_features(train, encoder), image_patch_features(validation, encoder),
                                       encoder.encoder_id, encoder.input_size, geometry, cfg.bank,
                                       source=str(train[0].parent), seed=settings.seed, progress=say)
    return FitResult(chosen, cfg, path, calibrated, results, policy, probes, clock.reference_ms,
                     encoders.adapt_seconds, settings, time.perf_counter() - started)


def fit_report(result: FitResult) -> dict[str, object]:
    """Everything ``fit.json`` holds: the settings, the image policy, the probes, every candidate, the choice."""
    s = result.settings
    meta = result.bank.meta
    return {
        "chosen": result.chosen.name,
        "rule": "highest probe image AUROC (3 decimals, then pixel AP) among the recipes at least the margin under the "
                "budget; the fastest if none is",
        "budget_ms": s.budget_ms, "budget_margin": s.budget_margin,
        "images": {"policy": result.size.describe(), "working_size": list(result.size.size_hw),
                   "resized": result.size.resized, "count": result.size.images},
        "probes": {"kinds": sorted(set(result.probes.kinds) - {"good"}), "defect_size": s.defect_size,
                   "per_image": s.per_image, "defective": int(result.probes.is_anomaly.sum()),
                   "good": int((~result.probes.is_anomaly).sum()), "objects_found": result.probes.objects_found,
                   "seed": s.seed},
        "reference": {"operation": f"{BASELINE.name} embedding, ms per image",
                      "median_ms": round(statistics.median(result.reference_ms), 3),
                      "min_ms": round(min(result.reference_ms), 3), "max_ms": round(max(result.reference_ms), 3),
                      "timings": len(result.reference_ms)},
        "candidates": {n: c.figures(s.budget_ms) for n, c in result.candidates.items()},
        "adapt_seconds": {n: round(v, 1) for n, v in result.adapt_seconds.items()},
        "threshold": meta.threshold, "false_alarm_rate": meta.false_alarm_rate,
        "calibration_images": meta.calibration_samples, "false_alarm_upper_95": meta.false_alarm_upper_95,
        "bank_vectors": len(result.bank), "seconds": round(result.seconds, 1),
    }


def report_table(result: FitResult) -> list[str]:
    """The candidates as a Markdown table, best first, the chosen one marked."""
    s = result.settings
    kinds = sorted(set(result.probes.kinds) - {"good"})
    head = ["recipe", "input", "probe image AUROC", "probe pixel AP", *[f"AUROC {k}" for k in kinds],
            "x reference", "ms / image", "budget", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(result.candidates.values(), key=lambda c: (-round(c.image_auroc, 3), -c.pixel_ap))
    for c in order:
        gap = c.closeness(s.budget_ms)
        budget = (f"{gap:.0%} under" if c.within_budget else
                  f"{gap:.0%} under: in the margin" if gap >= 0 else f"{-gap:.0%} over")
        lines.append("| " + " | ".join([
            c.name, f"{c.input_hw[0]}x{c.input_hw[1]}", f"{c.image_auroc:.3f}", f"{c.pixel_ap:.3f}",
            *[f"{c.per_kind_auroc.get(k, float('nan')):.3f}" for k in kinds], f"{c.cost_ratio:.2f}",
            f"{c.ms_per_image:.1f}", budget, "chosen" if c.name == result.chosen.name else ""]) + " |")
    return lines


def write_fit(result: FitResult, out: Path) -> Config:
    """``out/encoder.onnx``, ``out/bank/``, ``out/config.toml`` (a complete config whose ``[encoder] model`` and
    ``[anomaly] bank`` point at those, by absolute path), ``out/fit.json`` and ``out/fit.md``. Returns the config
    written."""
    import json

    from pipeline.config import config_to_toml

    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    encoder_path = root / "encoder.onnx"
    if result.encoder_path.resolve() != encoder_path:
        shutil.copyfile(result.encoder_path, encoder_path)
    result.bank.save(root / "bank")
    cfg = replace(result.config, "encoder", model=str(encoder_path), engine="onnxruntime")
    cfg = replace(cfg, "anomaly", bank=str(root / "bank"))
    tmp = root / "config.toml.tmp"
    tmp.write_text(f"# Written by `siamstream anomaly fit`: recipe {result.chosen.name!r} "
                   f"(fit.md says why).\n" + config_to_toml(cfg), encoding="utf-8")
    tmp.replace(root / "config.toml")
    (root / "fit.json").write_text(json.dumps(fit_report(result), indent=2) + "\n", encoding="utf-8")
    md = [f"# anomaly fit: {result.chosen.name}", "", f"Images: {result.size.describe()}.", "",
          f"Rule: {fit_report(result)['rule']}; budget {result.settings.budget_ms:g} ms per image.", "",
          *report_table(result), ""]
    (root / "fit.md").write_text("\n".join(md), encoding="utf-8")
    return cfg
