"""Fixtures of the integration tests."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.alert_servers import free_port, wait_until
from tests.engine_runs import cameras  # noqa: F401  (the test cameras, for the tests that run streams)
from tests.integration.test_production import binary, fast_copy_of_shipped_rules, ready

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SHARDS = 3


@pytest.fixture
def fleet_prometheus(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """Prometheus scraping three engine ports (``SHARDS``) every second, with the shipped rules (and their alerts
    fast): its URL and the three ports."""
    prometheus_bin = binary("prometheus")
    ports = [free_port() for _ in range(SHARDS)]
    prom_port = free_port()
    (tmp_path / "shipped-fast.rules.yml").write_text(yaml.safe_dump(fast_copy_of_shipped_rules()))
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml"),
                         str(tmp_path / "shipped-fast.rules.yml")]
    cfg.pop("alerting", None)
    cfg["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{p}" for p in ports]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    try:
        wait_until(ready(f"http://127.0.0.1:{prom_port}/-/ready"), 30, "Prometheus to be ready")
        yield f"http://127.0.0.1:{prom_port}", ports
    finally:
        proc.terminate()
        proc.wait(10)


