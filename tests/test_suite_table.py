"""One table of services (``pixelrpc.common.suite``): the code derives from it, the deployment files agree."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import re

import pytest
from conftest import REPO

from pixelrpc.clients.base import RETRY_SERVICE_CONFIG, AsyncServiceClient, ServiceClient
from pixelrpc.clients.client import Client
from pixelrpc.common.suite import SERVICES, SHARED_SERVICES
from pixelrpc.v1 import captioning_pb2, registry_pb2, server_pb2, style_transfer_pb2, visualization_pb2

COMPOSE = (REPO / "docker-compose.yml").read_text()


def compose_service(name: str) -> str:
    """The text of one service of docker-compose.yml (from its header to the next one)."""
    match = re.search(rf"^  {re.escape(name)}:\n((?:    .*\n|\n)*)", COMPOSE, re.M)
    assert match, f"docker-compose.yml has no service {name}"
    return match.group(1)


def test_proto_names_exist_and_the_servers_register_them():
    declared = {s.full_name for m in (captioning_pb2, registry_pb2, server_pb2, style_transfer_pb2,
                                      visualization_pb2) for s in m.DESCRIPTOR.services_by_name.values()}
    for spec in SERVICES.values():
        assert spec.full_name in declared
        module = importlib.import_module(spec.server_module)
        assert module.SERVICE_NAME == spec.full_name and callable(module.add_to_server)
        assert module.TASKS == spec.tasks and module.DEFAULT_MODELS == spec.default_models
    assert {"pixelrpc.v1.ModelRegistry", "pixelrpc.v1.ServerInfo"} <= declared & set(SHARED_SERVICES)


def test_clients_settings_and_channel_config_derive_from_the_table(monkeypatch):
    from pixelrpc.services.settings import Settings

    for spec in SERVICES.values():
        monkeypatch.delenv(spec.address_env, raising=False)
        assert issubclass(spec.client_class(), ServiceClient)
        assert issubclass(spec.client_class(asynchronous=True), AsyncServiceClient)
        settings = Settings.from_env({}, service=spec.name)
        assert (settings.port, settings.metrics_port) == (spec.port, spec.metrics_port)
        moved = Settings.from_env({spec.port_env: "1234", spec.metrics_port_env: "0"}, service=spec.name)
        assert (moved.port, moved.metrics_port) == (1234, 0)
    client = Client.from_env()
    assert client.addresses == {n: f"localhost:{s.port}" for n, s in SERVICES.items()}
    assert sorted(n for n in dir(client) if n in SERVICES) == sorted(SERVICES)
    with pytest.raises(TypeError, match="unknown service 'nope'"):
        Client(nope="localhost:1")
    (config,) = RETRY_SERVICE_CONFIG["methodConfig"]
    assert [n["service"] for n in config["name"]] == [*(s.full_name for s in SERVICES.values()), *SHARED_SERVICES]
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_a_missing_module_is_an_error_never_skipped(monkeypatch, tmp_path):
    import torch

    from pixelrpc.services.server import create_server
    from pixelrpc.services.settings import Settings

    settings = Settings(port=0, registry=str(tmp_path), torch_threads=torch.get_num_threads())
    spec = SERVICES["style"]
    monkeypatch.setitem(SERVICES, "style", dataclasses.replace(spec, server_module="pixelrpc.services.nope",
                                                                client="pixelrpc.clients.nope:A:B"))
    with pytest.raises(ModuleNotFoundError, match="pixelrpc.services.nope"):
        asyncio.run(create_server(["style"], settings))
    with pytest.raises(ModuleNotFoundError, match="pixelrpc.clients.nope"):
        Client().style  # noqa: B018 - the attribute connects the client
    with pytest.raises(ValueError, match="unknown service 'nope'; choose from captioning, visualization, style"):
        asyncio.run(create_server(["nope"], settings))


def test_docker_compose_agrees_with_the_table():
    served = set(re.findall(r'command: \["pixelrpc", "serve", "([\w-]+)"', COMPOSE))
    assert served == set(SERVICES)  # one compose service per row, each running `pixelrpc serve NAME`
    for name, spec in SERVICES.items():
        text = compose_service(name)
        key = name.upper()
        assert f'command: ["pixelrpc", "serve", "{name}", ' in text
        assert f'PIXELRPC_PORT: "{spec.port}"' in text
        assert f'PIXELRPC_METRICS_PORT: "{spec.metrics_port}"' in text
        assert f"${{PIXELRPC_{key}_PORT:-{spec.port}}}:{spec.port}\"" in text
        assert f"${{PIXELRPC_{key}_METRICS_PORT:-{spec.metrics_port}}}:{spec.metrics_port}\"" in text
        assert f'"--addr", "127.0.0.1:{spec.port}", "--service", "{spec.full_name}"' in text
        (preload,) = re.findall(rf"PIXELRPC_PRELOAD: \$\{{PIXELRPC_{key}_PRELOAD:-([\w.-]+)\}}", text)
        assert preload in spec.default_models
    host = (REPO / "docker-compose.host.yml").read_text()
    assert set(SERVICES) <= set(re.findall(r"^  ([\w-]+):\n", host, re.M))


def test_the_image_and_the_compose_test_agree_with_the_table():
    (expose,) = re.findall(r"^EXPOSE (.+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert sorted(map(int, expose.split())) == sorted(p for s in SERVICES.values()
                                                      for p in (s.port, s.metrics_port, s.http_port))
    script = (REPO / "scripts" / "compose_test.sh").read_text()
    assert re.search(r"^SERVICES=\((.*)\)$", script, re.M).group(1).split() == list(SERVICES)
    for var, attr in (("PORT", "port"), ("METRICS", "metrics_port")):
        table = re.search(rf"^declare -A {var}=\((.*)\)$", script, re.M).group(1)
        assert dict(re.findall(r"\[(\w+)\]=(\d+)", table)) == {n: str(getattr(s, attr)) for n, s in SERVICES.items()}
