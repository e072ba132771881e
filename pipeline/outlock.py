"""One writer per output folder: an advisory lock held for the life of a run.

Two runs writing ``tracks.txt`` or ``annotated.mp4`` in one folder would interleave their bytes. A run takes
``OUT/.siamstream.lock`` with ``flock`` (released by the kernel when the process ends, however it ends, so a
lock left by a killed run is stale by construction and simply taken over) and writes its pid, host and start time
into it, so that a second run can name the holder in its error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from pipeline.sinks import SinkError

LOCK_NAME = ".siamstream.lock"


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])} on {info['host']}, {info['command']!s}, since {started}"
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return "another process (its lock file holds no readable owner)"


class OutputLock:
    """Hold ``out_dir``'s lock (``with OutputLock(out_dir, "run"):``).

    Raises:
        SinkError: another live process holds the folder (the message names it), or the lock file cannot be
            created.
    """

    def __init__(self, out_dir: Path, command: str) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SinkError(self.path, f"cannot create the output lock ({exc.strerror or exc})",
                            "choose another output folder or fix its permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise SinkError(self.path.parent, f"output folder in use by {holder}",
                            "wait for that run to end, stop it, or pass another --out") from None
        except OSError as exc:
            os.close(fd)
            raise SinkError(self.path, f"cannot lock the output folder ({exc.strerror or exc})",
                            "use an output folder on a local file system") from None
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                            "started": time.time()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner, 0)
        except OSError as exc:
            os.close(fd)
            raise SinkError(self.path, f"cannot write the output lock ({exc.strerror or exc})",
                            "free space on that disk or choose another output folder") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):  # the owner goes; the file stays (removing it would race a locker)
            os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
