"""deploy/kubernetes: every overlay renders (``kubectl kustomize``), every object validates against the
Kubernetes schemas (``kubernetes-validate --strict``, offline: it bundles them), the manifests agree
with the code's service facts (ports, health names, shutdown timing, settings names), and a policy
holds for every container (probes, resources, security context, pinned images)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
# Kubernetes versions the manifests must validate against: the oldest with every field used here
# (native preStop sleep: 1.30 by default) and the newest kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", None)
# Settings read by something other than services/settings.py: the init container's sync source, and
# the HTTP gateway's port (issue 14; an unknown PIXELRPC_* variable is ignored by Settings.from_env).
EXTRA_ENV = {"PIXELRPC_REGISTRY_SOURCE", "PIXELRPC_HTTP_PORT"}


def service_facts() -> dict[str, dict]:
    """The project's one table of services: name -> health name, gRPC port, metrics port, HTTP port.

    Repoint this function (only) when the table moves; everything below reads it from here.
    """
    from pixelrpc.common.suite import SERVICES

    return {name: {"health": spec.full_name, "port": spec.port, "metrics": spec.metrics_port, "http": spec.http_port}
            for name, spec in SERVICES.items()}


@cache
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl, or any kubectl >= 1.27)")
    out = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE / "overlays" / overlay)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def of_kind(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def deployment(docs, service: str) -> dict:
    return of_kind(docs, "Deployment")[f"pixelrpc-{service}"]


def env_of(container: dict, docs) -> dict[str, object]:
    """The container's environment: its ConfigMaps' data, then its own ``env`` (which wins)."""
    maps = of_kind(docs, "ConfigMap")
    env: dict[str, object] = {}
    for src in container.get("envFrom", []):
        env.update(maps[src["configMapRef"]["name"]]["data"])
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def pod_specs(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d, d["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_renders_and_validates_strictly(overlay, version):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extra)")
    version = version or kv.latest_version()
    docs = render(overlay)
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Deployment", "Service",
                                         "PersistentVolumeClaim", "Job"}
    for d in docs:
        kv.validate(d, version, strict=True)  # raises ValidationError naming the field


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_agree_with_the_service_table(overlay):
    docs = render(overlay)
    services = of_kind(docs, "Service")
    facts = service_facts()
    assert {n for n in of_kind(docs, "Deployment")} == {f"pixelrpc-{s}" for s in facts}
    for name, fact in facts.items():
        pod = deployment(docs, name)["spec"]["template"]["spec"]
        (server,) = [c for c in pod["containers"] if c["name"] == "server"]
        assert server["command"][-2:] == ["serve", name]
        ports = {p["name"]: p["containerPort"] for p in server["ports"]}
        assert ports == {"grpc": fact["port"], "metrics": fact["metrics"], "http": fact["http"]}
        env = env_of(server, docs)
        assert int(env["PIXELRPC_PORT"]) == fact["port"]
        assert int(env["PIXELRPC_METRICS_PORT"]) == fact["metrics"]
        assert env["PIXELRPC_REQUIRE_MODELS"] == "1" and env["PIXELRPC_PRELOAD"]
        assert env["PIXELRPC_HOST"] == "0.0.0.0"
        # Readiness and startup on the model-aware health name, liveness on the server as a whole.
        for probe in ("startupProbe", "readinessProbe"):
            assert server[probe]["grpc"] == {"port": fact["port"], "service": fact["health"]}, probe
        assert server["livenessProbe"]["grpc"] == {"port": fact["port"], "service": ""}
        # Both Services select this Deployment's pods and expose its gRPC port.
        selector = deployment(docs, name)["spec"]["selector"]["matchLabels"]
        for svc_name in (f"pixelrpc-{name}", f"pixelrpc-{name}-headless"):
            svc = services[svc_name]["spec"]
            assert svc["selector"] == selector
            assert {"name": "grpc", "port": fact["port"], "targetPort": "grpc",
                    "appProtocol": "kubernetes.io/h2c"} in svc["ports"]
        assert services[f"pixelrpc-{name}-headless"]["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_timing_agrees_with_the_server(overlay):
    """preStop sleep + PIXELRPC_SHUTDOWN_DELAY + PIXELRPC_SHUTDOWN_GRACE fit in the grace period, so a
    rolling update drains every call before the kubelet's SIGKILL (PixelServer.stop())."""
    from pixelrpc.services.settings import Settings

    defaults = Settings()
    docs = render(overlay)
    for name in service_facts():
        pod = deployment(docs, name)["spec"]["template"]["spec"]
        (server,) = pod["containers"]
        env = env_of(server, docs)
        delay = float(env.get("PIXELRPC_SHUTDOWN_DELAY", defaults.shutdown_delay))
        grace = float(env.get("PIXELRPC_SHUTDOWN_GRACE", defaults.shutdown_grace))
        pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop >= 2, "endpoint removal needs a few seconds to reach proxies and resolvers"
        assert delay > 0
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + delay + grace + 2, name
        # A probe period shorter than the preStop sleep: readiness turns false before SIGTERM's drain.
        assert server["readinessProbe"]["periodSeconds"] <= pre_stop


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_names_are_real(overlay):
    """Every PIXELRPC_* variable in a ConfigMap or container is a Settings field (a typo would be ignored
    silently by Settings.from_env)."""
    from pixelrpc.services.settings import Settings

    known = {f"PIXELRPC_{f.name.upper()}" for f in dataclasses.fields(Settings)} | EXTRA_ENV
    docs = render(overlay)
    for owner, pod in pod_specs(docs):
        for c in pod.get("initContainers", []) + pod["containers"]:
            unknown = {k for k in env_of(c, docs) if k.startswith("PIXELRPC_")} - known
            assert not unknown, f"{owner['metadata']['name']}/{c['name']}: {sorted(unknown)}"


IMAGE = re.compile(r"^[a-z0-9./_-]+(:(?!latest$)[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policy_every_container(overlay):
    docs = render(overlay)
    for owner, pod in pod_specs(docs):
        where = owner["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, where
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod.get("initContainers", []) + pod["containers"]:
            who = f"{where}/{c['name']}"
            image = c["image"]
            assert IMAGE.match(image) and (":" in image.rsplit("/", 1)[-1] or "@sha256:" in image), \
                f"{who}: image {image!r} is not pinned by tag or digest (never :latest)"
            res = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[kind]), f"{who}: {kind}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, who
            assert sc["readOnlyRootFilesystem"] is True, who
            assert sc["capabilities"] == {"drop": ["ALL"]}, who
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{who}: /tmp must be an emptyDir"
        if owner["kind"] == "Deployment":
            for c in pod["containers"]:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert "grpc" in c[probe], f"{where}/{c['name']}: {probe}"
                env = c["env"]
                for var in ("PIXELRPC_TORCH_THREADS", "OMP_NUM_THREADS"):
                    (e,) = [e for e in env if e["name"] == var]
                    assert e["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu", var
            assert pod["topologySpreadConstraints"], where
            # The registry the server reads is the pod's verified copy, mounted read-only.
            (server,) = pod["containers"]
            (reg,) = [m for m in server["volumeMounts"] if m["mountPath"] == "/registry"]
            assert reg["readOnly"] is True and "emptyDir" in volumes[reg["name"]]
            (sync,) = pod["initContainers"]
            assert sync["command"][:3] == ["pixelrpc", "models", "sync"]


def test_overlays_differ_as_documented():
    dev, prod = render("dev"), render("production")
    assert all(d["spec"]["replicas"] == 1 for d in of_kind(dev, "Deployment").values())
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        assert not of_kind(dev, kind), kind
    deployments = of_kind(prod, "Deployment")
    assert all(d["spec"]["replicas"] >= 2 for d in deployments.values())
    hpas, pdbs = of_kind(prod, "HorizontalPodAutoscaler"), of_kind(prod, "PodDisruptionBudget")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == set(deployments)
    for d in deployments.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        (pdb,) = [p for p in pdbs.values() if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (policy,) = of_kind(prod, "NetworkPolicy").values()
    grpc_ports = {f["port"] for f in service_facts().values()}
    admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert grpc_ports <= admitted
    for rule in policy["spec"]["ingress"]:
        assert all("namespaceSelector" in src and "ipBlock" not in src for src in rule["from"])


def test_images_carry_the_package_version():
    """Kubernetes and docker-compose name the one image alike: pixelrpc:<pyproject version>."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for overlay in OVERLAYS:
        for _owner, pod in pod_specs(render(overlay)):
            for c in pod.get("initContainers", []) + pod["containers"]:
                assert c["image"] == f"pixelrpc:{version}", c["image"]
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"${{PIXELRPC_IMAGE:-pixelrpc:{version}}}" in compose
