"""Kubernetes manifests (deploy/k8s): schema-valid, and consistent with the config and the metrics server.

Every manifest is validated offline by kubernetes-validate against the Kubernetes OpenAPI schemas it bundles,
in strict mode (unknown fields are errors). The GPU overlay is an RFC 6902 JSON patch: it is applied here to
the base Deployment and the result validated too; where kubectl is installed, `kubectl kustomize` must render
the same objects.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.cli import build_parser, cmd_run
from pipeline.config import load_config
from pipeline.metrics import PipelineMetrics, serve

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' installs it")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
CONTAINER_TOML = REPO / "deploy" / "configs" / "container.toml"
# A release whose schemas kubernetes-validate bundles (it carries 1.25 to 1.37); every field used here is older.
KUBERNETES_VERSION = "1.33"


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_objects() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    objects = {}
    for name in kustomization["resources"]:
        for doc in load_docs(K8S / "base" / name):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``add`` and ``replace`` (the two operations the overlay uses) on a copy of ``doc``."""
    out = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in ("add", "replace"), f"unsupported op {op['op']}"
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            if last == "-":
                node.append(op["value"])
            elif op["op"] == "add":
                node.insert(int(last), op["value"])
            else:
                node[int(last)] = op["value"]
        else:
            assert op["op"] == "add" or last in node, f"replace of a missing member {op['path']}"
            node[last] = op["value"]
    return out


def gpu_deployment() -> dict[str, Any]:
    kustomization = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../base"]
    (patch,) = kustomization["patches"]
    assert patch["target"]["kind"] == "Deployment"
    ops = yaml.safe_load((K8S / "gpu" / patch["path"]).read_text())
    return json_patch(base_objects()[("Deployment", patch["target"]["name"])], ops)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def configmap_toml(tmp_path: Path) -> Path:
    cm = base_objects()[("ConfigMap", "siamstream-config")]
    path = tmp_path / "config.toml"
    path.write_text(cm["data"]["config.toml"])
    return path


def siamstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_kustomization_lists_every_base_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_base_manifests_are_schema_valid() -> None:
    objects = base_objects()
    assert {kind for kind, _ in objects} == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"}
    for (kind, name), doc in objects.items():
        assert "namespace" not in doc["metadata"], f"{kind}/{name}: manifests are namespace-free"
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_gpu_overlay_is_schema_valid_and_asks_for_a_gpu() -> None:
    deployment = gpu_deployment()
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    c = container(deployment)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["image"].endswith(":gpu")
    assert c["args"][-2:] == ["--set", 'encoder.device="cuda"']


def test_validator_rejects_a_broken_manifest() -> None:
    # The check above can fail: a misspelt field and a wrong type are both caught.
    deployment = copy.deepcopy(base_objects()[("Deployment", "siamstream")])
    container(deployment)["livenesProbe"] = container(deployment).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(base_objects()[("Deployment", "siamstream")])
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kubectl_kustomize_renders_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the overlay is checked by the JSON patch applied above")
    for overlay, expected in (("base", base_objects()),
                              ("gpu", {**base_objects(), ("Deployment", "siamstream"): gpu_deployment()})):
        proc = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout) if d}
        assert rendered == expected, overlay


def test_configmap_config_passes_config_check_and_equals_the_container_config(tmp_path: Path) -> None:
    path = configmap_toml(tmp_path)
    proc = siamstream("config", "check", str(path))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    # The image bakes deploy/configs/container.toml and exports the encoder into its cache_dir: the same file.
    assert path.read_text() == CONTAINER_TOML.read_text()
    # The GPU overlay's --set is a valid override too.
    proc = siamstream("config", "check", str(path), "--set", 'encoder.device="cuda"')
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_command_is_a_real_siamstream_run_on_the_mounted_config(tmp_path: Path) -> None:
    c = container(base_objects()[("Deployment", "siamstream")])
    env = {e["name"]: e["value"] for e in c["env"]}
    args = [a.replace("$(SIAMSTREAM_SOURCE)", env["SIAMSTREAM_SOURCE"]) for a in c["args"]]
    assert c["command"][0] == "siamstream"
    ns = build_parser().parse_args(c["command"][1:] + args)
    assert ns.func is cmd_run and ns.source == env["SIAMSTREAM_SOURCE"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert str(Path(ns.config).parent) in mounts and mounts[str(Path(ns.config).parent)]["readOnly"]
    volumes = {v["name"]: v for v in base_objects()[("Deployment", "siamstream")]["spec"]["template"]["spec"]
               ["volumes"]}
    config_volume = volumes[mounts[str(Path(ns.config).parent)]["name"]]
    assert config_volume["configMap"]["name"] == "siamstream-config"
    assert Path(ns.config).name in base_objects()[("ConfigMap", "siamstream-config")]["data"]


def test_probes_and_scrape_annotations_use_the_configured_port_and_real_paths(tmp_path: Path) -> None:
    cfg = load_config(configmap_toml(tmp_path))
    assert cfg.metrics.enabled and cfg.metrics.address == "0.0.0.0"
    deployment = base_objects()[("Deployment", "siamstream")]
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    probes = {name: c[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {n: p["path"] for n, p in probes.items()} == {
        "startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe in probes.values():
        assert ports[probe["port"]] == cfg.metrics.port
    service = base_objects()[("Service", "siamstream")]
    (svc_port,) = service["spec"]["ports"]
    assert ports[svc_port["targetPort"]] == cfg.metrics.port
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(cfg.metrics.port), "prometheus.io/path": "/metrics"}
    # Only the pod is annotated: a Service annotated too would have the pod scraped twice (two jobs).
    assert not any(k.startswith("prometheus.io/") for k in service["metadata"].get("annotations", {}))

    # The paths are the metrics server's own: /healthz answers 200, /readyz 503 before any frame.
    registry = CollectorRegistry()
    PipelineMetrics(registry, cfg.output.stream_name)
    port = serve(registry, "127.0.0.1", 0)
    status = {}
    for path in ("/metrics", *(p["path"] for p in probes.values())):
        try:
            status[path] = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
        except urllib.error.HTTPError as exc:
            status[path] = exc.code
    assert status == {"/metrics": 200, "/healthz": 200, "/readyz": 503}


def test_non_root_read_only_root_with_writable_volumes_where_siamstream_writes(tmp_path: Path) -> None:
    cfg = load_config(configmap_toml(tmp_path))
    deployment = base_objects()[("Deployment", "siamstream")]
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_user = [line.split()[1] for line in (REPO / "deploy" / "docker" / "Dockerfile.cpu").read_text()
                       .splitlines() if line.startswith("USER ")]
    assert dockerfile_user == [f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    writable = [Path(m["mountPath"]) for m in c["volumeMounts"] if not m.get("readOnly")]
    for path in (Path(cfg.anomaly.bank), Path(cfg.output.dir), Path("/tmp")):
        assert any(path == w or w in path.parents for w in writable), f"{path} is on the read-only root"
    # The built-in encoder is baked into the image: its cache_dir is not shadowed by a volume.
    assert not any(Path(m["mountPath"]) in (Path(cfg.encoder.cache_dir), *Path(cfg.encoder.cache_dir).parents)
                   for m in c["volumeMounts"])
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {name for kind, name in base_objects() if kind == "PersistentVolumeClaim"}


def test_resources_have_requests_and_limits() -> None:
    for deployment in (base_objects()[("Deployment", "siamstream")], gpu_deployment()):
        resources = container(deployment)["resources"]
        for key in ("cpu", "memory"):
            assert key in resources["requests"] and key in resources["limits"]


# ---------------------------------------------------------------------------------------------------------------
# deploy/k8s/fleet: a StatefulSet of engines sharing one camera list


def fleet_objects() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "fleet" / "kustomization.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for name in kustomization["resources"]
            for d in load_docs(K8S / "fleet" / name)}


def test_fleet_manifests_are_schema_valid() -> None:
    objects = fleet_objects()
    assert {kind for kind, _ in objects} == {"ConfigMap", "PersistentVolumeClaim", "StatefulSet", "Service"}
    for doc in objects.values():
        assert "namespace" not in doc["metadata"]
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_fleet_pods_each_run_their_share_of_one_camera_list(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.shards import assigned, parse_shard

    objects = fleet_objects()
    sts = objects[("StatefulSet", "siamstream")]
    c = container(sts)
    assert c["command"][:2] == ["siamstream", "run"] and c["args"] == ["--shard", "auto"]
    assert sts["spec"]["serviceName"] == "siamstream-fleet" and ("Service", "siamstream-fleet") in objects
    assert objects[("Service", "siamstream-fleet")]["spec"]["clusterIP"] == "None"
    cm = objects[("ConfigMap", "siamstream-fleet-config")]
    path = tmp_path / "config.toml"
    path.write_text(cm["data"]["config.toml"])
    proc = siamstream("config", "check", str(path))
    assert proc.returncode == 0, proc.stderr
    cfg = load_config(path)
    replicas = sts["spec"]["replicas"]
    assert cfg.fleet.shards == replicas
    shares = [assigned(cfg.streams, *parse_shard("auto", cfg.fleet.shards, env={}, hostname=f"siamstream-{i}"))
              for i in range(replicas)]
    assert sorted(s.name for share in shares for s in share) == sorted(s.name for s in cfg.streams)
    # the bank is one claim every pod mounts (ReadWriteMany), the outputs one volume per pod
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["bank"]["persistentVolumeClaim"]["claimName"]
    assert objects[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["runs"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert cfg.anomaly.bank.startswith(mounts["bank"]) and cfg.output.dir == mounts["runs"]
    assert cfg.metrics.address == "0.0.0.0"
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(cfg.metrics.port)
