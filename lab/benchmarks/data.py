"""Where benchmarks find the shared real data: ``$SIAMSTREAM_DATA`` when set (and only there), else
``../shared/data`` beside the repository or beside the working directory."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class BenchDataError(FileNotFoundError):
    """A benchmark's data is not where it looks; ``str()`` says where it looked and how to point it elsewhere."""


def shared_data(*parts: str) -> Path:
    if os.environ.get("SIAMSTREAM_DATA"):
        candidates = [Path(os.environ["SIAMSTREAM_DATA"]).expanduser()]
    else:
        candidates = [REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for root in candidates:
        path = root.joinpath(*parts)
        if path.exists():
            return path
    looked = ", ".join(str(c.joinpath(*parts)) for c in candidates)
    raise BenchDataError(f"benchmark data not found (looked at {looked}); set SIAMSTREAM_DATA to the folder "
                         f"that holds {parts[0]}/")
