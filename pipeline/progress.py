"""Progress of long work: a bar with rate and time left on a terminal, periodic log lines elsewhere.

:class:`Progress` counts units of work (frames, images, batches, steps). When stderr is a terminal it draws a
`tqdm <https://tqdm.github.io>`_ bar; when it is not (a container's log, CI, a pipe) it logs one line every
``every_s`` seconds and one at the end, with the same figures: done, total, rate and time left.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("siamstream.progress")


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts ``unit``s of ``desc`` towards ``total`` (``0``: unknown).

    Args:
        desc: what is being done, e.g. ``"bank: good parts"``.
        total: units expected; 0 when unknown (no percentage or time left then).
        unit: what one unit is (``"frame"``, ``"image"``, ``"batch"``).
        every_s: seconds between log lines when stderr is not a terminal; 0 = only the final line.
        stream: where the bar goes (stderr); a bar is drawn only when it is a terminal.
        bar: force the bar on or off (default: whether ``stream`` is a terminal).
    """

    def __init__(self, desc: str, total: int = 0, unit: str = "it", every_s: float = 5.0,
                 stream: TextIO | None = None, bar: bool | None = None) -> None:
        self.desc = desc
        self.total = max(0, int(total))
        self.unit = unit
        self.every_s = every_s
        self.done = 0
        self.status = ""
        out = stream if stream is not None else sys.stderr
        self._bar = tqdm(total=self.total or None, desc=desc, unit=unit, file=out, dynamic_ncols=True,
                         leave=True) if (bar if bar is not None else _is_terminal(out)) else None
        self._start = self._last = time.perf_counter()
        self._closed = False

    def update(self, n: int = 1, status: str = "") -> None:
        """``n`` more units done; ``status`` (e.g. ``"loss 0.41"``) is shown beside the counts."""
        self.done += n
        if status:
            self.status = status
        if self._bar is not None:
            if status:
                self._bar.set_postfix_str(status, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.every_s and now - self._last >= self.every_s:
            self._last = now
            log.info("%s", self.line())

    def line(self) -> str:
        """Where the work stands, as one log line."""
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.done}"]
        if self.total:
            parts[0] += f"/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}s"
        parts.append(f"{rate:.1f} {self.unit}s/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"{_clock((self.total - self.done) / rate)} left")
        else:
            parts.append(f"{_clock(elapsed)} elapsed")
        if self.status:
            parts.append(self.status)
        return ", ".join(parts)

    def close(self) -> None:
        """The final figures: the bar completes, or one last log line."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.every_s and self.done:
            log.info("%s", self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
