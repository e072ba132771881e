"""``siamstream`` command line: the entry point that reads the config once and wires the application."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry

from pipeline.anomaly.bank_meta import BankError
from pipeline.config import Config, ConfigError, load_config, replace
from pipeline.errors import user_errors
from pipeline.metrics import MetricsError
from pipeline.redact import RedactingFormatter, redact_text, redact_url
from pipeline.sinks import check_writable_dir
from pipeline.tracking.appearance import check_region

if TYPE_CHECKING:
    from pipeline.app import GoodSamples
    from pipeline.encoder import Encoder

log = logging.getLogger("siamstream")

# Packages of the `lab` extra (evaluation and benchmarks); `run`, `bank` and `demo` work without them.
LAB_PACKAGES = frozenset({"sklearn", "matplotlib", "trackeval", "motmetrics"})


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None), getattr(args, "set", None) or [])


def _counts(text: str, what: str, example: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers; a ConfigError naming ``what`` otherwise."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected whole numbers separated by commas, {example}") from None


def _print_json(obj: dict[str, object]) -> None:
    print(json.dumps(obj), flush=True)


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, args.set or [])
    print(f"{args.file}: OK ({len(cfg.__dataclass_fields__)} sections)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.outlock import OutputLock

    cfg = _config(args)
    if args.shard:
        if args.source:
            raise ConfigError("--shard divides the config's [[streams]] among engines; it does not go with --source")
        from pipeline.shards import assigned, owner, parse_shard

        place: list[tuple[int, int, dict[str, int]]] = []  # the latest assignment, for the metrics

        def load() -> Config:
            c = _config(args)
            index, count = parse_shard(args.shard, c.fleet.shards)
            mine = assigned(c.streams, index, count)
            log.info("shard %d of %d: %d of the %d streams: %s", index, count, len(mine), len(c.streams),
                     ", ".join(s.name for s in mine) or "none")
            place[:] = [(index, count, {s.name: owner(s.name, count) for s in c.streams})]
            return dataclasses.replace(c, streams=mine)

        cfg = load()
        out_dir = Path(args.out or cfg.output.dir)
        check_writable_dir(out_dir)
        with OutputLock(out_dir, "siamstream run"):
            return _run_streams_locked(cfg, out_dir, load, fleet=lambda: place[0], watch=args.config)
    uri = args.source or cfg.source.uri
    if cfg.gallery.enabled and cfg.gallery.broker and (args.source or not cfg.streams):
        raise ConfigError("[gallery] broker shares one gallery among the engines of a fleet, each with its own range "
                          "of global ids: list the cameras as [[streams]] and run each engine with --shard I/N (or "
                          "set broker = \"\" for one process)")
    if not uri and not cfg.streams:
        raise ConfigError("no source: pass --source FILE|DIR|CAMERA_INDEX|URL, set [source] uri, or list "
                          "[[streams]] in the config")
    out_dir = Path(args.out or cfg.output.dir)
    check_writable_dir(out_dir)  # before the source and the encoder: an unusable --out fails at once
    with OutputLock(out_dir, "siamstream run"):  # one run per output folder
        if cfg.streams and not args.source:
            return _run_streams_locked(cfg, out_dir, lambda: _config(args), watch=args.config)
        return _run_locked(cfg, uri, out_dir)


def _run_streams_locked(cfg: Config, out_dir: Path, load: Callable[[], Config],
                        fleet: Callable[[], tuple[int, int, dict[str, int]]] | None = None,
                        watch: str | None = None) -> int:
    """Every ``[[streams]]`` entry in this process (:class:`pipeline.engine.Engine`), into ``OUT/<name>/``. With
    ``fleet`` (``--shard``) it is one engine of several: ``fleet()`` gives its shard, the number of shards and
    every stream's shard, published as metrics at the start and after each reload. SIGHUP reads the stream list
    again, and so does a change of the config file ``watch`` with ``[fleet] watch_config_s`` set."""
    from pipeline import app
    from pipeline.config_watch import ConfigWatcher
    from pipeline.engine import Engine, StreamStatus
    from pipeline.metrics import PipelineMetrics, serve, write_snapshot
    from pipeline.runner import RunSummary, reload_on_sighup, stop_on_signals

    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, cfg.streams[0].name if cfg.streams else "default")
    # The models first, once for all streams: a bad one stops the run before any stream starts.
    encoder = app.build_encoder(cfg.encoder)
    reid = {}
    for s in cfg.streams:
        if s.tracker.reid_model and s.tracker.reid_model not in reid:
            built = app.build_reid_encoder(s.tracker, cfg.encoder)
            assert built is not None
            reid[s.tracker.reid_model] = built
    engine = Engine(cfg, out_dir, metrics, encoder, reid, fleet=fleet is not None,
                    shard=fleet()[0] if fleet is not None else 0)

    def load_and_publish() -> Config:
        new = load()  # a config that cannot be read raises here: the streams and their metrics stay as they are
        if fleet is not None:
            metrics.set_fleet(*fleet())
        return new

    if fleet is not None:
        metrics.set_fleet(*fleet())
    try:
        if cfg.metrics.enabled:
            serve(registry, cfg.metrics.address, cfg.metrics.port, states=engine.states)
        stop = threading.Event()
        watcher = (ConfigWatcher(Path(watch), cfg.fleet.watch_config_s, lambda: engine.reload(load_and_publish))
                   if watch and cfg.fleet.watch_config_s > 0 else None)
        with stop_on_signals(stop, on_stop=engine.stop_all), reload_on_sighup(lambda: engine.reload(load_and_publish)):
            if watcher is not None:
                watcher.start()
            try:
                status = engine.run(stop)
            finally:
                if watcher is not None:
                    watcher.close()
    finally:
        try:
            write_snapshot(registry, str(out_dir / "metrics.prom"))
        except MetricsError as exc:
            log.error("%s", exc)
    failed = [st for st in status.values() if st.state == "failed"]  # streams of the config in force at the end
    interrupted = any(st.state == "stopped" for st in status.values())

    def row(st: StreamStatus) -> dict[str, object]:
        sm = st.summary or RunSummary()
        return {"state": st.state, "frames": sm.frames, "fps": round(sm.fps, 2), "tracks": sm.tracks,
                "flagged": len(sm.flagged)}

    print(f"{'stream':<16} {'state':<8} {'frames':>7} {'fps':>6} {'tracks':>6} {'flagged':>7}  source")
    for st, note in [*((h, " (an earlier run of it, before a reload)") for h in engine.history),
                     *((st, "") for st in status.values())]:
        r = row(st)
        print(f"{st.name:<16} {st.state:<8} {r['frames']:>7} {r['fps']:>6} {r['tracks']:>6} {r['flagged']:>7}  "
              f"{st.source}{note}")
    print(f"outputs    {out_dir}/<stream>" + ("  (interrupted)" if interrupted else ""))
    for st in failed:
        print(f"siamstream: error: stream {st.name}: {st.error}", file=sys.stderr)
    every = [*engine.history, *status.values()]
    _print_json({"streams": {st.name: row(st) for st in status.values()},
                 "earlier": [{"name": h.name, **row(h)} for h in engine.history],
                 "frames": sum(st.summary.frames for st in every if st.summary is not None),
                 "failed": len(failed), "out": str(out_dir)})
    if failed:
        return 2
    return 130 if interrupted else 0


def _run_locked(cfg: Config, uri: str, out_dir: Path) -> int:
    from pipeline import app
    from pipeline.metrics import PipelineMetrics, serve, write_snapshot
    from pipeline.runner import RunSummary, run, stop_on_signals
    from pipeline.sources import FrameSource, open_source

    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, cfg.output.stream_name)
    summary: RunSummary | None = None
    stop = threading.Event()
    live: list[FrameSource] = []
    # From here on SIGINT/SIGTERM end the run cleanly, even while the models load: a live source that is down and
    # retrying is closed, which wakes the run so it can flush and exit.
    def close_live() -> None:
        for s in live:
            s.close()

    with stop_on_signals(stop, on_stop=close_live):
        try:
            source = open_source(uri, cfg.source)
            if source.is_live:
                live.append(source)
            try:
                encoder = app.build_encoder(cfg.encoder)
                # The tracker's own re-identification model, if any, and an encoder without the features
                # appearance_region needs: say so before anything binds or opens.
                reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
                if reid is None:
                    check_region(cfg.tracker.appearance_region, encoder.patch_grid, getattr(encoder, "path", ""))
                if cfg.metrics.enabled:
                    serve(registry, cfg.metrics.address, cfg.metrics.port)
                pipeline, sinks, reloader = app.build_stream(cfg, encoder, metrics, out_dir,
                                                             source.fps or cfg.source.fps_hint, reid,
                                                             app.build_gallery(cfg, reid))
            except BaseException:
                source.close()
                raise
            if reloader is not None:
                reloader.start()
            try:
                summary = run(source, pipeline, sinks, stop, cfg.output.progress_every_s,
                              read_ahead=cfg.source.read_ahead)
            finally:
                if reloader is not None:
                    reloader.stop()
        finally:
            # Whatever ended the run (its end, a signal, an error), its last values are written when they can be.
            try:
                write_snapshot(registry, str(out_dir / "metrics.prom"))
            except MetricsError as exc:
                if summary is not None:
                    raise
                log.error("%s", exc)
    print(f"source     {redact_url(uri)}")
    print(f"frames     {summary.frames} in {summary.seconds:.1f} s ({summary.fps:.1f} fps), "
          f"dropped {summary.dropped}, reconnects {summary.reconnects}")
    print(f"tracks     {summary.tracks} confirmed, {summary.inspected} inspected")
    print(f"flagged    {len(summary.flagged)}" + (f": track ids {summary.flagged}" if summary.flagged else ""))
    print(f"outputs    {out_dir}" + ("  (interrupted)" if summary.interrupted else ""))
    _print_json({"frames": summary.frames, "fps": round(summary.fps, 2), "tracks": summary.tracks,
                 "flagged": len(summary.flagged), "out": str(out_dir)})
    return 130 if summary.interrupted else 0


def _good_samples(source_uri: str, detect: bool, cfg: Config, encoder: Encoder) -> GoodSamples:
    """Good samples from a folder of part images, or detected and tracked in a video / image sequence."""
    from pipeline import app
    from pipeline.sources import open_source

    src = Path(source_uri)
    if src.is_dir() and not detect:
        samples = app.good_samples_from_images(src, encoder, cfg.bank.level)
    else:
        source = open_source(source_uri, cfg.source)
        try:
            # tracked as `run` tracks them: with the tracker's own re-identification model when one is set
            reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
            samples = app.good_samples_from_frames(source, cfg, encoder, reid)
        finally:
            source.close()
    if len(samples.features) == 0:
        raise BankError(f"{source_uri}: no good parts were found; check the detector settings ([detector] "
                        f"min_area, var_threshold) or pass a folder of part images")
    return samples


def cmd_bank_add(args: argparse.Namespace) -> int:
    from pipeline import app
    from pipeline.anomaly.bank import Bank, append_samples, bank_lock

    cfg = _config(args)
    with bank_lock(args.bank):
        bank = Bank.load(args.bank)
        cfg = replace(cfg, "bank", level=bank.meta.level)
        square = bank.meta.input_size[0] == bank.meta.input_size[1] == cfg.encoder.input_size
        encoder = app.build_encoder(cfg.encoder, size=None if cfg.encoder.model or square else bank.meta.input_size)
        bank.check_encoder(encoder.encoder_id, encoder.embedding_dim, encoder.patch_dim, str(args.bank),
                           patches=encoder.patch_grid[0] * encoder.patch_grid[1])
        before = len(bank)
        samples = _good_samples(args.source, args.detect, cfg, encoder)
        added = append_samples(bank, samples.features, redact_url(str(args.source)))  # stored: no secrets
        bank.save(args.bank)  # atomic: a running pipeline reloads it whole
    print(f"bank       {args.bank}: {before} + {added} vectors from {len(samples.features)} good crops of "
          f"{samples.parts} parts/images = {len(bank)}")
    print(f"threshold  {bank.meta.threshold:.4f} (kept: added good samples can only lower good parts' scores)")
    _print_json({"bank": str(args.bank), "added": added, "vectors": len(bank), "crops": bank.meta.crops,
                 "threshold": round(bank.meta.threshold, 6)})
    return 0


def cmd_bank_info(args: argparse.Namespace) -> int:
    import time

    from pipeline.anomaly.bank import Bank

    bank = Bank.load(args.bank)
    m = bank.meta
    when = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))  # noqa: E731
    rows = [
        ("vectors", f"{len(bank)} ({m.level} features of dimension {m.embedding_dim}; {m.crops} good crops)"),
        ("index", m.index_type + (f" (nlist {m.nlist}, nprobe {m.nprobe}" + (f", pq_m {m.pq_m}" if m.pq_m else "")
                                  + ")" if m.index_type.startswith("ivf") else "")),
        ("coreset", f"{m.coreset_fraction:.1%} of the good vectors kept; every one within {m.coreset_coverage:.4f}"),
        ("threshold", f"{m.threshold:.4f} for a false-alarm rate of {m.false_alarm_rate:g} "
                      f"({m.calibration_samples} samples of {m.calibration_groups} parts; 95% upper bound "
                      f"{m.false_alarm_upper_95:.3f})"),
        ("k", str(m.k)),
        ("scores", f"k-NN distance normalised per cell ({len(m.cell_mean)} cells: mean and spread of good samples)"
                   if m.cell_mean else "k-NN distance"),
        ("encoder", f"{m.encoder_id[:16]}, input {m.input_size[0]}x{m.input_size[1]}"),
        ("sources", redact_text(", ".join(m.sources)) or "-"),
        ("created", when(m.created)),
        ("updated", when(m.updated)),
    ]
    for key, value in rows:
        print(f"{key:<10} {value}")
    _print_json({"bank": str(args.bank), "vectors": len(bank), "level": m.level, "dim": m.embedding_dim,
                 "index": m.index_type, "threshold": round(m.threshold, 6), "crops": m.crops,
                 "cell_norm": bool(m.cell_mean), "encoder_id": m.encoder_id, "updated": m.updated})
    return 0


def cmd_bank_build(args: argparse.Namespace) -> int:
    from pipeline import app

    cfg = _config(args)
    out = Path(args.out)
    if out.exists() and not (out / "meta.json").is_file():
        raise BankError(f"{out}: exists and is not a bank; refusing to replace it, choose another --out")
    check_writable_dir(out.parent)
    encoder = app.build_encoder(cfg.encoder)
    samples = _good_samples(args.source, args.detect, cfg, encoder)
    bank = app.bank_from_samples(samples, cfg, encoder, redact_url(str(args.source)))  # stored: no secrets
    bank.save(args.out)
    m = bank.meta
    print(f"bank       {args.out}: {m.level} level, {len(bank)} vectors from {m.crops} good crops of "
          f"{samples.parts} parts/images")
    print(f"threshold  {m.threshold:.4f} (target false-alarm rate {m.false_alarm_rate:g} per crop, calibrated "
          f"out-of-fold on {m.calibration_samples} crops of {m.calibration_groups} parts; with that many parts "
          f"the rate is known only up to {m.false_alarm_upper_95:.3f} at 95% confidence)")
    _print_json({"bank": str(args.out), "level": m.level, "vectors": len(bank), "crops": m.crops,
                 "groups": samples.parts, "threshold": round(m.threshold, 6)})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    cfg = _config(args)
    result = run_demo(cfg, Path(args.out), frames=args.frames, bank_frames=args.bank_frames, seed=args.seed,
                      serve_metrics=not args.no_metrics)
    for line in result.report_lines():
        print(line)
    _print_json(result.as_json())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from encoders.train import train
    from pipeline import app

    cfg = _config(args)
    if args.recipe == "reid":
        return _train_reid(args, cfg)
    result = train([Path(d) for d in args.data], Path(args.out), app.train_config(cfg.train), resume=args.resume)
    whitened = ", whitened head" if cfg.train.whiten else ""
    if result.history:
        last = result.history[-1]
        print(f"run        {result.out_dir}: {result.epochs} epochs of {cfg.train.batches_per_epoch} batches "
              f"({cfg.train.p} classes x {cfg.train.k} images), {cfg.train.backbone}, {cfg.train.loss} loss{whitened}")
        print(f"loss       {result.final_loss:.4f} in the last epoch ({last.images_per_s:.0f} images/s)")
    else:
        print(f"run        {result.out_dir}: no epochs, {cfg.train.backbone} pretrained features{whitened}")
    print(f"time       {result.train_seconds:.1f} s of training")
    print(f"model      {result.model_path}; export it with: siamstream export {result.out_dir} --out model.onnx")
    _print_json({"epochs": result.epochs, "final_loss": round(result.final_loss, 6) if result.history else None,
                 "train_seconds": round(result.train_seconds, 3), "out": str(result.out_dir)})
    return 0


def _train_reid(args: argparse.Namespace, cfg: Config) -> int:
    from encoders.reid_train import train_reid
    from pipeline import app

    rcfg = app.reid_train_config(cfg.reid)
    result = train_reid([Path(d) for d in args.data], Path(args.out), rcfg, resume=args.resume)
    last = result.last_validation
    print(f"run        {result.out_dir}: {result.epochs} epochs, {rcfg.backbone} at {rcfg.height}x{rcfg.width}, "
          f"{result.train_images} images of {result.train_identities} identities")
    if last is not None:
        print(f"validation rank-1 {last.rank1:.4f}, mAP {last.mAP:.4f} on {result.validation_identities} held-out "
              f"identities (siamstream eval reid --data {result.out_dir / 'validation'})")
    print(f"time       {result.train_seconds:.1f} s of training")
    print(f"model      {result.model_path}; export it with: siamstream export {result.out_dir} --out reid.onnx")
    _print_json({"epochs": result.epochs, "final_loss": round(result.history[-1].loss, 6) if result.history else None,
                 "train_seconds": round(result.train_seconds, 3), "rank1": last.rank1 if last else None,
                 "mAP": last.mAP if last else None, "out": str(result.out_dir)})
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from encoders.adapt import AdaptConfig, adapt_to_onnx
    from encoders.data import list_images
    from lab.evaluation.anomaly_report import parse_size
    from pipeline.anomaly.images import image_size, read_rgb

    cfg = _config(args)
    enc = cfg.encoder
    out = Path(args.out)
    check_onnx_out(out)
    good = Path(args.good)
    if not good.is_dir():
        raise ConfigError(f"--good {good}: not a folder; pass the folder of good parts' images (e.g. train/good/rgb)")
    paths = list_images(good)
    if not paths:
        raise ConfigError(f"--good {good}: no images (PNG, JPEG, BMP, TIFF, PGM) in it")
    try:
        size = parse_size(args.size) if args.size else image_size(paths[0])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not enc.patch_stage:
        raise ConfigError("[encoder] patch_stage = 0: adaptation tunes the patch features; set patch_stage (e.g. 4)")
    log.info("adapt: %d good images from %s at %dx%d (height x width), %d steps", len(paths), good, *size, args.steps)
    images = [read_rgb(p, size) for p in paths]
    path, result = adapt_to_onnx(images, out, stage=enc.stage, pooling=enc.pooling, patch_stage=enc.patch_stage,
                                 patch_detail_stage=enc.patch_detail_stage,
                                 cfg=AdaptConfig(steps=args.steps, seed=args.seed), progress=log.info)
    print(f"model      {path}: EfficientNet-Lite0 stage {enc.stage}, patches from stage {enc.patch_stage}"
          f"{f' + {enc.patch_detail_stage}' if enc.patch_detail_stage else ''}, {size[0]}x{size[1]} px, adapted on "
          f"{result.images} good images")
    print(f"time       {result.seconds:.1f} s for {result.steps} steps")
    print(f"separation {result.final.get('separation', float('nan')):.3f} in the last tenth of the steps "
          f"(0 = every painted patch at the margin)")
    print(f"use it     siamstream bank build ... --set encoder.model={path}")
    _print_json({"out": str(path), "steps": result.steps, "seconds": round(result.seconds, 1),
                 "images": result.images, "final": {k: round(v, 5) for k, v in result.final.items()}})
    return 0


def cmd_anomaly_fit(args: argparse.Namespace) -> int:
    import tempfile

    from pipeline.anomaly.fit import FitSettings, fit_anomaly, fit_report, report_table, write_fit
    from pipeline.anomaly.manifest import load_manifest
    from pipeline.outlock import OutputLock

    cfg = _config(args)
    recipes = tuple(n.strip() for n in args.recipes.split(",") if n.strip()) if args.recipes else ()
    settings = FitSettings(budget_ms=args.budget_ms, budget_margin=args.budget_margin, per_image=args.per_image,
                           defect_size=args.defect_size,
                           seed=args.seed, adapt=not args.no_adapt, adapt_steps=args.adapt_steps, recipes=recipes)
    out = Path(args.out)
    check_writable_dir(out)
    rows = load_manifest(args.manifest, require_test=False)
    with OutputLock(out, "siamstream anomaly fit"), tempfile.TemporaryDirectory(prefix="siamstream-fit-") as tmp:
        result = fit_anomaly(rows, cfg, settings, Path(tmp))
        write_fit(result, out)  # copies the encoder out of the work folder before it goes
    print("\n".join(report_table(result)))
    report = fit_report(result)
    print(f"images     {result.size.describe()}")
    print(f"chosen     {result.chosen.name}: threshold {result.bank.meta.threshold:.4f} at a "
          f"{result.bank.meta.false_alarm_rate:.0%} false-alarm target from {report['calibration_images']} held-out "
          f"good images")
    candidates = cast("dict[str, dict[str, object]]", report["candidates"])
    print(f"written    {out}/config.toml, {out}/encoder.onnx, {out}/bank/, {out}/fit.json, {out}/fit.md")
    print(f"next       siamstream eval anomaly --config {out}/config.toml --manifest {args.manifest}")
    _print_json({"out": str(out), "chosen": result.chosen.name, "threshold": round(result.bank.meta.threshold, 6),
                 "budget_ms": settings.budget_ms, "seconds": report["seconds"],
                 "candidates": {n: {"probe_image_auroc": c["probe_image_auroc"], "ms_per_image": c["ms_per_image"]}
                                for n, c in candidates.items()}})
    return 0


def cmd_gallery_add(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from pipeline import app
    from pipeline.identity import add_names
    from pipeline.types import CropBatch

    cfg = _config(args)
    names_file = args.names or cfg.gallery.names
    if not names_file:
        raise ConfigError("gallery add: no names file; set [gallery] names (e.g. \"gallery/names.npz\") or pass "
                          "--names")
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    if reid is None:
        raise ConfigError("gallery add embeds the images with the re-identification model: set [tracker] reid_model")
    h, w = reid.input_size
    crops = []
    for image in args.images:
        bgr = cv2.imread(image, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConfigError(f"gallery add: {image}: not a readable image; give crops of the person or part (PNG, "
                              f"JPEG)")
        crops.append(cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    batch = CropBatch(np.stack(crops), np.tile(np.array([0, 0, w, h], np.float32), (len(crops), 1)))
    vectors = reid.embed(batch, with_patches=False).vectors
    enrolled = add_names(names_file, args.name, vectors, reid.encoder_id)
    print(f"enrolled   {args.name}: {len(crops)} image(s) added, {enrolled} in all, in {names_file}")
    _print_json({"name": args.name, "images": len(crops), "enrolled": enrolled, "names": str(names_file)})
    return 0


def check_onnx_out(out: Path) -> None:
    """``--out`` of a command that writes one ONNX file: a ``.onnx`` path in a folder that can be written, so no
    other file is overwritten and the error comes before the work."""
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; --out names the .onnx file to write, e.g. {out / 'model.onnx'}")
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"{out}: --out must name an .onnx file (e.g. {out.with_suffix('.onnx')}); another kind of "
                          f"file is never overwritten")
    check_writable_dir(out.parent)


def cmd_export(args: argparse.Namespace) -> int:
    from encoders.export import export_run

    out = Path(args.out) if args.out else Path(args.run_dir) / "model.onnx"
    if args.out:  # the default lies inside the run, which export_run checks (no folder is made for a wrong one)
        check_onnx_out(out)
    if args.int8 != bool(args.data):
        raise ConfigError("--int8 needs --data DIR (the run's training data, to calibrate on)" if args.int8 else
                          "--data is the calibration data of --int8; add --int8 or drop --data")
    if args.no_flip and Path(args.run_dir).is_dir():
        from encoders.reid_train import is_reid_run

        if not is_reid_run(Path(args.run_dir)):
            raise ConfigError(f"{args.run_dir}: --no-flip is for re-identification runs (siamstream train --recipe "
                              f"reid); other runs are exported as trained, without mirror-averaging: drop --no-flip")
    images: list[Path] = []
    if args.int8:  # the calibration data is read first: a wrong --data fails before anything is written
        from encoders.quantize import calibration_paths, validation_files
        from encoders.reid_train import is_reid_run, read_reid_data

        if Path(args.run_dir).is_dir() and not is_reid_run(Path(args.run_dir)):
            raise ConfigError(f"{args.run_dir}: --int8 is for re-identification runs (siamstream train --recipe "
                              f"reid); anomaly encoders stay float32 because their patch maps feed the bank")
        images = calibration_paths(read_reid_data([Path(d) for d in args.data]), validation_files(Path(args.run_dir)))
    report = export_run(Path(args.run_dir), out, flip=not args.no_flip)
    size = report.input_size if isinstance(report.input_size, int) else "x".join(map(str, report.input_size))
    print(f"model      {report.path}: D={report.embedding_dim}, {size} px input, "
          f"{report.metadata['siamstream.backbone']}")
    print(f"parity     ONNX Runtime vs PyTorch max abs {report.parity_max_abs:.2e}")
    figures: dict[str, object] = {"out": str(report.path), "parity_max_abs": report.parity_max_abs,
                                  "embedding_dim": report.embedding_dim, "input_size": report.input_size}
    if args.int8:
        from encoders.quantize import int8_path, quantize_int8

        q = quantize_int8(report.path, int8_path(report.path), images)
        print(f"int8       {q.path}: calibrated on {q.calibration_images} training crops; cosine distance to "
              f"float32 mean {q.mean_cosine_distance:.4f}, max {q.max_cosine_distance:.4f} on {q.check_images} others")
        figures |= {"int8": str(q.path), "int8_mean_cosine_distance": q.mean_cosine_distance,
                    "int8_max_cosine_distance": q.max_cosine_distance}
    _print_json(figures)
    return 0


def cmd_eval_oneshot(args: argparse.Namespace) -> int:
    from lab.evaluation.encoder_eval import oneshot
    from lab.evaluation.report import json_line, table

    cache = Path(args.cache or Path(_config(args).encoder.cache_dir).expanduser() / "oneshot-runs")
    result = oneshot(Path(args.model), Path(args.runs), cache, threads=args.threads)
    lo, hi = result.interval()
    print(table(["run", "correct", "trials", "accuracy"],
                [[n, c, t, c / t] for n, c, t in zip(result.runs, result.correct, result.trials, strict=True)]))
    print(f"overall    {result.accuracy:.4f} ({sum(result.correct)}/{sum(result.trials)}; 95% interval "
          f"{lo:.3f}-{hi:.3f}), nearest support image per query")
    print(json_line({"accuracy": round(result.accuracy, 4), "runs": len(result.runs),
                     "trials": sum(result.trials), "accuracy_ci95": [round(lo, 4), round(hi, 4)]}))
    return 0


def cmd_eval_verify(args: argparse.Namespace) -> int:
    from lab.evaluation.encoder_eval import verify
    from lab.evaluation.report import json_line

    out = Path(args.out) if args.out else None
    if out is not None:
        check_writable_dir(out)
    report = verify(Path(args.model), Path(args.data), out, threads=args.threads)
    r = report.result
    print(f"pairs      {r.genuine_pairs} genuine, {r.impostor_pairs} impostor ({report.identities} identities, "
          f"{report.images} images)")
    print(f"ROC AUC    {r.auc:.4f}")
    print(f"EER        {r.eer:.4f} at cosine distance threshold {r.threshold:.4f} (same identity when <=)")
    if report.roc_png:
        print(f"ROC plot   {report.roc_png}")
    print(json_line({"auc": round(r.auc, 4), "eer": round(r.eer, 4), "threshold": round(r.threshold, 4),
                     "genuine_pairs": r.genuine_pairs, "impostor_pairs": r.impostor_pairs}))
    return 0


def cmd_eval_reid(args: argparse.Namespace) -> int:
    from lab.evaluation.reid_eval import evaluate_reid
    from lab.evaluation.report import json_line, table

    out = Path(args.out) if args.out else None
    if out is not None:
        check_writable_dir(out)
    report = evaluate_reid(Path(args.model), Path(args.data), out, threads=args.threads)
    r = report.result
    print(table(["figure", "value"], [["rank-1", r.rank(1)], ["rank-5", r.rank(5)], ["rank-10", r.rank(10)],
                                      ["mAP", r.mAP], ["queries scored", float(r.queries)],
                                      ["gallery images", float(report.gallery)]]))
    t = report.thresholds()
    print(f"distances  cosine distance at the equal error rate ({t['eer']:.3f}): {t['threshold_eer']:.4f}; accepting "
          f"1% of impostor pairs: {t['threshold_far_1pct']:.4f} (pairs of the folder's images); within one camera's "
          f"recording (what [tracker] gates = \"video\" measures): keeping 99% of same-identity pairs "
          f"{t['same_camera_same_p99']:.4f}, accepting 1% of different identities {t['same_camera_different_p1']:.4f}")
    if out is not None:
        print(f"outputs    {report.cmc_png}, {report.matches_png}")
    print(json_line({**report.figures(), **t}))
    return 0


def cmd_eval_gallery(args: argparse.Namespace) -> int:
    from lab.evaluation.gallery_eval import evaluate_gallery
    from lab.evaluation.report import json_line, table

    if not 0 < args.max_false_merge < 1:
        raise ConfigError(f"--max-false-merge {args.max_false_merge}: give a rate between 0 and 1, e.g. 0.05")
    report = evaluate_gallery(Path(args.model), Path(args.data), threads=args.threads,
                              max_false_merge=args.max_false_merge)
    f = report.figures()
    print(table(["figure (test identities)", "value"], [
        ["re-entries given the right global id", f["reentry_right"]],
        ["tracks merged into another identity", f["false_merge"]],
        ["first appearances given a new id", f["first_right"]], ["track threshold (cosine distance)", f["threshold"]],
        ["track margin", f["margin"]],
        ["enrolled identities' tracks named right", f["name_right"]], ["other tracks given a name", f["false_name"]],
        ["name threshold (cosine distance)", f["name_threshold"]]]))
    print(f"split      {report.calibration_identities} identities choose the thresholds, {report.test_identities} "
          f"others are measured")
    print(json_line(f))
    return 0


def cmd_eval_anomaly(args: argparse.Namespace) -> int:
    from lab.evaluation.anomaly_report import parse_size, report_lines, run_evaluation
    from lab.evaluation.report import json_line, table

    cfg = _config(args)
    try:
        size = parse_size(args.size) if args.size else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.synthetic:
        from lab.evaluation.anomaly_report import run_synthetic

        score = run_synthetic(cfg, Path(args.manifest), size=size, model=args.model)
        print(table(["figure (synthetic defects on validation images)", "value"], [
            ["image AUROC", score.image_auroc], ["pixel AP", score.pixel_ap],
            *[[f"AUROC {kind}", v] for kind, v in score.per_kind_auroc.items()],
            ["bank vectors", float(len(score.bank))]]))
        print(json_line({"synthetic_image_auroc": round(score.image_auroc, 4),
                         "synthetic_pixel_ap": round(score.pixel_ap, 4),
                         "per_kind_auroc": {k: round(v, 4) for k, v in score.per_kind_auroc.items()},
                         "bank_vectors": len(score.bank)}))
        return 0
    out = Path(args.out) if args.out else None
    if out is not None:
        check_writable_dir(out)
    ev, _bank = run_evaluation(cfg, Path(args.manifest), out, size=size, model=args.model)
    for line in report_lines(ev):
        print(line)
    if out is not None:
        print(f"outputs    {out}: scores.csv, calibration.csv, histograms.png, maps.png, bank/")
    print(json_line(ev.figures()))
    return 0


def cmd_eval_mot(args: argparse.Namespace) -> int:
    from lab.evaluation.mot_metrics import check_ground_truth, evaluate, write_mot_txt
    from lab.evaluation.mot_plots import save_timeline_png
    from lab.evaluation.mot_run import track_sequence
    from lab.evaluation.motchallenge import load_sequence
    from lab.evaluation.report import json_line, table
    from pipeline import app
    from pipeline.detect.motchallenge import MotDetectionFile
    from pipeline.sinks import AnnotatedVideoSink
    from pipeline.types import FrameResult

    cfg = _config(args)
    seq = load_sequence(Path(args.seq))
    # The ground truth and its protocol are checked before the tracking: a bad file is said up front.
    protocol = check_ground_truth(seq, None if args.protocol == "auto" else args.protocol) if seq.gt_path else None
    out = Path(args.out) if args.out else Path(cfg.output.dir) / "mot" / seq.name
    check_writable_dir(out)
    det = MotDetectionFile(seq.det_path, min_score=args.min_score)
    # The tracker's appearance: the re-identification model when one is set, else the (anomaly) encoder's vectors.
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    encoder = reid if reid is not None else app.build_encoder(cfg.encoder)
    if reid is None:
        check_region(cfg.tracker.appearance_region, encoder.patch_grid, getattr(encoder, "path", ""))  # before output
    video = AnnotatedVideoSink(out / "annotated.mp4", fps=seq.frame_rate)

    def on_frame(result: FrameResult) -> None:
        if result.frame.index < args.video_frames:
            video.write(result)

    log.info("tracking %s: %d frames, %d detections", seq.name, seq.length, len(det))
    try:
        run = track_sequence(seq, det, encoder, app.build_tracker(cfg.tracker), cfg.encoder.crop_padding, on_frame,
                             fill_gaps=cfg.output.mot_fill_gaps, appearance_region=cfg.tracker.appearance_region,
                             color_weight=cfg.tracker.color_weight, reid=reid is not None)
    finally:
        video.close()
    tracks_txt = write_mot_txt(out / f"{seq.name}.txt", run.rows)
    save_timeline_png(run.rows, out / "timeline.png", title=f"{seq.name}: siamstream track ids")
    print(f"tracks     {tracks_txt} ({len(run.rows)} boxes, {len(set(run.rows[:, 1].astype(int)))} ids), "
          f"{out / 'timeline.png'}, {out / 'annotated.mp4'} (first {min(args.video_frames, run.frames)} frames)")
    print(f"speed      tracker {run.tracker_fps:.0f} frames/s; with the encoder {run.fps_with_embedder:.1f} frames/s, "
          f"{run.crops_per_s:.0f} crops/s ({run.crops} crops, encoder on {encoder.provider})")
    if seq.gt_path is None:
        print(f"{seq.name} has no gt/gt.txt: nothing to score")
        print(json_line({}))
        return 0
    s = evaluate(None, run.rows, seq, protocol=protocol)
    print(f"scored     TrackEval, {s.protocol} protocol; motmetrics on the same rows")
    print(table(["metric", "TrackEval", "motmetrics"], [
        ["HOTA", s.hota, float("nan")], ["DetA", s.deta, float("nan")], ["AssA", s.assa, float("nan")],
        ["MOTA", s.mota, s.motmetrics.mota], ["IDF1", s.idf1, s.motmetrics.idf1],
        ["IDSW", float(s.idsw), float(s.motmetrics.idsw)], ["FP", float(s.fp), float(s.motmetrics.fp)],
        ["FN", float(s.fn), float(s.motmetrics.fn)],
    ]))
    print(json_line({"HOTA": round(s.hota, 2), "MOTA": round(s.mota, 2), "IDF1": round(s.idf1, 2),
                     "IDSW": int(s.idsw), "protocol": s.protocol}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "encoder":
        from lab.benchmarks import encoder

        return encoder.main(batch=args.batch, threads=args.threads or 2, repeats=args.repeats, device=args.device)
    if args.bench == "oneshot":
        from lab.benchmarks import oneshot as bench_oneshot

        return bench_oneshot.main(epochs=args.epochs, work_dir=Path(args.out) if args.out else None,
                                  threads=args.threads)
    if args.bench == "verify":
        from lab.benchmarks import verify as bench_verify

        return bench_verify.main(folds=args.folds, epochs=args.epochs, out_dir=Path(args.out) if args.out else None,
                                 recipe=args.recipe,
                                 threads=args.threads)
    if args.bench == "anomaly":
        from lab.benchmarks import anomaly as bench_anomaly

        base = replace(_config(args), "bank", false_alarm_rate=args.false_alarm_rate)
        return bench_anomaly.main(base, baselines=not args.no_baselines, recipe=args.recipe, seeds=args.seeds)
    if args.bench == "reid":
        from lab.benchmarks import reid as bench_reid

        return bench_reid.main(_config(args), out_dir=Path(args.out) if args.out else None, epochs=args.epochs,
                               threads=args.threads or 2)
    if args.bench == "streams":
        from lab.benchmarks import streams
        from lab.benchmarks.data import shared_data

        config = args.config or str(streams.DEFAULT_CONFIG)
        config_args = ["--config", config, *(x for s in args.set or [] for x in ("--set", s))]
        counts = _counts(args.streams, "bench streams: --streams", "e.g. 1,2,4,8")
        if min(counts) < 1:
            raise ConfigError(f"bench streams: --streams {args.streams!r}: give counts >= 1, e.g. 1,2,4,8")
        return streams.main(load_config(config, args.set or []), shared_data("conveyor_video", "cutted.avi"),
                            None if args.no_people else shared_data("mot15", "PETS09-S2L1"), config_args, counts,
                            frames=args.frames, processes=not args.no_processes)
    if args.bench == "bank":
        from lab.benchmarks import bank as bench_bank
        from lab.benchmarks.data import shared_data
        from pipeline import app

        sizes = _counts(args.sizes, "bench bank: --sizes", "e.g. 10000,100000")
        if min(sizes) < 1000:
            raise ConfigError(f"bench bank: --sizes {args.sizes!r}: give vector counts >= 1000, e.g. 10000,100000")
        cfg = _config(args)
        return bench_bank.main(cfg, app.build_encoder(cfg.encoder), shared_data("mvtec3d_tire"), sizes,
                               query_crops=args.queries)
    if args.bench == "soak":
        from lab.benchmarks import soak

        return soak.main(_config(args), frames=args.frames, sample_every=args.sample_every,
                         out_dir=Path(args.out) if args.out else None)
    if args.bench == "mot":
        from lab.benchmarks import mot

        peers = tuple(p for p in args.peers.split(",") if p) if args.peers else mot.PEERS
        return mot.main(_config(args), sequences=tuple(Path(p) for p in args.seq or ()), peers=peers,
                        protocol=None if args.protocol == "auto" else args.protocol)
    raise AssertionError(args.bench)


def _at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``minimum..maximum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            span = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number {span}")
        return value

    return parse


THREADS = _at_least(0, 1024)  # CPU threads; 0: the library's default


def _seed(text: str) -> int:
    """A scene seed: a whole number from 0 (refused at parse time, before any work)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed; give a whole number >= 0, e.g. --seed 3")
    return value


MOT_PROTOCOLS = ("auto", "MOT15", "MOT17", "MOT20")
USER_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                              errno.ENOSPC, errno.EEXIST})  # "auto" and lab.evaluation.mot_metrics.PROTOCOLS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siamstream", description="Watch video streams with Siamese networks: "
                                "track objects, flag defective parts, export Prometheus metrics.")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, config_required: bool = False) -> None:
        sp.add_argument("--config", required=config_required, help="config file (TOML), e.g. config.toml")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override one config key (repeatable), e.g. --set tracker.min_hits=2")

    def protocol_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--protocol", choices=MOT_PROTOCOLS, default="auto",
                        help="the benchmark's evaluation protocol (auto: MOT17, or MOT20 for MOT20-* sequences, "
                             "when the ground truth has class and visibility columns, else MOT15)")

    demo = sub.add_parser("demo", help="run everything on an embedded synthetic production line")
    common(demo)
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--frames", type=_at_least(1), default=600, help="frames of the inspected scene (default 600)")
    demo.add_argument("--bank-frames", type=_at_least(1), default=1200,
                      help="frames of the good-parts scene used to build the bank (default 1200)")
    demo.add_argument("--seed", type=_seed, default=0,
                      help="which embedded line: the scene, its parts and their defects (default 0)")
    demo.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the pipeline on a video file, image folder, camera or URL")
    common(run, config_required=True)
    run.add_argument("--source", help="video file, image folder, camera index (0) or rtsp/http URL")
    run.add_argument("--out", help="output directory (default: [output] dir)")
    run.add_argument("--shard", metavar="I/N|auto",
                     help="one of N engines sharing the [[streams]] list: run only the streams rendezvous hashing "
                          "gives shard I; auto: I from the host name's -ORDINAL (a StatefulSet pod), N from "
                          "[fleet] shards")
    run.set_defaults(func=cmd_run)

    bank = sub.add_parser("bank", help="build the bank of known-good samples")
    bank_sub = bank.add_subparsers(dest="bank_command", required=True)
    build = bank_sub.add_parser("build", help="build a bank from good images (a folder) or a video of good parts")
    common(build)
    build.add_argument("--source", required=True, help="folder of good part images, or a video of good parts")
    build.add_argument("--out", required=True, help="bank directory to write")
    build.add_argument("--detect", action="store_true",
                       help="for an image folder: detect and track parts in it as a sequence")
    build.set_defaults(func=cmd_bank_build)
    add = bank_sub.add_parser("add", help="append good samples to a bank in place (a running pipeline reloads it)")
    common(add)
    add.add_argument("bank", help="bank directory to extend")
    add.add_argument("--source", required=True, help="folder of good part images, or a video of good parts")
    add.add_argument("--detect", action="store_true",
                     help="for an image folder: detect and track parts in it as a sequence")
    add.set_defaults(func=cmd_bank_add)
    info = bank_sub.add_parser("info", help="what a bank holds: size, index, threshold, encoder, sources, age")
    info.add_argument("bank", help="bank directory")
    info.set_defaults(func=cmd_bank_info)

    train = sub.add_parser("train", help="train a Siamese encoder on a folder (or .zip) of class folders")
    common(train)
    train.add_argument("--data", required=True, action="append",
                       help="folder of class folders, or a .zip of one ([train] depth); with --recipe reid a "
                            "re-identification folder; repeat to merge several")
    train.add_argument("--out", required=True, help="run directory: checkpoint, logs, final weights")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--recipe", choices=("metric", "reid"), default="metric",
                       help="metric: a folder of classes, [train] (default); reid: person re-identification crops "
                            "(Market-1501, CUHK03 or identity folders), [reid]")
    train.set_defaults(func=cmd_train)

    adapt = sub.add_parser("adapt", help="adapt the built-in patch encoder to a line's good parts (no defect images) "
                                         "and export it to ONNX for the anomaly stage")
    common(adapt)
    adapt.add_argument("--good", required=True, help="folder of good parts' images, e.g. tire train/good/rgb")
    adapt.add_argument("--out", required=True, help="ONNX file to write; then set [encoder] model to it")
    adapt.add_argument("--size", help="input HEIGHTxWIDTH the images are resized to (default: their own size); "
                                      "build the bank and score at the same size")
    adapt.add_argument("--steps", type=int, default=800, help="Adam steps (default 800: about 5 minutes on 2 CPU "
                                                              "cores at 560x420)")
    adapt.add_argument("--seed", type=int, default=0)
    adapt.set_defaults(func=cmd_adapt)

    gal_cmd = sub.add_parser("gallery", help="the cross-camera gallery's enrolled names")
    gal_sub = gal_cmd.add_subparsers(dest="gallery_command", required=True)
    gadd = gal_sub.add_parser("add", help="enrol a named person or part from a few images (one is enough): tracks "
                                          "that match carry the name in identities.jsonl")
    common(gadd, config_required=True)
    gadd.add_argument("name", help="the name tracks that match get")
    gadd.add_argument("images", nargs="+", help="crops of the person or part")
    gadd.add_argument("--names", help="names file to add to (default: [gallery] names)")
    gadd.set_defaults(func=cmd_gallery_add)

    anomaly = sub.add_parser("anomaly", help="fit the anomaly stage to a new line from its good images")
    anomaly_sub = anomaly.add_subparsers(dest="anomaly_command", required=True)
    fit = anomaly_sub.add_parser("fit", help="choose the anomaly recipe on synthetic defects painted on held-out good "
                                             "images, then write a config, the encoder and the bank")
    common(fit)
    fit.add_argument("--manifest", required=True,
                     help="CSV with split,is_anomaly,image (train and validation good rows are used; test is not read)")
    fit.add_argument("--out", required=True, help="folder for config.toml, encoder.onnx, bank/, fit.json, fit.md")
    fit.add_argument("--budget-ms", type=float, default=50.0,
                     help="most milliseconds per image (embed, search, map) on this machine (default 50)")
    fit.add_argument("--budget-margin", type=float, default=0.1,
                     help="a recipe counts as within the budget only this share under it (default 0.1)")
    fit.add_argument("--defect-size", type=float, default=0.08,
                     help="synthetic defect extent as a fraction of the object's shorter side (default 0.08)")
    fit.add_argument("--per-image", type=_at_least(1), default=4,
                     help="synthetic defects per validation image (default 4)")
    fit.add_argument("--recipes", help="comma-separated recipe names to try (default: all)")
    fit.add_argument("--no-adapt", action="store_true", help="skip the recipes that adapt the trunk (minutes each)")
    fit.add_argument("--adapt-steps", type=int, default=800, help="adaptation steps (default 800)")
    fit.add_argument("--seed", type=int, default=0, help="seeds the synthetic defects, coresets and adaptation")
    fit.set_defaults(func=cmd_anomaly_fit)

    export = sub.add_parser("export", help="export a trained run to ONNX (with a parity check)")
    export.add_argument("run_dir", help="run directory written by siamstream train")
    export.add_argument("--out", help="ONNX file to write (default RUN_DIR/model.onnx)")
    export.add_argument("--int8", action="store_true",
                        help="re-identification runs: also write OUT.int8.onnx, quantised for CPU hosts (about twice "
                             "the crops/s), calibrated on --data (the run's training data, validation identities left "
                             "out) and checked against the float32 model")
    export.add_argument("--data", action="append", default=[], metavar="DIR",
                        help="with --int8: the training data folder(s) the run was trained on (repeatable)")
    export.add_argument("--no-flip", action="store_true",
                        help="re-identification runs: embed each crop alone (by default its embedding is averaged "
                             "with its mirror image's, in the graph: better matches at half the crops/s)")
    export.set_defaults(func=cmd_export)

    ev = sub.add_parser("eval", help="evaluate an exported encoder (one-shot, verification) or the tracker (MOT)")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    one = ev_sub.add_parser("oneshot", help="N-way one-shot accuracy on Lake's runs (Omniglot all_runs.zip)")
    common(one)
    one.add_argument("--model", required=True, help="ONNX encoder (siamstream export)")
    one.add_argument("--runs", required=True, help="all_runs.zip or its extracted folder (runXX/class_labels.txt)")
    one.add_argument("--cache", help="where to extract an archive (default: [encoder] cache_dir/oneshot-runs)")
    one.add_argument("--threads", type=THREADS, default=0, help="ONNX Runtime CPU threads (0: its default)")
    one.set_defaults(func=cmd_eval_oneshot)
    ver = ev_sub.add_parser("verify", help="verification ROC / EER on held-out identities (a folder per identity)")
    ver.add_argument("--model", required=True, help="ONNX encoder (siamstream export)")
    ver.add_argument("--data", required=True, help="folder of identity folders, e.g. att_faces/testing")
    ver.add_argument("--out", help="folder for roc.png")
    ver.add_argument("--threads", type=THREADS, default=0, help="ONNX Runtime CPU threads (0: its default)")
    ver.set_defaults(func=cmd_eval_verify)

    rid = ev_sub.add_parser("reid", help="person re-identification: CMC rank-1/5/10 and mAP on a Market-1501 style "
                                          "folder (query/, bounding_box_test/)")
    rid.add_argument("--model", required=True, help="ONNX re-identification encoder (siamstream export)")
    rid.add_argument("--data", required=True, help="folder with query/ and bounding_box_test/ (Market-1501 names)")
    rid.add_argument("--out", help="folder for cmc.png and matches.png")
    rid.add_argument("--threads", type=THREADS, default=0, help="ONNX Runtime CPU threads (0: its default)")
    rid.set_defaults(func=cmd_eval_reid)
    gal = ev_sub.add_parser("gallery", help="cross-camera identities and one-shot names from the re-identification "
                                            "gallery, on held-out identities (a Market-1501 style folder)")
    gal.add_argument("--model", required=True, help="ONNX re-identification encoder (siamstream export)")
    gal.add_argument("--data", required=True, help="folder with query/ and bounding_box_test/ of identities the model "
                                                   "never trained on (e.g. RUN/validation)")
    gal.add_argument("--max-false-merge", type=float, default=0.05,
                     help="the most false merges (false names) allowed on the calibration half of the identities, "
                          "where the thresholds are chosen (default 0.05)")
    gal.add_argument("--threads", type=THREADS, default=0, help="ONNX Runtime CPU threads (0: its default)")
    gal.set_defaults(func=cmd_eval_gallery)

    anom = ev_sub.add_parser("anomaly", help="anomaly stage on a labelled image manifest: bank from train, threshold "
                             "from validation, image/pixel AUROC, pixel AP, AUPRO, recall and false alarms on test")
    common(anom)
    anom.add_argument("--manifest", required=True, help="CSV: split,is_anomaly,image[,mask][,label] (paths relative "
                      "to it), e.g. ../shared/data/mvtec3d_tire/manifest.csv")
    anom.add_argument("--out", help="folder for scores.csv, histograms.png, maps.png and the bank")
    anom.add_argument("--model", help="ONNX encoder with a 'patches' output (default: [encoder] model, else the "
                      "built-in one)")
    anom.add_argument("--size", help="built-in encoder input HEIGHTxWIDTH (default: the images' own size)")
    anom.add_argument("--synthetic", action="store_true",
                      help="no defect images needed: score the settings on small synthetic defects painted on the "
                           "validation images (image AUROC, pixel AP, ms per image); test rows are not read")
    anom.set_defaults(func=cmd_eval_anomaly)

    mot = ev_sub.add_parser("mot", help="track a MOTChallenge sequence with its det.txt; HOTA, MOTA, IDF1, IDSW")
    common(mot)
    mot.add_argument("--seq", required=True, help="sequence folder: seqinfo.ini, det/det.txt, gt/gt.txt, img1/ "
                                                  "or one video file")
    mot.add_argument("--out", help="output folder (default: [output] dir/mot/SEQUENCE)")
    mot.add_argument("--min-score", type=float, default=0.0, help="ignore detections below this score")
    mot.add_argument("--video-frames", type=_at_least(0), default=300,
                     help="frames in the annotated video (default 300)")
    protocol_option(mot)
    mot.set_defaults(func=cmd_eval_mot)

    bench = sub.add_parser("bench", help="benchmarks: a table, then one JSON line of figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    b_enc = bench_sub.add_parser("encoder", help="the ONNX Runtime and PyTorch engines: parity and crops per second")
    b_enc.add_argument("--batch", type=_at_least(1), default=32)
    b_enc.add_argument("--threads", type=THREADS, default=2, help="CPU threads for both engines (default 2)")
    b_enc.add_argument("--repeats", type=_at_least(1), default=20)
    b_enc.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="cuda: PyTorch on the GPU, ONNX Runtime on its CUDA provider when it has one")
    b_one = bench_sub.add_parser("oneshot", help="train on Omniglot background sets, 20-way one-shot on all_runs")
    b_ver = bench_sub.add_parser("verify", help="AT&T faces verification, cross-validated over subjects")
    b_ver.add_argument("--folds", type=int, default=5)
    b_ver.add_argument("--recipe", choices=("whiten", "triplet"), default="whiten",
                       help="whiten: pretrained features + a within-class whitening head fitted in closed form "
                            "(default); triplet: fine-tuned with batch-hard triplets")
    for b in (b_one, b_ver):
        b.add_argument("--epochs", type=int, help="override the recipe's epochs (shorter runs for a quick look; "
                                                  "not for bench verify's closed-form whiten recipe)")
        b.add_argument("--out", help="keep the run, model and plots here (default: a temporary folder)")
        b.add_argument("--threads", type=THREADS, default=0, help="torch / ONNX Runtime CPU threads (0: default)")
    b_mot = bench_sub.add_parser("mot", help="MOTChallenge sequences (default: MOT15 PETS09-S2L1 and TUD-Campus): "
                                             "siamstream vs ByteTrack, DeepSORT, boxmot's trackers and IoU-only on "
                                             "the same detections")
    common(b_mot)
    b_mot.add_argument("--peers", help="comma-separated peers to run (default: iou,bytetrack,deepsort,boxmot; boxmot "
                                       "runs in its own environment, set up on first use)")
    b_mot.add_argument("--seq", action="append", help="a sequence folder with det/det.txt and gt/gt.txt (repeatable; "
                                                      "default: PETS09-S2L1 and TUD-Campus from the shared data)")
    protocol_option(b_mot)
    b_anom = bench_sub.add_parser("anomaly", help="MVTec 3D-AD tire: siamstream's anomaly recipe vs a PatchCore-style "
                                                  "baseline; image/pixel AUROC, pixel AP, recall at a calibrated "
                                                  "threshold")
    common(b_anom)
    b_anom.add_argument("--no-baselines", action="store_true", help="only siamstream's recipe")
    b_anom.add_argument("--recipe", help="fit with this recipe only (by name): no selection")
    b_anom.add_argument("--seeds", type=_at_least(1), default=3, help="whole fits, seeds 0..N-1 (default 3)")
    b_anom.add_argument("--false-alarm-rate", type=float, default=0.02,
                        help="[bank] false_alarm_rate of the fits and the baseline (default 0.02)")
    b_reid = bench_sub.add_parser("reid", help="person re-identification: train the default [reid] recipe on "
                                               "Market-1501 less 100 held-out identities, score it and the built-in "
                                               "encoder on them, crops/s in ONNX Runtime")
    common(b_reid)
    b_reid.add_argument("--out", help="keep the run here; the model is left at OUT/reid.onnx (default: a temporary "
                                      "folder)")
    b_reid.add_argument("--epochs", type=int, help="override [reid] epochs (a shorter run for a quick look)")
    b_reid.add_argument("--threads", type=THREADS, default=2, help="torch and ONNX Runtime CPU threads (default 2)")
    b_soak = bench_sub.add_parser("soak", help="the synthetic line looped through the default config with a bank, "
                                               "alerts and metrics on: memory and open-file slopes, frames lost, "
                                               "alerts delivered")
    common(b_soak)
    b_soak.add_argument("--frames", type=_at_least(1), default=200_000, help="frames to run (default 200000)")
    b_soak.add_argument("--sample-every", type=_at_least(1), default=1000, help="frames between samples (default 1000)")
    b_soak.add_argument("--out", help="keep the run's outputs here (default: a temporary folder)")
    b_streams = bench_sub.add_parser("streams", help="N streams (the conveyor video and PETS09-S2L1 in turn) in one "
                                                     "process against the decode and encoder floors and N processes")
    common(b_streams)
    b_streams.add_argument("--streams", default="1,2,4,8", help="stream counts, comma-separated (default 1,2,4,8)")
    b_streams.add_argument("--frames", type=_at_least(1), default=300, help="frames per stream (default 300)")
    b_streams.add_argument("--no-people", action="store_true", help="conveyor streams only (no PETS09-S2L1)")
    b_streams.add_argument("--no-processes", action="store_true", help="skip the N one-stream processes")
    b_bank = bench_sub.add_parser("bank", help="the anomaly bank at 10k, 100k and 1M real patch vectors, each index "
                                               "type: build time, memory, per-crop p50/p99, recall@1")
    common(b_bank)
    b_bank.add_argument("--sizes", default="10000,100000,1000000",
                        help="bank sizes in vectors, comma-separated (default 10000,100000,1000000)")
    b_bank.add_argument("--queries", type=_at_least(1), default=200,
                        help="query crops from held-out images (default 200)")
    for b in (b_enc, b_one, b_ver, b_mot, b_anom, b_reid, b_soak, b_streams, b_bank):
        b.set_defaults(func=cmd_bench)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    check.set_defaults(func=cmd_config_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    # FAISS logs each CPU build it tries and fails to load (AVX-512, AVX2) with the import error: seven lines that
    # read like a fault on every start. What it finally loads is no concern of the user's.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        if exc.name not in LAB_PACKAGES:
            raise
        print(f"siamstream: error: this command needs {exc.name}, which comes with the evaluation tools: "
              f"pip install 'siamstream[lab]'", file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, user_errors()):
            print(f"siamstream: error: {redact_text(str(exc))}", file=sys.stderr)
            return 2
        # A path the user gave that cannot be read or written (a folder where a file goes, no permission, a
        # missing parent, a full disk): the operating system's words, one line.
        if isinstance(exc, OSError) and exc.filename is not None and exc.errno in USER_PATH_ERRNOS:
            print(f"siamstream: error: {redact_text(str(exc.filename))}: {exc.strerror}; check the path (and that it "
                  f"can be written, for an output)", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("siamstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
