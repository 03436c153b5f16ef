"""Readiness that means "I can serve": per-service health waits for the models, "" is liveness."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from conftest import REPO
from registry_helpers import Stubs, publish_captioner

from pixelrpc.models.registry import Registry
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server

FAST = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.2)
CAPTIONING = "pixelrpc.v1.CaptioningService"
REGISTRY = "pixelrpc.v1.ModelRegistry"


def test_require_models_keeps_the_service_not_serving_until_its_default_model_is_warm(tmp_path):
    reg = Registry(tmp_path / "registry")
    reg.root.mkdir()
    settings = FAST.replace(require_models=True)
    with running_server(["captioning"], settings, registry=reg) as srv:
        s = Stubs(srv.address)
        assert s.status("") == "SERVING"  # liveness: the process answers
        assert s.status(CAPTIONING) == "NOT_SERVING"  # readiness: no model to serve yet
        assert s.status(REGISTRY) == "SERVING"
        (ready,) = s.server_info().readiness
        assert ready.service == CAPTIONING and not ready.ready and "shapes-captioner" in ready.reason
        assert srv.ctx.metrics.registry.get_sample_value("pixelrpc_service_ready", {"service": "captioning"}) == 0
        publish_captioner(reg, "tiny-captioner")
        s.wait_status(CAPTIONING, "SERVING")  # picked up by the watcher, no restart
        assert srv.ctx.cache.is_loaded("tiny-captioner", 1)
        assert s.server_info().readiness[0].ready
        assert s.caption().meta.model_name == "tiny-captioner"
        s.close()


def test_without_require_models_services_are_ready_at_once(tmp_path):
    with running_server(["captioning"], FAST, registry=str(tmp_path)) as srv:
        s = Stubs(srv.address)
        assert s.status(CAPTIONING) == "SERVING" and s.status("") == "SERVING"
        s.close()


def test_preload_list_defines_readiness(tmp_path):
    reg = Registry(tmp_path / "registry")
    publish_captioner(reg, "tiny-captioner")
    publish_captioner(reg, "other-captioner", seed=3, golden_seed=3)
    settings = FAST.replace(require_models=True, preload="tiny-captioner,other-captioner:1")
    with running_server(["captioning"], settings, registry=reg) as srv:
        s = Stubs(srv.address)
        assert s.status(CAPTIONING) == "SERVING"
        assert srv.ctx.cache.is_loaded("tiny-captioner", 1) and srv.ctx.cache.is_loaded("other-captioner", 1)
        assert s.get_model("tiny-captioner").golden.examples == 3
        s.close()


def test_a_failed_preload_exits_non_zero_with_one_clear_line(tmp_path):
    reg = Registry(tmp_path / "registry")
    m = publish_captioner(reg, "broken-captioner")
    with open(reg.model_dir(m) / "params.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    env = {**os.environ, "PIXELRPC_REGISTRY": str(reg.root), "PIXELRPC_PORT": "0", "PIXELRPC_METRICS_PORT": "0",
           "PIXELRPC_HTTP_PORT": "-1",
           "PIXELRPC_PRELOAD": "no-such-model,broken-captioner", "PIXELRPC_REQUIRE_MODELS": "1",
           "PIXELRPC_TORCH_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pixelrpc.cli", "serve", "captioning"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    (line,) = lines
    assert "Traceback" not in proc.stderr and line.startswith("error: preload failed")
    assert "no-such-model: model 'no-such-model' is not in the model registry" in line
    assert "broken-captioner: model broken-captioner:1: file 'params.safetensors' does not match" in line
    assert "listening" not in proc.stdout


def test_compose_turns_readiness_on_and_probes_the_readiness_name():
    text = (REPO / "docker-compose.yml").read_text()
    for svc, full, preload in (("captioning", CAPTIONING, "shapes-captioner"),
                               ("visualization", "pixelrpc.v1.VisualizationService", "shapes-squeezenet"),
                               ("style", "pixelrpc.v1.StyleTransferService", "shapes-squeezenet")):
        block = re.search(rf"\n  {svc}:\n(.*?)(?=\n  [a-z-]+:\n|\nvolumes:)", text, re.S).group(1)
        assert "PIXELRPC_REQUIRE_MODELS" in block or "PIXELRPC_REQUIRE_MODELS" in text.split("services:")[0]
        assert re.search(r"PIXELRPC_PRELOAD: .*" + preload, block), svc
        assert f'"--service", "{full}"' in block, svc
    assert "PIXELRPC_REQUIRE_MODELS: ${PIXELRPC_REQUIRE_MODELS:-1}" in text


def test_readiness_name_waits_while_liveness_answers(tmp_path):
    """Watch() on the readiness name sees NOT_SERVING then SERVING; the "" name never leaves SERVING."""
    from grpc_health.v1 import health_pb2

    reg = Registry(tmp_path / "registry")
    reg.root.mkdir()
    with running_server(["captioning"], FAST.replace(require_models=True), registry=reg) as srv:
        s = Stubs(srv.address)
        watch = s.health.Watch(health_pb2.HealthCheckRequest(service=CAPTIONING))
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        publish_captioner(reg, "tiny-captioner")
        deadline = time.monotonic() + 15
        while next(watch).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
        watch.cancel()
        assert s.status("") == "SERVING"
        s.close()
