"""Admission: every size decided from the header, memory budgets, one job slot per request, deadlines.

(a) The size planning of ``models/imaging.py`` and the budgets, as units: every refusal names its
limit and the value. (b) Each image RPC of a real ``pixelrpc serve all`` process (the quick
registry, one torch thread) fed the worst shapes we could think of: each answers its exact status
code, the process's peak RSS stays within 300 MB of its idle RSS, and it keeps serving. (c) A request
takes one job slot, once; cheap calls answer while every slot is busy; an expired deadline is
DEADLINE_EXCEEDED in the access log and the metrics too, with the real queue time.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import torch
from admission_images import GREY, GREY_ALPHA, jpeg_bytes, palette_png, png_bytes, webp_bytes
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from slow_handler import METHOD, UNARY_METHOD, install

from pixelrpc.cli.launcher import free_port
from pixelrpc.clients import ServiceClient
from pixelrpc.clients.captioning import CaptioningClient
from pixelrpc.clients.errors import InvalidArgument, ResourceExhausted, RpcError
from pixelrpc.clients.style import StyleClient
from pixelrpc.clients.visualization import VisualizationClient
from pixelrpc.models import zoo
from pixelrpc.models.errors import InvalidInput, LimitExceeded, Overloaded
from pixelrpc.models.imaging import (
    REDUCE_ABOVE,
    ImageHeader,
    ImageLimits,
    check_request,
    decode_working,
    describe_image,
    plan_working,
    read_header,
)
from pixelrpc.services.convert import tensor_to_numpy
from pixelrpc.services.errors import rich_status
from pixelrpc.services.runtime import PixelBudget
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server
from pixelrpc.v1 import common_pb2

LIMITS = ImageLimits()
BICUBIC = Image.Resampling.BICUBIC
MB = 1024 * 1024
RSS_BUDGET_MB = 300


def _plan(header: ImageHeader, side: int = 32, crop: bool = True) -> object:
    return plan_working(header, side, crop=crop, resample=BICUBIC, limits=LIMITS)


def _refusal(exc_type, fn, *words) -> str:
    with pytest.raises(exc_type) as err:
        fn()
    for word in words:
        assert word in err.value.message, f"{word!r} not in {err.value.message!r}"
    return err.value.message


# ---------------------------------------------------------------------------- (a) planning, budgets
def test_shapes_beyond_the_limits_are_refused_from_the_header_naming_limit_and_value():
    _refusal(InvalidInput, lambda: _plan(read_header(png_bytes(1, 400_000), LIMITS)),
             "max_image_aspect", "1x400000", "400,000.0:1", "32:1")
    _refusal(InvalidInput, lambda: _plan(read_header(png_bytes(4, 3), LIMITS), side=224),
             "max_image_upscale", "4x3", "74.7 times", "limit of 32")
    _refusal(InvalidInput, lambda: read_header(png_bytes(6000, 4001), LIMITS),
             "max_image_pixels", "6000x4001", "24,006,000", "24,000,000", "not decoded")
    # the working size (no crop: the whole image at its working scale) counts too
    _refusal(InvalidInput, lambda: _plan(ImageHeader("PNG", "RGB", 4000, 3000), side=8000, crop=False),
             "max_image_pixels", "work on 10667x8000 = 85,336,000 pixels")


def test_decoding_memory_counts_per_format():
    # a progressive CMYK JPEG keeps 2 bytes per coefficient of its four components: 2 decoded pixels each
    prog = ImageHeader("JPEG", "CMYK", 6000, 4000, coefficient_buffer=True, samples=4.0)
    _refusal(InvalidInput, lambda: _plan(prog), "max_image_pixels", "48,375,000", "progressive CMYK JPEG")
    assert _plan(ImageHeader("JPEG", "CMYK", 3000, 3000, coefficient_buffer=True, samples=4.0)).cost == \
        18_000_000 + 375 * 375  # coefficients + the output at 1/8 scale
    _refusal(InvalidInput, lambda: _plan(ImageHeader("WEBP", "RGB", 3000, 2001)), "WebP", "24,012,000",
             "max_image_pixels")
    assert _plan(ImageHeader("WEBP", "RGB", 3000, 2000)).cost == 24_000_000
    baseline = _plan(ImageHeader("JPEG", "RGB", 6000, 4000, samples=1.5))
    assert baseline.draft == 8 and baseline.cost == 750 * 500  # DCT scaling: never decoded at full size
    small = _plan(ImageHeader("JPEG", "RGB", 1500, 1000, samples=1.5))
    assert small.draft == 1 and small.cost == 1_500_000  # ordinary images: decoded as before
    # what the header says, read from real bytes
    header = read_header(jpeg_bytes(64, 48, "CMYK", progressive=True), LIMITS)
    assert header.coefficient_buffer and header.samples == 4.0 and header.mode == "CMYK"
    header = read_header(jpeg_bytes(64, 48), LIMITS)
    assert not header.coefficient_buffer and header.samples == 1.5  # PIL's default 4:2:0
    with_thumbnail = io.BytesIO()  # a second SOS inside the EXIF segment (a thumbnail) is not a scan
    Image.open(io.BytesIO(jpeg_bytes(64, 48))).save(with_thumbnail, "JPEG", exif=b"Exif\0\0" + jpeg_bytes(16, 12))
    assert with_thumbnail.getvalue().count(b"\xff\xda") == 2
    assert not read_header(with_thumbnail.getvalue(), LIMITS).coefficient_buffer
    info = describe_image(webp_bytes(3000, 2001), LIMITS)
    assert not info.accepted and "max_image_pixels" in info.reason


def test_a_request_and_the_server_have_pixel_budgets():
    plans = [_plan(ImageHeader("PNG", "RGB", 6000, 4000))] * 8
    assert check_request(plans, LIMITS) == LIMITS.max_request_pixels  # exactly at the limit: fine
    _refusal(LimitExceeded, lambda: check_request(plans * 2, LIMITS),
             "max_request_pixels", "384,000,000", "192,000,000", "16 images")
    budget = PixelBudget(50)
    release = budget.reserve(30)
    message = _refusal(Overloaded, lambda: budget.reserve(30), "max_pixels_in_flight=50", "retry later")
    status = rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, message, Overloaded(message))
    assert any(d.type_url.endswith("google.rpc.RetryInfo") for d in status.details)
    _refusal(LimitExceeded, lambda: budget.reserve(51), "max_pixels_in_flight", "51")
    release()
    release()  # idempotent
    assert budget.used == 0
    budget.reserve(50)()


@pytest.mark.parametrize("shape, words", [
    ([2**32, 2**32], "18,446,744,073,709,551,616 elements"),
    ([0, 2**62], "a dimension of"),
    ([-1, 4], "negative"),
    ([1] * 40, "40 dimensions"),
])
def test_tensor_shapes_are_checked_with_exact_integers(shape, words):
    with pytest.raises(InvalidInput, match=words):
        tensor_to_numpy(common_pb2.Tensor(shape=shape, dtype="float32", data=b""), field="features")


def test_decode_working_matches_preprocess_and_stays_close_on_big_images():
    model = zoo.ImageModel(net=torch.nn.Identity(), features=torch.nn.Sequential(), class_names=[],
                           input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, value_scale=1.0)
    rng = np.random.default_rng(0)
    for (w, h), mode in [((50, 40), "RGB"), ((33, 70), "L"), ((64, 64), "RGBA"), ((41, 17), "P")]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        data = buf.getvalue()
        working = decode_working(data, model.plan_input(read_header(data, LIMITS), LIMITS))
        assert working.size == (32, 32) and working.mode == "RGB"
        # exactly what preprocess makes of the whole decoded image (the services' results are unchanged)
        assert torch.equal(model.preprocess([working]), model.preprocess([Image.open(io.BytesIO(data))]))
    # a big image takes the reducing path (block averages, strips): close to a full-resolution resize
    data = jpeg_bytes(3000, 2000)
    plan = model.plan_input(read_header(data, LIMITS), LIMITS)
    assert plan.header.pixels > REDUCE_ABOVE and plan.draft == 8
    reduced = np.asarray(decode_working(data, plan), dtype=np.float32)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((48, 32), BICUBIC).crop((8, 0, 40, 32))
    assert np.abs(reduced - np.asarray(full, dtype=np.float32)).mean() < 2.0


# ---------------------------------------------------------------------------- (b) memory, per RPC
@dataclass
class Served:
    process: subprocess.Popen
    addresses: dict[str, str]
    idle_mb: float

    def status(self) -> dict[str, float]:
        values = {}
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1024
        return values

    def reset_peak(self) -> None:
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)


SERVICES = ("captioning", "visualization", "style")
SMALL = png_bytes(64, 48)
TINY_STYLE = dict(iterations=1, image_size=32, style_size=32)


@pytest.fixture(scope="module")
def served(quick_bootstrap, tmp_path_factory):
    """``pixelrpc serve all`` on the quick registry in a subprocess, warmed up, with its idle RSS."""
    ports = {name: free_port() for name in SERVICES}
    env = {k: v for k, v in os.environ.items() if k not in ("PIXELRPC_PORT", "PIXELRPC_METRICS_PORT")}
    env.update({"PIXELRPC_REGISTRY": str(quick_bootstrap.registry.root), "PIXELRPC_TORCH_THREADS": "1",
                "OMP_NUM_THREADS": "1", "PIXELRPC_HOST": "127.0.0.1", "PIXELRPC_DEVICE": "cpu",
                "PIXELRPC_SHUTDOWN_DELAY": "0"})
    for name, port in ports.items():
        env[f"PIXELRPC_{name.upper()}_PORT"] = str(port)
        env[f"PIXELRPC_{name.upper()}_METRICS_PORT"] = "0"
        env[f"PIXELRPC_{name.upper()}_HTTP_PORT"] = "-1"
    log_path = tmp_path_factory.mktemp("admission") / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pixelrpc.cli", "serve", "all"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    try:
        deadline = time.monotonic() + 120
        for address in addresses.values():
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    with ServiceClient(address, timeout=2) as c:
                        if c.health(timeout=2) == "SERVING":
                            break
                except RpcError:
                    pass
                assert time.monotonic() < deadline, "the services did not become SERVING"
                time.sleep(0.2)
        with VisualizationClient(addresses["visualization"], timeout=60) as v:  # warm-up: every code path once
            v.classify([SMALL, SMALL])
            v.saliency(SMALL)
            v.fooling_image(SMALL, 0, max_iterations=1)
        with CaptioningClient(addresses["captioning"], timeout=60) as c:
            c.caption(SMALL)
        with StyleClient(addresses["style"], timeout=60) as s:
            s.stylize_unary(SMALL, [SMALL], **TINY_STYLE)
        server = Served(proc, addresses, 0.0)
        server.idle_mb = server.status()["VmRSS"]
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


M24 = (6000, 4000)  # 24 megapixels: max_image_pixels
OK, BAD, FULL = "OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"
# (service, label, expected code, call(client)); the images are made lazily (cached) by the calls
CASES = [
    ("visualization", "Classify 1x400000 PNG", BAD, lambda v: v.classify([png_bytes(1, 400_000)])),
    ("visualization", "Classify 1x10,000,000 grey PNG", BAD, lambda v: v.classify([png_bytes(1, 10_000_000, GREY)])),
    ("visualization", "Classify 6000x4000 RGB PNG", OK, lambda v: v.classify([png_bytes(*M24)])),
    ("visualization", "Classify 8 x 6000x4000 PNG", OK, lambda v: v.classify([png_bytes(*M24)] * 8)),
    ("visualization", "Classify 9 x 6000x4000 PNG", FULL, lambda v: v.classify([png_bytes(*M24)] * 9)),
    ("visualization", "Classify 64 x 6000x6000 JPEG", BAD, lambda v: v.classify([jpeg_bytes(6000, 6000)] * 64)),
    ("visualization", "Classify 64 x 1500x1000 JPEG", OK, lambda v: v.classify([jpeg_bytes(1500, 1000)] * 64)),
    ("visualization", "Classify 6000x4000 16-bit grey PNG", OK, lambda v: v.classify([png_bytes(*M24, GREY, 16)])),
    ("visualization", "Classify 6000x4000 CMYK JPEG", OK, lambda v: v.classify([jpeg_bytes(*M24, "CMYK")])),
    ("visualization", "Classify 6000x4000 progressive CMYK JPEG", BAD,
     lambda v: v.classify([jpeg_bytes(*M24, "CMYK", progressive=True)])),
    ("visualization", "Classify 3000x3000 progressive CMYK JPEG", OK,
     lambda v: v.classify([jpeg_bytes(3000, 3000, "CMYK", progressive=True)])),
    ("visualization", "Classify 6000x4000 palette+tRNS PNG", OK, lambda v: v.classify([palette_png(*M24)])),
    ("visualization", "Classify 6000x4000 1-bit PNG", OK, lambda v: v.classify([png_bytes(*M24, GREY, 1)])),
    ("visualization", "Classify 6000x4000 grey+alpha PNG", OK, lambda v: v.classify([png_bytes(*M24, GREY_ALPHA)])),
    ("visualization", "Classify 3000x2000 WebP", OK, lambda v: v.classify([webp_bytes(3000, 2000)])),
    ("visualization", "Classify 6000x4000 WebP", BAD, lambda v: v.classify([webp_bytes(*M24)])),
    ("visualization", "Saliency 1x400000 PNG", BAD, lambda v: v.saliency(png_bytes(1, 400_000))),
    ("visualization", "Saliency 6000x4000 palette+tRNS PNG", OK, lambda v: v.saliency(palette_png(*M24))),
    ("visualization", "Saliency 6000x4000 16-bit grey PNG", OK, lambda v: v.saliency(png_bytes(*M24, GREY, 16))),
    ("visualization", "FoolingImage 1x10,000,000 grey PNG", BAD,
     lambda v: v.fooling_image(png_bytes(1, 10_000_000, GREY), 0, max_iterations=2)),
    ("visualization", "FoolingImage 6000x4000 grey+alpha PNG", OK,
     lambda v: v.fooling_image(png_bytes(*M24, GREY_ALPHA), 0, max_iterations=2)),
    ("visualization", "FoolingImage 6000x4000 CMYK JPEG", OK,
     lambda v: v.fooling_image(jpeg_bytes(*M24, "CMYK"), 0, max_iterations=2)),
    ("captioning", "Caption 1x400000 PNG", BAD, lambda c: c.caption(png_bytes(1, 400_000))),
    ("captioning", "Caption 6000x4000 RGB PNG", OK, lambda c: c.caption(png_bytes(*M24))),
    ("captioning", "Caption 3000x3000 progressive CMYK JPEG", OK,
     lambda c: c.caption(jpeg_bytes(3000, 3000, "CMYK", progressive=True))),
    ("captioning", "Caption 6000x4000 1-bit PNG", OK, lambda c: c.caption(png_bytes(*M24, GREY, 1))),
    ("style", "Stylize 1x400000 PNG content", BAD,
     lambda s: s.stylize_unary(png_bytes(1, 400_000), [SMALL], **TINY_STYLE)),
    ("style", "Stylize 6000x4000 content + 7 styles", OK,
     lambda s: s.stylize_unary(png_bytes(*M24), [png_bytes(*M24)] * 7, **TINY_STYLE)),
    ("style", "Stylize 6000x4000 content + 8 styles", FULL,
     lambda s: s.stylize_unary(png_bytes(*M24), [png_bytes(*M24)] * 8, **TINY_STYLE)),
]
CLIENTS = {"visualization": VisualizationClient, "captioning": CaptioningClient, "style": StyleClient}


@pytest.mark.parametrize("service, label, expected, call", CASES, ids=[c[1] for c in CASES])
def test_worst_shapes_get_their_status_within_the_memory_budget(served, service, label, expected, call):
    served.reset_peak()
    with CLIENTS[service](served.addresses[service], timeout=60) as client:
        try:
            call(client)
            code, details = OK, ""
        except RpcError as exc:
            code, details = exc.code.name, exc.details
    peak = served.status()["VmHWM"] - served.idle_mb
    print(f"{label}: {code}, peak {peak:+.0f} MB over idle {served.idle_mb:.0f} MB")
    assert code == expected, details
    if code == BAD:
        assert "max_image" in details  # names the limit (and the value, see the unit tests)
    if code == FULL:
        assert "max_request_pixels" in details
    assert peak < RSS_BUDGET_MB, f"{label}: peak RSS {peak:.0f} MB over idle"
    with ServiceClient(served.addresses[service], timeout=5) as c:
        assert c.health() == "SERVING"


# ---------------------------------------------------------------------------- (c) one slot, cheap calls
@pytest.fixture(scope="module")
def vis_registry(tmp_path_factory):
    from pixelrpc.models.registry import Registry

    reg = Registry(tmp_path_factory.mktemp("registry"))
    torch.manual_seed(0)
    zoo.publish_squeezenet(reg, "squeezenet1_1", zoo.build_squeezenet(3).eval(), class_names=["a", "b", "c"],
                           input_size=32)
    return reg


FAST = Settings(shutdown_delay=0.0, registry_refresh_seconds=60.0)


def test_a_visualization_request_takes_one_job_slot_once(vis_registry, one_torch_thread):
    with running_server(["visualization"], FAST, registry=vis_registry) as srv, \
            VisualizationClient(srv.address, timeout=30) as client:
        jobs = srv.ctx.jobs
        acquired = []
        original = jobs.acquire

        async def counting(*args, **kwargs):
            acquired.append(1)
            return await original(*args, **kwargs)

        jobs.acquire = counting
        for name, call in [("Classify", lambda: client.classify([SMALL, png_bytes(40, 90), SMALL])),
                           ("Saliency", lambda: client.saliency(SMALL)),
                           ("FoolingImage", lambda: client.fooling_image(SMALL, 1, max_iterations=2)),
                           ("ClassVisualization", lambda: client.class_visualization(0, num_iterations=2))]:
            acquired.clear()
            call()
            assert len(acquired) == 1, f"{name} took {len(acquired)} job slots"
        acquired.clear()
        with pytest.raises(InvalidArgument, match="max_image_aspect"):  # refused before queueing
            client.classify([png_bytes(1, 400_000)])
        assert acquired == [] and srv.ctx.pixels.used == 0


def test_cheap_calls_answer_while_every_slot_is_busy(vis_registry):
    settings = FAST.replace(max_concurrency=2, queue_depth=0)
    with running_server(["visualization"], settings, registry=vis_registry, configure=install) as srv:
        channel = grpc.insecure_channel(srv.address)
        slow = channel.unary_unary(UNARY_METHOD)
        busy = [slow.future(b"60", timeout=30) for _ in range(2)]  # 3 s each, both slots
        deadline = time.monotonic() + 10
        while srv.ctx.jobs.running < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as err:  # no slot, no queue: a job is refused ...
            slow(b"1", timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with ServiceClient(srv.address, timeout=5) as c:  # ... cheap calls are not, and do not wait
            assert [m.name for m in c.registry.list()] == ["squeezenet1_1"]
            assert c.registry.get("squeezenet1_1").version == 1
            assert c.server_info().limits.max_image_pixels == settings.max_image_pixels
            assert c.describe_image(png_bytes(1, 400_000)).reason.count("max_image_aspect") == 1
            assert c.health() == "SERVING"
            stub = health_pb2_grpc.HealthStub(channel)
            assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        assert srv.server.slow.finished == 0, "the cheap calls waited for the jobs"
        assert [f.result() for f in busy] == [b"done 59"] * 2
        channel.close()


# ---------------------------------------------------------------------------- (c) deadlines
def _access(caplog, request_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for record in caplog.records:
            access = getattr(record, "access", None)
            if access and access["request_id"] == request_id:
                return access
        assert time.monotonic() < deadline, f"no access log line for {request_id}"
        time.sleep(0.02)


def test_expired_deadline_is_deadline_exceeded_in_log_and_metrics_with_real_queue_time(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pixelrpc.access")
    settings = FAST.replace(max_concurrency=1, queue_depth=4)
    with running_server(["captioning"], settings, registry=str(tmp_path), configure=install) as srv:
        channel = grpc.insecure_channel(srv.address)
        unary, stream = channel.unary_unary(UNARY_METHOD), channel.unary_stream(METHOD)
        hold = unary.future(b"40", timeout=30)  # 2 s in the only slot
        while srv.ctx.jobs.running < 1:
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as err:  # expires while queued behind it
            unary(b"1", timeout=0.5, metadata=[("x-request-id", "queued")])
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        queued = _access(caplog, "queued")
        assert queued["code"] == "DEADLINE_EXCEEDED"
        assert queued["queue_ms"] >= 400  # it waited in the queue until its deadline, and says so
        assert hold.result() == b"done 39"
        with pytest.raises(grpc.RpcError) as err:  # expires while running (a unary call) ...
            unary(b"200", timeout=0.5, metadata=[("x-request-id", "running")])
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _access(caplog, "running")["code"] == "DEADLINE_EXCEEDED"
        with pytest.raises(grpc.RpcError) as err:  # ... and while streaming
            list(stream(b"200", timeout=0.5, metadata=[("x-request-id", "streaming")]))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _access(caplog, "streaming")["code"] == "DEADLINE_EXCEEDED"
        cancelled = stream(b"200", timeout=30, metadata=[("x-request-id", "cancelled")])
        assert next(cancelled) == b"step 0"
        cancelled.cancel()  # a client cancel stays CANCELLED
        assert _access(caplog, "cancelled")["code"] == "CANCELLED"
        metrics = srv.ctx.metrics.registry
        for method, count in (("SleepUnary", 2), ("Sleep", 1)):
            assert metrics.get_sample_value("pixelrpc_requests_total", {
                "service": "captioning", "method": method, "code": "DEADLINE_EXCEEDED", "model": "", "version": ""}) == count
        assert metrics.get_sample_value("pixelrpc_queue_seconds_sum", {"service": "captioning"}) >= 0.4
        channel.close()


def test_the_pixel_budget_refuses_with_retry_info_and_never_allocates(vis_registry):
    from grpc_status import rpc_status

    from pixelrpc.v1 import visualization_pb2, visualization_pb2_grpc

    settings = FAST.replace(max_pixels_in_flight=30_000)  # one 150 x 150 image at a time
    with running_server(["visualization"], settings, registry=vis_registry) as srv, \
            VisualizationClient(srv.address, timeout=30) as client:
        image = common_pb2.Image(data=png_bytes(150, 150))
        release = srv.ctx.pixels.reserve(22_500)  # as if another request's image were being decoded
        stub = visualization_pb2_grpc.VisualizationServiceStub(grpc.insecure_channel(srv.address))
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(visualization_pb2.ClassifyRequest(images=[image]), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_pixels_in_flight=30,000" in err.value.details()
        details = rpc_status.from_call(err.value).details
        assert any(d.type_url.endswith("google.rpc.RetryInfo") for d in details)
        assert srv.ctx.jobs.running == 0 and srv.ctx.pixels.used == 22_500
        release()
        assert len(client.classify([image.data]).results) == 1 and srv.ctx.pixels.used == 0
        with pytest.raises(ResourceExhausted, match="max_pixels_in_flight"):  # could never fit
            client.classify([png_bytes(200, 200)])
        assert srv.ctx.pixels.used == 0
