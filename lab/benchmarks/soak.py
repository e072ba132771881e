"""``siamstream bench soak``: the whole run for a long time, watched for leaks and losses.

The embedded synthetic production line (a scene of ``LOOP_FRAMES`` frames, looped with frame indices and times
running on: :class:`~pipeline.demo.SceneSource`) goes through the default config with a bank built from good parts,
every file output on (the video in segments) and the webhook alert sink posting to a real HTTP receiver on
127.0.0.1, with ``/metrics`` served and scraped. Every ``sample_every`` frames the process's resident memory and
open file descriptors are sampled. After a warm-up (the first ``warmup`` fraction of the frames) the least-squares
slope of each over frames is the figure: a leak shows as a slope however noisy single samples are. At the end every
frame read must have been processed and every flagged part must have reached the receiver.

Closed video segments are deleted as the run goes (as a recorder's retention would), so the disk does not fill.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from lab.evaluation.report import json_line, table
from pipeline import app
from pipeline.config import Config, ConfigError
from pipeline.demo import SceneSource
from pipeline.metrics import PipelineMetrics, serve
from pipeline.runner import run, stop_on_signals
from pipeline.synthetic import ProductionLineScene, SceneConfig
from pipeline.types import FrameResult
from pipeline.video_segments import INDEX

log = logging.getLogger(__name__)

LOOP_FRAMES = 2000
RSS_TARGET_MB_PER_10K = 1.0


class AlertReceiver:
    """A webhook receiver on 127.0.0.1 that keeps the ids of the alerts it accepted."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.posts = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    receiver.posts += 1
                    receiver.ids.add(str(json.loads(body).get("alert_id", "")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass(frozen=True)
class Sample:
    frame: int
    seconds: float
    rss_mb: float
    fds: int
    threads: int


def slope_per_10k(samples: list[Sample], attr: str) -> float:
    """Least-squares slope of ``attr`` against the frame number, per 10,000 frames (nan with < 3 samples)."""
    if len(samples) < 3:
        return float("nan")
    x = np.array([s.frame for s in samples], np.float64)
    y = np.array([getattr(s, attr) for s in samples], np.float64)
    return float(np.polyfit(x, y, 1)[0] * 10_000)


def _retire_segments(folder: Path, keep: int = 2) -> None:
    """Delete closed segments but the last ``keep`` (the index stays whole)."""
    try:
        closed = [json.loads(line)["file"] for line in (folder / INDEX).read_text().splitlines()]
    except (OSError, ValueError):
        return
    for name in closed[:-keep]:
        (folder / name).unlink(missing_ok=True)


def main(cfg: Config, frames: int = 200_000, sample_every: int = 1000, warmup: float = 0.1,
         out_dir: Path | None = None) -> int:
    if sample_every < 1 or frames < 3 * sample_every:
        raise ConfigError(f"bench soak: --frames {frames} with --sample-every {sample_every} gives fewer than 3 "
                          f"samples; use --sample-every >= 1 and --frames >= 3 x --sample-every")
    receiver = AlertReceiver()
    with tempfile.TemporaryDirectory(prefix="siamstream-soak-") as tmp:
        out = Path(out_dir) if out_dir else Path(tmp)
        cfg = replace(cfg, alerts=replace(cfg.alerts, webhook_url=receiver.url, spool_dir=""),
                      metrics=replace(cfg.metrics, port=0), output=replace(cfg.output, progress_every_s=60.0))
        encoder = app.build_encoder(cfg.encoder)
        log.info("soak: building the bank from a good-parts scene")
        good = ProductionLineScene(SceneConfig(num_frames=1200, defect_rate=0.0, seed=1000))
        bank = app.bank_from_samples(app.good_samples_from_frames(good, cfg, encoder), cfg, encoder, "soak good parts")
        registry = CollectorRegistry()
        metrics = PipelineMetrics(registry, cfg.output.stream_name)
        port = serve(registry, "127.0.0.1", 0)
        source = SceneSource(ProductionLineScene(SceneConfig(num_frames=LOOP_FRAMES, seed=0)), "soak", frames)
        pipeline = app.build_pipeline(cfg, encoder, metrics, bank, out)
        sinks = app.build_sinks(cfg.output, out, source.fps, cfg.alerts, metrics, pipeline.evidence_dir)
        samples: list[Sample] = []
        start = time.perf_counter()

        def watch(result: FrameResult) -> None:
            n = result.frame.index + 1
            if n % sample_every:
                return
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()  # scraped as in production
            _retire_segments(out / "annotated")
            samples.append(Sample(n, time.perf_counter() - start, rss_mb(), open_fds(), threading.active_count()))
            if len(samples) % 10 == 0:
                log.info("soak: frame %d/%d, %.0f fps, RSS %.1f MB, %d fds, %d flagged", n, frames,
                         n / samples[-1].seconds, samples[-1].rss_mb, samples[-1].fds, len(pipeline.flagged))

        stop = threading.Event()
        with stop_on_signals(stop):
            summary = run(source, pipeline, sinks, stop, 0.0, on_result=watch)
        events = (out / "events.jsonl").read_text().splitlines() if (out / "events.jsonl").exists() else []
    receiver.close()
    steady = [s for s in samples if s.frame > warmup * frames]
    rss_slope = slope_per_10k(steady, "rss_mb")
    fd_slope = slope_per_10k(steady, "fds")
    lost = source.frames_read - summary.frames
    figures = {
        "frames": summary.frames, "fps": round(summary.fps, 1), "seconds": round(summary.seconds, 1),
        "rss_start_mb": round(steady[0].rss_mb, 1) if steady else None,
        "rss_end_mb": round(samples[-1].rss_mb, 1) if samples else None,
        "rss_slope_mb_per_10k": round(rss_slope, 3), "fds_start": steady[0].fds if steady else None,
        "fds_end": samples[-1].fds if samples else None, "fds_max": max((s.fds for s in steady), default=None),
        "fd_slope_per_10k": round(fd_slope, 3), "threads_max": max((s.threads for s in steady), default=None),
        "frames_lost": lost, "flagged": len(summary.flagged), "events": len(events),
        "delivered": len(receiver.ids), "interrupted": summary.interrupted,
        "rss_ok": bool(rss_slope < RSS_TARGET_MB_PER_10K), "fds_ok": bool(steady and fd_slope < 0.5
                                                                           and steady[-1].fds <= steady[0].fds),
        "delivery_ok": len(receiver.ids) == len(summary.flagged) == len(events), "lossless": lost == 0,
    }
    print(table(["figure", "value"], [
        ["frames", f"{summary.frames} in {summary.seconds / 60:.1f} min ({summary.fps:.1f} fps)"],
        ["RSS after warm-up", f"{figures['rss_start_mb']} -> {figures['rss_end_mb']} MB"],
        ["RSS slope", f"{rss_slope:+.3f} MB per 10,000 frames (target < {RSS_TARGET_MB_PER_10K})"],
        ["open fds", f"{figures['fds_start']} -> {figures['fds_end']} (max {figures['fds_max']}), slope "
                     f"{fd_slope:+.3f} per 10,000 frames"],
        ["frames lost", str(lost)],
        ["flagged parts", f"{len(summary.flagged)}; events.jsonl {len(events)}; delivered {len(receiver.ids)} "
                          f"unique alerts in {receiver.posts} posts"],
    ]))
    print(table(["frame", "minutes", "RSS MB", "fds", "threads"],
                [[s.frame, round(s.seconds / 60, 1), round(s.rss_mb, 1), s.fds, s.threads]
                 for s in samples[:: max(1, len(samples) // 12)]]))
    print(json_line(figures))
    return 0
