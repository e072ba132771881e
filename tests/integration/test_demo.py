"""`siamstream demo` through the real CLI, on a short scene."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_short_run_finds_defects(tmp_path: Path, encoder_cache: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--out", str(out), "--frames", "360",
         "--bank-frames", "700", "--set", f'encoder.cache_dir="{encoder_cache}"', "--set", "metrics.port=0"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == {"frames", "fps", "parts", "defective", "flagged", "recall", "false_alarms", "out"}
    assert result["frames"] == 360 and result["parts"] >= 6 and 1 <= result["defective"] < result["parts"]
    assert result["recall"] >= 0.5, proc.stdout  # the defects are really found
    assert result["false_alarms"] <= 1, proc.stdout
    assert any(line.startswith("recall") for line in lines)
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert len(events) == result["flagged"]
    assert (out / "annotated" / "000000.mp4").stat().st_size > 0 and (out / "tracks.txt").stat().st_size > 0
    assert (out / "bank" / "meta.json").is_file()
    # It ends by pointing at what to look at, and each of those exists.
    look = lines[lines.index(next(x for x in lines if x.startswith("look at"))):-1]
    shown = [x[13:].split("  ")[0] for x in look]
    assert shown[:3] == [str(out / "annotated" / "000000.mp4"), str(out / "first_flagged.png"),
                         str(out / "evidence" / "sheet.png")]
    assert shown[3].startswith("http://127.0.0.1:") and shown[3].endswith("/metrics")
    assert (out / "evidence" / "sheet.png").stat().st_size > 0
    assert "siamstream_parts_flagged_total" in (out / "metrics.prom").read_text()
    # parts.csv explains each verdict: a track is flagged exactly when its running median passed the threshold
    with (out / "parts.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and sum(int(r["flagged"]) for r in rows) == result["flagged"]
    for r in rows:
        passed = float(r["highest_running_median"]) > float(r["threshold"])
        assert passed == bool(int(r["flagged"])), r
    truths = {r["truth"] for r in rows}
    assert "good" in truths and truths & {"hole", "scratch", "stain", "missing"}
