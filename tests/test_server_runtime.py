"""The shared server runtime, through real gRPC channels to in-process servers on port 0."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import REPO, publish_toy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from slow_handler import METHOD, UNARY_METHOD, install

from pixelrpc.clients import ServiceClient, TLSConfig
from pixelrpc.clients.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server

FAST = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.2)


def png_bytes(w: int, h: int, noise: bool = False, compress: int = 6) -> bytes:
    arr = (np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8) if noise
           else np.zeros((h, w, 3), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = bytearray(png_bytes(4, 4))
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_health_check_per_service_name_and_watch(tmp_path):
    with running_server(["captioning"], FAST, registry=str(tmp_path)) as srv:
        channel = grpc.insecure_channel(srv.address)
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", "pixelrpc.v1.ModelRegistry"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name)).status == serving
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="pixelrpc.v1.Nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == serving
        srv.stop_async(grace=1.0)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        channel.close()


def test_all_service_processes_register_their_health_names(tmp_path):
    with running_server(["captioning", "visualization", "style"], FAST, registry=str(tmp_path)) as srv:
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(srv.address))
        from pixelrpc.common.suite import SERVICES

        for spec in SERVICES.values():
            full = spec.full_name
            assert stub.Check(health_pb2.HealthCheckRequest(service=full)).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_every_service(tmp_path):
    with running_server(["captioning"], FAST, registry=str(tmp_path)) as srv:
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(srv.address))
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        resp = next(stub.ServerReflectionInfo(iter([req])))
        names = {s.name for s in resp.list_services_response.service}
        assert {"pixelrpc.v1.ModelRegistry", "pixelrpc.v1.ServerInfo", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        for name in srv.ctx.services:
            assert name in names


def test_registry_service_lists_and_gets_and_sees_new_versions(tmp_path):
    from pixelrpc.models.registry import Registry

    reg = Registry(tmp_path)
    publish_toy(reg, "toy", 1.0, tasks=("captioning",))
    publish_toy(reg, "other-task", 1.0, tasks=("classification",))
    with running_server(["captioning"], FAST, registry=reg) as srv, ServiceClient(srv.address) as c:
        models = c.registry.list()
        assert [(m.name, m.version, m.is_default) for m in models] == [("toy", 1, True)]
        info = c.registry.get("toy")
        assert info.sha256 == reg.resolve("toy").sha256 and not info.loaded
        srv.ctx.cache.get("toy")
        assert c.registry.get("toy").loaded
        with pytest.raises(NotFound, match="pixelrpc models bootstrap"):
            c.registry.get("missing")
        with pytest.raises(InvalidArgument, match="invalid model name"):
            c.registry.get("../etc")
        publish_toy(reg, "toy", 2.0)  # published while serving: picked up without restart
        deadline = time.monotonic() + 5
        while True:
            loaded = {m.manifest.version for m in srv.ctx.cache.loaded() if m.manifest.name == "toy"}
            if 2 in loaded:
                break
            assert time.monotonic() < deadline, "the running service did not load the new default"
            time.sleep(0.1)
        assert c.registry.get("toy").version == 2 and c.registry.get("toy").loaded


def test_server_info_and_describe_image_limits(tmp_path):
    with running_server(["captioning"], FAST, registry=str(tmp_path)) as srv, ServiceClient(srv.address) as c:
        info = c.server_info()
        assert info.limits.max_message_bytes == 64 * 1024 * 1024
        assert (info.limits.max_image_aspect, info.limits.max_request_pixels) == (
            FAST.max_image_aspect, FAST.max_request_pixels)
        assert info.limits.stream_stall_seconds == FAST.stream_stall_seconds and not info.limits.mutual_tls
        assert info.device == "cpu" and "pixelrpc.v1.ServerInfo" in info.services
        assert info.meta.request_id

        big = png_bytes(2700, 2600, noise=True, compress=0)  # ~21 MB
        assert len(big) > 20_000_000
        described = c.describe_image(big)
        assert (described.format, described.width, described.height) == ("PNG", 2700, 2600)
        assert not described.accepted and "max_image_side" in described.reason

        with pytest.raises(InvalidArgument, match="max_image_pixels") as err:
            c.describe_image(png_claiming(100_000, 100_000))
        assert "not decoded" in err.value.details
        assert err.value.violations and err.value.violations[0][0] == "image"

        with pytest.raises(InvalidArgument, match="could not be read"):
            c.describe_image(b"definitely not an image")

        small = c.describe_image(png_bytes(64, 48))
        assert small.accepted and (small.width, small.height, small.mode) == (64, 48, "RGB")


def test_message_over_the_limit_is_resource_exhausted_naming_it(tmp_path):
    limit = 64 * 1024 * 1024
    with running_server(["captioning"], FAST, registry=str(tmp_path)) as srv:
        c = ServiceClient(srv.address, max_message_bytes=limit * 2)  # let the client send it
        with pytest.raises(ResourceExhausted) as err:
            c.describe_image(b"\0" * (limit + 1024))
        assert str(limit) in err.value.details
        c.close()
    settings = FAST.replace(max_image_bytes=1_000_000)
    with running_server(["captioning"], settings, registry=str(tmp_path)) as srv, \
            ServiceClient(srv.address) as c:
        with pytest.raises(ResourceExhausted, match="max_image_bytes"):
            c.describe_image(png_bytes(1200, 1200, noise=True, compress=0))


def test_auth_token(tmp_path):
    settings = FAST.replace(auth_token="s3cret")
    with running_server(["captioning"], settings, registry=str(tmp_path)) as srv:
        with ServiceClient(srv.address) as anonymous:
            with pytest.raises(Unauthenticated, match="missing bearer token"):
                anonymous.server_info()
            assert anonymous.health() == "SERVING"  # health needs no token
        with ServiceClient(srv.address, token="wrong") as wrong, pytest.raises(Unauthenticated):
            wrong.registry.list()
        with ServiceClient(srv.address, token="s3cret") as right:
            assert right.server_info().auth_required
            assert right.registry.list() == []


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def test_tls_with_ca_connects_and_without_fails_cleanly(tmp_path):
    key, cert = _self_signed(tmp_path)
    settings = FAST.replace(tls_cert=str(cert), tls_key=str(key))
    with running_server(["captioning"], settings, registry=str(tmp_path / "reg")) as srv:
        with ServiceClient(srv.address, tls=TLSConfig(ca=str(cert))) as c:
            assert c.server_info().tls
        with ServiceClient(srv.address, tls=TLSConfig(), timeout=3) as no_ca:  # system roots only
            with pytest.raises(Unavailable):
                no_ca.server_info()
        with ServiceClient(srv.address, timeout=3) as plaintext, pytest.raises(Unavailable):
            plaintext.server_info()


def test_queue_depth_gives_resource_exhausted(tmp_path):
    settings = FAST.replace(max_concurrency=1, queue_depth=1)
    with running_server(["captioning"], settings, registry=str(tmp_path), configure=install) as srv:
        channel = grpc.insecure_channel(srv.address)
        call = channel.unary_unary(UNARY_METHOD)
        futures = [call.future(b"10", timeout=10) for _ in range(2)]  # one runs, one queues
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            call(b"1", timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue_depth=1" in err.value.details()
        assert [f.result() for f in futures] == [b"done 9", b"done 9"]
        assert call(b"1", timeout=10) == b"done 0"  # and it keeps serving


def test_client_cancel_stops_the_job_between_steps(tmp_path):
    with running_server(["captioning"], FAST, registry=str(tmp_path), configure=install) as srv:
        slow = srv.server.slow
        channel = grpc.insecure_channel(srv.address)
        stream = channel.unary_stream(METHOD)(b"200", timeout=30)
        assert next(stream) == b"step 0"
        stream.cancel()
        time.sleep(0.5)
        ran = slow.steps_run
        time.sleep(0.5)
        assert slow.steps_run == ran, "the job kept running after the cancel"
        assert ran < 20 and slow.finished == 0


def test_deadline_stops_the_job(tmp_path):
    with running_server(["captioning"], FAST, registry=str(tmp_path), configure=install) as srv:
        channel = grpc.insecure_channel(srv.address)
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(UNARY_METHOD)(b"200", timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.4)
        ran = srv.server.slow.steps_run
        time.sleep(0.3)
        assert srv.server.slow.steps_run == ran and ran < 25


def test_unexpected_exception_is_internal_with_request_id_and_server_keeps_serving(tmp_path, caplog):
    from pixelrpc.models.registry import Registry

    reg = Registry(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    with running_server(["captioning"], FAST, registry=reg) as srv, ServiceClient(srv.address) as c:
        caplog.set_level(logging.INFO)
        original = reg.scan
        reg.scan = boom  # ListModels reads the registry with scan (models and broken entries)
        try:
            with pytest.raises(Exception) as err:
                c.registry.list()
        finally:
            reg.scan = original
        assert err.value.code == grpc.StatusCode.INTERNAL
        rid = err.value.request_id
        assert rid and rid in err.value.details
        assert "disk on fire" not in err.value.details
        assert any(rid in r.getMessage() for r in caplog.records if r.name == "pixelrpc.server")
        deadline = time.monotonic() + 5
        while not any(rid in r.getMessage() and "INTERNAL" in r.getMessage()
                      for r in caplog.records if r.name == "pixelrpc.access"):
            assert time.monotonic() < deadline, "no access log line with the request id"
            time.sleep(0.05)
        assert c.registry.list() == []


def test_request_id_in_meta_trailers_and_access_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pixelrpc.access")
    with running_server(["captioning"], FAST, registry=str(tmp_path)) as srv:
        channel = grpc.insecure_channel(srv.address)
        from pixelrpc.v1 import server_pb2, server_pb2_grpc

        stub = server_pb2_grpc.ServerInfoStub(channel)
        resp, call = stub.GetServerInfo.with_call(server_pb2.GetServerInfoRequest(),
                                                  metadata=[("x-request-id", "req-42")])
        assert resp.meta.request_id == "req-42"
        assert ("x-request-id", "req-42") in call.trailing_metadata()
        deadline = time.monotonic() + 5
        while not any("request_id=req-42" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no access log line with the request id"
            time.sleep(0.05)


def test_metrics_endpoint(tmp_path):
    settings = FAST.replace(metrics_port=0)
    with running_server(["captioning"], settings, registry=str(tmp_path)) as srv:
        from pixelrpc.services.runtime import ServiceContext

        ctx: ServiceContext = srv.ctx
        http, port = ctx.metrics.serve_http(0)
        try:
            with ServiceClient(srv.address) as c:
                c.server_info()
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        finally:
            http.shutdown()
        assert 'pixelrpc_requests_total{code="OK",method="GetServerInfo"' in body
        assert "pixelrpc_request_latency_seconds_bucket" in body
        assert "pixelrpc_in_flight_requests" in body


def test_sigterm_drains_in_flight_call_and_exits_zero(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "slow_server_main.py"), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line + proc.stderr.read()
        address = f"127.0.0.1:{int(line.split()[1])}"
        channel = grpc.insecure_channel(address)
        stream = channel.unary_stream(METHOD)(b"30", timeout=30)  # 1.5 s of work
        assert next(stream) == b"step 0"
        health = health_pb2_grpc.HealthStub(channel)
        statuses: list[int] = []
        watcher = health.Watch(health_pb2.HealthCheckRequest(service=""))

        def watch():
            try:
                for resp in watcher:
                    statuses.append(resp.status)
            except grpc.RpcError:
                pass

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        rest = list(stream)  # the in-flight call completes
        assert rest[-1] == b"step 29" and len(rest) == 29
        assert proc.wait(20) == 0
        t.join(5)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    finally:
        if proc.poll() is None:
            proc.kill()


def test_manifest_serving_section_sets_per_model_limits(tmp_path):
    from types import SimpleNamespace

    from pixelrpc.models.errors import CancelToken, Overloaded
    from pixelrpc.models.registry import ModelCache, Registry
    from pixelrpc.models.registry.serialization import numpy_to_bytes
    from pixelrpc.v1 import common_pb2

    reg = Registry(tmp_path)
    serving = {"max_concurrency": 1, "timeout_s": 5, "device": "cpu"}
    reg.publish("limited", {"weights.safetensors": numpy_to_bytes({"W": np.ones((2, 2), np.float32)})},
                tasks=["captioning"], framework="numpy", metadata={"architecture": "toy", "serving": serving})
    with running_server(["captioning"], FAST, registry=reg) as srv:
        ctx = srv.ctx
        ref = common_pb2.ModelRef(name="limited")
        first = SimpleNamespace(cancel=CancelToken(), on_end=[], model_choice="")
        ctx.get_model(ref, task="captioning", call=first)
        assert 4.0 < first.cancel.deadline - time.monotonic() <= 5.0  # timeout_s caps the deadline
        with pytest.raises(Overloaded, match="max_concurrency=1"):
            ctx.get_model(ref, task="captioning",
                          call=SimpleNamespace(cancel=CancelToken(), on_end=[], model_choice=""))
        for release in first.on_end:
            release()
        ctx.get_model(ref, task="captioning",
                      call=SimpleNamespace(cancel=CancelToken(), on_end=[], model_choice=""))
    manifest = reg.resolve("limited")
    assert ModelCache(reg, device="cuda").device_for(manifest) == "cpu"  # the manifest picks
    assert ModelCache(reg, device="cuda", device_is_explicit=True).device_for(manifest) == "cuda"


def test_a_stream_item_has_its_own_token_deadline_and_releases(monkeypatch):
    """``Call.item``: one request of a stream; its token stops with the call's, its timeout and its
    on_end are its own, and everything else is the call's."""
    from types import SimpleNamespace

    from pixelrpc.models.errors import Cancelled, CancelToken, DeadlineExceeded
    from pixelrpc.services.runtime import Call

    call = object.__new__(Call)  # the state a Call keeps, without a grpc context
    call.cancel, call.deadline, call.on_end, call.compute_ms = CancelToken(), None, [], 0.0
    call.ctx = SimpleNamespace(name="captioning")
    released = []
    with call.item(timeout=0.2) as item:
        item.on_end.append(lambda: released.append("slot"))
        item.compute_ms += 2.0  # accounting is the call's
        assert item.ctx is call.ctx and item.cancel is not call.cancel and not item.deadline_passed()
        item.cancel.check()
        time.sleep(0.21)
        with pytest.raises(DeadlineExceeded):
            item.cancel.check()
        assert item.deadline_passed()  # a Call method, run on the item
        call.cancel.check()  # the call goes on
    assert released == ["slot"] and call.on_end == [] and call.compute_ms == 2.0
    async def slow_items():
        yield 1
        await asyncio.sleep(30)  # a request waiting for a slot, say
        yield 2

    async def read_until_deadline(item) -> tuple[list, float]:
        got, started = [], time.monotonic()
        with pytest.raises(DeadlineExceeded):
            async for x in item.within_deadline(slow_items()):
                got.append(x)
        return got, time.monotonic() - started

    with call.item(timeout=0.3) as item:
        got, waited = asyncio.run(read_until_deadline(item))
        assert got == [1] and 0.25 < waited < 2 and item.cancel.cancelled and not call.cancel.cancelled
    with call.item() as item:
        call.cancel.cancel("cancelled by the caller")
        assert item.cancel.cancelled
        with pytest.raises(Cancelled):
            item.cancel.check()


def test_one_torch_executor_per_process_sized_by_settings(tmp_path, monkeypatch):
    """Issue 11: the services of a process share one job (torch) executor of worker_threads threads
    (default 1: one OpenMP pool), each keeping its own slots; torch threads follow the CPUs allowed."""
    import torch

    from pixelrpc.services import settings as settings_mod

    assert Settings().worker_threads == 1
    previous = torch.get_num_threads()
    try:
        with running_server(["captioning", "visualization", "style"], FAST.replace(torch_threads=1),
                            registry=str(tmp_path)) as srv:
            runners = [ctx.jobs for ctx in srv.contexts.values()]
            assert len({id(r.executor) for r in runners}) == 1 and runners[0].executor._max_workers == 1
            assert len({id(r) for r in runners}) == 3 and all(r.max_concurrency == FAST.max_concurrency
                                                               for r in runners)
            assert runners[0].executor.submit(torch.get_num_threads).result(30) == 1  # the torch thread's pool
    finally:
        torch.set_num_threads(previous)
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(settings_mod, "CGROUP_CPU_MAX", quota)
    quota.write_text("max 100000\n")
    assert settings_mod.available_cpus() == len(os.sched_getaffinity(0))
    quota.write_text("50000 100000\n")  # half a CPU: one thread
    assert settings_mod.available_cpus() == 1 and settings_mod.default_torch_threads() == 1
