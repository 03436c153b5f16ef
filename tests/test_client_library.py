"""The client library: sync and asyncio flavours, typed errors, round-robin over several targets."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from conftest import publish_toy

from pixelrpc.clients import AsyncClient, Client, ServiceClient
from pixelrpc.clients.errors import NotFound, Unavailable
from pixelrpc.services.logs import JsonFormatter
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server

FAST = Settings(shutdown_delay=0.0)


def test_from_env_reads_addresses_and_token(monkeypatch):
    monkeypatch.setenv("PIXELRPC_CAPTIONING_ADDR", "10.0.0.1:1")
    monkeypatch.setenv("PIXELRPC_STYLE_ADDR", "a:1,b:2")
    monkeypatch.setenv("PIXELRPC_AUTH_TOKEN", "tok")
    c = Client.from_env()
    assert c.addresses["captioning"] == "10.0.0.1:1"
    assert c.addresses["visualization"] == "localhost:50052"
    assert c.addresses["style"] == "a:1,b:2"
    assert c._kw["token"] == "tok"


def test_round_robin_over_a_list_of_targets(registry):
    publish_toy(registry, "toy")
    with running_server(["captioning"], FAST, registry=registry) as a, \
            running_server(["captioning"], FAST, registry=registry) as b:
        with ServiceClient([a.address, b.address]) as c:
            for _ in range(20):
                c.registry.list()
        served = [srv.ctx.metrics.requests.labels("captioning", "ListModels", "OK", "", "")._value.get()
                  for srv in (a, b)]
        assert sum(served) == 20 and min(served) >= 5, served


def test_sync_and_async_flavours_and_typed_errors(registry):
    publish_toy(registry, "toy")
    with running_server(["captioning"], FAST, registry=registry) as srv:
        with Client(captioning=srv.address, timeout=5) as client:
            assert [m.name for m in client.captioning.registry.list()] == ["toy"]
            with pytest.raises(NotFound) as err:
                client.captioning.registry.get("ghost")
            assert err.value.request_id and "ghost" in err.value.details

        async def go():
            async with AsyncClient(captioning=srv.address, timeout=5) as client:
                models = await client.captioning.registry.list()
                info = await client.captioning.server_info()
                return [m.name for m in models], info.meta.request_id

        names, rid = asyncio.run(go())
        assert names == ["toy"] and rid


def test_unreachable_server_is_unavailable_after_retries():
    with ServiceClient("127.0.0.1:1", timeout=3) as c, pytest.raises(Unavailable):
        c.server_info()


def test_preload_loads_before_serving(registry):
    publish_toy(registry, "toy")
    with running_server(["captioning"], FAST.replace(preload="toy"), registry=registry) as srv:
        assert srv.ctx.cache.is_loaded("toy", 1)


def test_json_log_lines_parse():
    record = logging.LogRecord("pixelrpc.access", logging.INFO, __file__, 1, "%s", ("x",), None)
    record.access = {"request_id": "abc", "code": "OK"}
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "abc" and line["level"] == "INFO" and line["msg"] == "access"
