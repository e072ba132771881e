"""Several streams in one process: one model in memory, every core busy, faults kept to their stream.

:class:`Engine` runs each ``[[streams]]`` entry (:class:`pipeline.config.StreamConfig`) in a thread of its own,
with its own reader thread decoding and detecting ahead (:class:`pipeline.read_ahead.ReadAhead`), its own tracker,
anomaly stage, bank (hot-reloaded), sinks and metric series (the ``stream`` label), writing to ``OUT/<name>/``.
The encoders are shared: each is owned by a :class:`pipeline.batching.BatchingEncoder`, which embeds the crops of
the frames ready across streams in one call.

A stream that cannot start (its source, its bank, its output folder) or that fails while running stops alone:
its state becomes ``failed`` with the one-line reason, shown in ``/readyz`` and in ``siamstream_stream_up``, and
the others go on. The run ends when every stream has ended or ``stop`` is set (SIGINT/SIGTERM: every stream
processes the frames it read, then flushes its outputs).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import app
from pipeline.anomaly.bank_cache import BankCache
from pipeline.anomaly.reload import BankReloader
from pipeline.batching import BatchingEncoder, SharedEncoder
from pipeline.config import Config, ConfigError, StreamConfig
from pipeline.encoder import Encoder
from pipeline.errors import user_errors
from pipeline.gallery import Gallery
from pipeline.gallery_sync import GallerySync
from pipeline.metrics import PipelineMetrics
from pipeline.redact import redact_text, redact_url
from pipeline.runner import RunSummary, run
from pipeline.sinks import check_writable_dir
from pipeline.sources import FrameSource, open_source

log = logging.getLogger(__name__)

STATES = ("starting", "running", "ended", "stopped", "failed")


@dataclass
class StreamStatus:
    """Where one stream stands: ``starting``, ``running``, ``ended`` (its source ended), ``stopped`` (by a
    signal) or ``failed`` (``error`` says why)."""

    name: str
    source: str  # redacted: no password or token
    state: str = "starting"
    error: str = ""
    summary: RunSummary | None = None

    def as_dict(self) -> dict[str, str]:
        doc = {"state": self.state, "source": self.source}
        if self.error:
            doc["error"] = self.error
        if self.summary is not None:
            doc["frames"] = str(self.summary.frames)
        return doc


@dataclass
class _Shared:
    """What every stream shares: the encoders, each behind its batcher, the galleries and the banks."""

    parts: BatchingEncoder
    reid: dict[str, BatchingEncoder] = field(default_factory=dict)  # by [tracker] reid_model
    galleries: dict[str, Gallery] = field(default_factory=dict)  # by [tracker] reid_model, with [gallery] on
    syncs: list[GallerySync] = field(default_factory=list)  # the galleries shared with a fleet ([gallery] broker)
    banks: BankCache = field(default_factory=BankCache)  # streams naming one bank share one copy

    def close(self) -> None:
        self.parts.close()
        for b in self.reid.values():
            b.close()
        for s in self.syncs:
            s.close()


@dataclass
class _Running:
    """A stream's thread and what stops it."""

    config: StreamConfig
    stop: threading.Event
    thread: threading.Thread
    source: FrameSource | None = None  # once opened (a live one is closed to wake a read blocked on it)


class Engine:
    """Runs ``cfg.streams`` into ``out_dir/<name>/`` with one shared ``encoder`` (and one re-identification
    encoder per distinct ``[tracker] reid_model``, from ``reid_encoders``).

    The stream list can change while it runs (:meth:`reload`, on SIGHUP): added streams start, removed ones
    process what they read, flush and close, changed ones do that and start again with their new settings (the
    outputs of the run before are kept, renamed ``OUT/<name>.<time>``), unchanged ones go on untouched.

    Args:
        cfg: the whole config; each stream runs with :meth:`StreamConfig.config` of it.
        fleet: this engine is one shard of several (``--shard``): it runs until stopped, with or without streams.
        out_dir: the run's folder (each stream writes to a folder of its name under it).
        metrics: the first stream's series on the run's registry; each stream gets its own
            (:meth:`PipelineMetrics.for_stream`).
        encoder: the part encoder, shared.
        reid_encoders: the re-identification encoders the streams name, by model path.
    """

    def __init__(self, cfg: Config, out_dir: Path, metrics: PipelineMetrics, encoder: Encoder,
                 reid_encoders: dict[str, Encoder] | None = None, fleet: bool = False, shard: int = 0) -> None:
        if not cfg.streams and not fleet:
            raise ValueError("Engine needs [[streams]] in the config")
        self.fleet = fleet  # one shard of several: runs until stopped, even with no stream of its own
        self.cfg = cfg
        self.out_dir = out_dir
        self.metrics = metrics
        fam = metrics.families
        wait = cfg.encoder.batch_wait_ms / 1000.0
        self._shared = _Shared(BatchingEncoder(encoder, cfg.encoder.max_batch, wait, fam.shared_batch.labels("parts"),
                                               fam.shared_batch_frames.labels("parts")))
        for path, enc in (reid_encoders or {}).items():
            self._shared.reid[path] = BatchingEncoder(enc, cfg.encoder.max_batch, wait, fam.shared_batch.labels("reid"),
                                                      fam.shared_batch_frames.labels("reid"))
            # one gallery per re-identification model: every stream embedding with it shares it ([gallery])
            gallery = app.build_gallery(cfg, enc, shard)
            if gallery is not None:
                self._shared.galleries[path] = gallery
                sync = app.share_gallery(cfg, gallery, shard, enc.encoder_id)
                if sync is not None:
                    self._shared.syncs.append(sync)
        self.status: dict[str, StreamStatus] = {}
        self.history: list[StreamStatus] = []  # streams removed or restarted during the run, as they ended
        self._lock = threading.RLock()  # also taken by signal handlers (stop_all, reload) on the main thread
        self._running: dict[str, _Running] = {}
        self._pending: Callable[[], Config] | None = None
        self._wake = threading.Event()

    def states(self) -> dict[str, dict[str, str]]:
        """Each current stream's state, for ``/readyz``."""
        with self._lock:
            return {name: st.as_dict() for name, st in self.status.items()}

    def _set(self, name: str, state: str, error: str = "", summary: RunSummary | None = None) -> None:
        with self._lock:
            st = self.status[name]
            st.state, st.error = state, error
            if summary is not None:
                st.summary = summary

    def stop_all(self) -> None:
        """Stop every stream (from a signal handler): each processes what it read and flushes; a camera that is
        down is closed to wake the stream waiting on it."""
        with self._lock:
            running = list(self._running.values())
        for r in running:
            r.stop.set()
        for r in running:
            if r.source is not None and r.source.is_live:
                r.source.close()

    def reload(self, load: Callable[[], Config]) -> None:
        """Ask for the stream list to be read again with ``load`` (from any thread, e.g. a SIGHUP handler); the
        loop of :meth:`run` reads it and starts, stops and restarts streams. A config that cannot be read is
        logged and the running streams stay as they are. Sections shared by all streams (the encoder, the bank
        settings, the metrics address) keep the values the run started with."""
        with self._lock:
            self._pending = load
        self._wake.set()

    def _load(self, load: Callable[[], Config]) -> Config | None:
        try:
            cfg = load()
        except ConfigError as exc:
            log.error("reload: %s; the running streams stay as they are", redact_text(str(exc)))
            return None
        if not cfg.streams and not self.fleet:
            log.error("reload: the new config lists no [[streams]]; the running streams stay as they are")
            return None
        if dataclasses.replace(cfg, streams=()) != dataclasses.replace(self.cfg, streams=()):
            log.warning("reload: sections shared by all streams changed; they take effect at the next start "
                        "(the streams' own tables apply now)")
        return cfg

    def _start(self, stream: StreamConfig) -> None:
        name = stream.name
        folder = self.out_dir / name
        ran_before = name in self.status or any(h.name == name for h in self.history)
        if ran_before and folder.is_dir() and any(folder.iterdir()):
            # a stream that ran before in this run (changed, or removed and added again): keep its outputs
            kept = folder.with_name(f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while kept.exists():
                kept, n = folder.with_name(f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.{n}"), n + 1
            folder.rename(kept)
            log.info("stream %s: the outputs of its previous run are kept in %s", name, kept)
        with self._lock:
            if name in self.status:
                self.history.append(self.status[name])
            self.status[name] = StreamStatus(name, redact_url(stream.source))
            running = _Running(stream, threading.Event(), threading.Thread())
            running.thread = threading.Thread(target=self._stream, args=(running,), name=f"stream-{name}",
                                              daemon=True)
            self._running[name] = running
        running.thread.start()

    def _stop_stream(self, name: str) -> _Running:
        with self._lock:
            running = self._running[name]
        running.stop.set()
        if running.source is not None and running.source.is_live:
            running.source.close()
        return running

    def _apply(self, cfg: Config) -> None:
        old = {r.config.name: r.config for r in self._running.values()}
        new = {s.name: s for s in cfg.streams}
        removed = [n for n in old if n not in new]
        changed = [n for n in old if n in new and new[n] != old[n]]
        added = [n for n in new if n not in old]
        log.info("reload: %d stream(s) added, %d removed, %d changed, %d unchanged", len(added), len(removed),
                 len(changed), len(old) - len(removed) - len(changed))
        for name in removed + changed:
            running = self._stop_stream(name)
            running.thread.join()
            with self._lock:
                del self._running[name]
        with self._lock:
            for name in removed:
                self.history.append(self.status.pop(name))
        self.cfg = dataclasses.replace(self.cfg, streams=cfg.streams)
        for name in changed + added:
            self._start(new[name])

    def run(self, stop: threading.Event) -> dict[str, StreamStatus]:
        """Run the streams until each has ended or ``stop`` is set, applying :meth:`reload` requests on the way;
        each stream's status at the end (removed and restarted ones are in :attr:`history`)."""
        try:
            for stream in self.cfg.streams:
                self._start(stream)
            while not stop.is_set():
                with self._lock:
                    pending, self._pending = self._pending, None
                    alive = any(r.thread.is_alive() for r in self._running.values())
                if pending is not None:
                    cfg = self._load(pending)
                    if cfg is not None:
                        self._apply(cfg)
                    continue
                if not alive and not self.fleet:
                    break
                self._wake.wait(0.2)  # short waits: the main thread stays free for signal handlers
                self._wake.clear()
        finally:
            for name in list(self._running):
                self._stop_stream(name)
            for running in list(self._running.values()):
                running.thread.join()
            self._shared.close()
        return self.status

    def _stream(self, running: _Running) -> None:
        stream, stop = running.config, running.stop
        name = stream.name
        cfg = stream.config(self.cfg)
        metrics = self.metrics.for_stream(name) if name != self.metrics.stream else self.metrics
        clients: list[SharedEncoder] = []
        reloader: BankReloader | None = None
        try:
            out = self.out_dir / name
            check_writable_dir(out)
            source = open_source(stream.source, cfg.source)
            running.source = source
            if stop.is_set() and source.is_live:
                source.close()
            try:
                parts = self._shared.parts.client()
                clients.append(parts)
                reid: SharedEncoder | None = None
                if cfg.tracker.reid_model:
                    if cfg.tracker.reid_model not in self._shared.reid:
                        raise ConfigError(f"[[streams]] {name!r}: [tracker] reid_model {cfg.tracker.reid_model!r} "
                                          f"was added by a reload; a new model needs a restart of the run")
                    reid = self._shared.reid[cfg.tracker.reid_model].client()
                    clients.append(reid)
                pipeline, sinks, reloader = app.build_stream(cfg, parts, metrics, out,
                                                             source.fps or cfg.source.fps_hint, reid,
                                                             self._shared.galleries.get(cfg.tracker.reid_model),
                                                             self._shared.banks)
            except BaseException:
                source.close()
                raise
            if reloader is not None:
                reloader.start()
            self._set(name, "running")
            log.info("stream %s: %s -> %s", name, redact_url(stream.source), out)
            summary = run(source, pipeline, sinks, stop, cfg.output.progress_every_s, read_ahead=cfg.source.read_ahead)
            self._set(name, "stopped" if summary.interrupted else "ended", summary=summary)
        except Exception as exc:
            message = redact_text(str(exc))
            if isinstance(exc, user_errors()):
                log.error("stream %s stopped: %s", name, message)
            else:
                log.exception("stream %s stopped by an unexpected error", name)
                message = f"{type(exc).__name__}: {message}"
            self._set(name, "failed", message)
            metrics.stream_up.set(0)
            metrics.stream_failures.inc()
        finally:
            if reloader is not None:
                reloader.stop()
            for c in clients:
                c.close()
