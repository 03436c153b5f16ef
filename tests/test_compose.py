"""docker-compose.yml, hardened (issue 15): checked on `docker-compose config` (no daemon needed), for
the bridge network and with docker-compose.host.yml. `make compose-test` checks the running suite."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("captioning", "visualization", "style")
HOST_CPUS = 2.0  # the default shares are sized for this project's 2-core reference host


def compose_config(*files: str) -> dict:
    exe = shutil.which("docker-compose")
    cmd = [exe] if exe else None
    if cmd is None and shutil.which("docker"):
        cmd = ["docker", "compose"]
    if cmd is None:
        pytest.skip("neither docker-compose nor docker compose is installed")
    args = [a for f in files for a in ("-f", f)]
    out = subprocess.run([*cmd, "--project-directory", str(ROOT), *args, "config"], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin:/usr/local/bin"}).stdout
    return yaml.safe_load(out)


@pytest.fixture(scope="module", params=[("docker-compose.yml",), ("docker-compose.yml", "docker-compose.host.yml")],
                ids=["bridge", "host"])
def config(request):
    return compose_config(*request.param)


def test_every_container_is_hardened(config):
    services = config["services"]
    assert set(SERVERS) | {"registry-init", "prometheus"} <= set(services)
    for name, svc in services.items():
        assert svc.get("read_only") is True, name
        assert any(t.startswith("/tmp") for t in svc["tmpfs"]), name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["logging"]["driver"] == "json-file" and svc["logging"]["options"]["max-size"], name
        assert int(svc["logging"]["options"]["max-file"]) >= 1, name
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
        assert not svc.get("privileged"), name


def test_cpu_shares_and_threads_fit_the_host(config):
    services = config["services"]
    total = sum(float(services[n]["cpus"]) for n in (*SERVERS, "prometheus"))
    assert total <= HOST_CPUS + 1e-9
    for name in SERVERS:
        env = services[name]["environment"]
        cpus = float(services[name]["cpus"])
        threads = int(env["PIXELRPC_TORCH_THREADS"])
        assert threads == int(env["OMP_NUM_THREADS"]) <= math.ceil(cpus), name
        assert services[name]["mem_limit"], name


def test_healthchecks_mean_ready_to_serve(config):
    from pixelrpc.common.suite import SERVICES

    services = config["services"]
    for name in SERVERS:
        svc = services[name]
        env = svc["environment"]
        assert env["PIXELRPC_REQUIRE_MODELS"] in ("1", "true") and env["PIXELRPC_PRELOAD"], name
        test = svc["healthcheck"]["test"]
        assert test[test.index("--service") + 1] == SERVICES[name].full_name, name
        assert f"127.0.0.1:{env['PIXELRPC_PORT']}" in test, name
        volumes = [str(v) for v in svc["volumes"]]
        assert any(v.endswith(":/registry:ro") or ("/registry" in v and "read_only: true" in v) for v in volumes), \
            f"{name} must mount the registry read-only: {volumes}"


def test_prometheus_scrapes_the_three(config):
    prom = config["services"]["prometheus"]
    mounts = dict(reversed(str(v).split(":")[:2]) for v in prom["volumes"])  # container path -> source
    if "/etc/prometheus/prometheus.yml" in mounts:  # the host-network variant, over the folder
        source = Path(mounts["/etc/prometheus/prometheus.yml"])
    else:
        source = Path(mounts["/etc/prometheus"]) / "prometheus.yml"
    assert Path(mounts["/etc/prometheus"]) == ROOT / "deploy" / "prometheus"  # rules.yml beside it
    scrape = yaml.safe_load(source.read_text())
    assert scrape["rule_files"] == ["rules.yml"]
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    ports = {int(config["services"][n]["environment"]["PIXELRPC_METRICS_PORT"]) for n in SERVERS}
    assert {int(t.rsplit(":", 1)[1]) for t in targets} == ports
    host_mode = prom.get("network_mode") == "host"
    assert all(t.startswith("127.0.0.1:") == host_mode for t in targets)


def test_build_context_holds_every_package_folder():
    """.dockerignore is a whitelist: a package folder missing from it breaks the image build (pip cannot
    find the package directory), which only `make compose-test` would otherwise notice."""
    import tomllib

    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    allowed = {line[1:].strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for package, folder in package_dirs.items():
        top = folder.split("/")[0]
        assert top in allowed, f"{package} lives in {folder}/, which .dockerignore keeps out of the image"
