"""The config file watcher: a content change calls back once; a touch that changes nothing, a file missing for a
moment and a callback that fails do not."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipeline.config_watch import ConfigWatcher
from tests.alert_servers import wait_until


def test_only_content_changes_call_back(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[fleet]\nshards = 1\n")
    calls: list[int] = []
    watcher = ConfigWatcher(cfg, 0.05, lambda: calls.append(1)).start()
    try:
        os.utime(cfg, (time.time() + 10, time.time() + 10))  # a newer time stamp, the same content
        cfg.unlink()  # gone for a moment, as in the middle of a swap
        time.sleep(0.3)
        assert calls == []
        cfg.write_text("[fleet]\nshards = 1\n")  # back as it was
        time.sleep(0.3)
        assert calls == []
        cfg.write_text("[fleet]\nshards = 2\n")
        wait_until(lambda: calls == [1], 5, "one call for one change")
        time.sleep(0.3)
        assert calls == [1] and watcher.changes == 1
    finally:
        watcher.close()


def test_a_failing_callback_does_not_stop_the_watch(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("a")
    calls: list[str] = []

    def on_change() -> None:
        calls.append(cfg.read_text())
        raise RuntimeError("boom")

    watcher = ConfigWatcher(cfg, 0.05, on_change).start()
    try:
        cfg.write_text("b")
        wait_until(lambda: calls == ["b"], 5, "the first change")
        cfg.write_text("c")
        wait_until(lambda: calls == ["b", "c"], 5, "the second change, after the first callback failed")
    finally:
        watcher.close()
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        ConfigWatcher(cfg, 0, lambda: None)
