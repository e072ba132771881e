"""bench soak's parts: the looped scene source, the slopes, segment retention; and the command end to end (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.benchmarks.soak import Sample, _retire_segments, slope_per_10k
from pipeline.demo import SceneSource
from pipeline.synthetic import ProductionLineScene, SceneConfig

REPO = Path(__file__).resolve().parents[3]


def test_looped_scene_runs_on_past_the_scene_with_continuous_indices_and_times() -> None:
    scene = ProductionLineScene(SceneConfig(width=160, height=120, num_frames=7))
    source = SceneSource(scene, "looped", total=17)
    frames = list(source)
    assert [f.index for f in frames] == list(range(17)) and source.frames_read == 17
    assert frames[9].timestamp == pytest.approx(9 / scene.cfg.fps)
    assert (frames[7].image == frames[0].image).all()  # the scene starts over


def test_slopes_are_per_10000_frames_and_need_three_samples() -> None:
    rising = [Sample(f, 0.0, 100.0 + 0.0002 * f, 20, 4) for f in range(1000, 20_001, 1000)]
    assert slope_per_10k(rising, "rss_mb") == pytest.approx(2.0)
    assert slope_per_10k(rising, "fds") == pytest.approx(0.0, abs=1e-9)
    assert slope_per_10k(rising[:2], "rss_mb") != slope_per_10k(rising[:2], "rss_mb")  # nan


def test_closed_segments_are_retired_but_the_last_ones_and_the_index(tmp_path: Path) -> None:
    names = [f"{i:06d}.mp4" for i in range(5)]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "segments.jsonl").write_text("".join(json.dumps({"file": n}) + "\n" for n in names[:4]))
    _retire_segments(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[2], names[3], names[4], "segments.jsonl"]


@pytest.mark.slow
def test_bench_soak_end_to_end() -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "bench", "soak", "--frames", "1500",
                           "--sample-every", "250"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["frames"] == 1500 and figures["frames_lost"] == 0
    assert figures["flagged"] > 0 and figures["delivered"] == figures["flagged"] == figures["events"]
