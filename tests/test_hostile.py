"""Hostile input against the three services: every case asserts the exact status code, then that the
server still reports SERVING (health ``""`` and the service's own name).

Each service runs as its own ``pixelrpc serve`` process on the quick-bootstrapped registry, with small
limits (PIXELRPC_* variables, see ``LIMITS``) and an address-space cap, so that a request that
slips past a limit fails inside the server instead of exhausting the test machine. A case that kills
its server fails; the next case gets a restarted one.

Categories (the ``id`` prefix of each case): images, tensors, options, names, streams, deadlines,
junk (protocol-level garbage), auth. Expected codes follow the issue-10 hardening contract; a case
whose code depends on one contract point names it (``Case.contract``, shown when the case fails).

Wire notes: proto3 ``uint32`` fields cannot hold -1; a client that casts -1 sends 2^32-1, which is
what the "-1" cases send. An ``int64`` seed of 2^63 (as uint64) arrives as -2^63, which is what the
"seed >= 2^63" cases send.
"""

from __future__ import annotations

import io
import os
import queue
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from server_procs import ServerProcess

from pixelrpc.v1 import captioning_pb2 as cpb
from pixelrpc.v1 import captioning_pb2_grpc as cgrpc
from pixelrpc.v1 import common_pb2, registry_pb2, registry_pb2_grpc, server_pb2, server_pb2_grpc
from pixelrpc.v1 import style_transfer_pb2 as spb
from pixelrpc.v1 import style_transfer_pb2_grpc as sgrpc
from pixelrpc.v1 import visualization_pb2 as vpb
from pixelrpc.v1 import visualization_pb2_grpc as vgrpc

pytestmark = pytest.mark.slow

SC = grpc.StatusCode
OK, IA, NF, RE = SC.OK, SC.INVALID_ARGUMENT, SC.NOT_FOUND, SC.RESOURCE_EXHAUSTED
CANCELLED, DEADLINE, UNIMPL, UNAUTH = SC.CANCELLED, SC.DEADLINE_EXCEEDED, SC.UNIMPLEMENTED, SC.UNAUTHENTICATED
MIB = 1024 * 1024
TIMEOUT = 30.0  # per hostile call; long enough for the slowest legitimate case
CAPTIONER, CLASSIFIER = "shapes-captioner", "shapes-squeezenet"
TOKEN = "hostile-token-7f3a"
MAX_IMAGE_BYTES = 1 * MIB
MAX_MESSAGE_BYTES = 3 * MIB
STYLE_MAX_SIDE = 256  # style: small, so that "over max_image_side" cases stay cheap
MAX_IMAGE_SIDE = 1024  # captioning/visualization: the default, so a 32:1 image's working size (1024x32) fits
MAX_ITERATIONS = 1000
# Small limits for fast cases. Settings another branch adds (max_request_pixels, ...) are read from the
# environment there; here they are ignored, which is why those cases fail until the branches merge.
LIMITS = {
    "PIXELRPC_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
    "PIXELRPC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
    "PIXELRPC_MAX_IMAGE_PIXELS": str(16_000_000),  # a 1x10,000,000 image passes this: its aspect must stop it
    "PIXELRPC_MAX_REQUEST_PIXELS": str(11_000_000),
    "PIXELRPC_MAX_ITERATIONS": str(MAX_ITERATIONS),
    "PIXELRPC_QUEUE_DEPTH": "16",
    "PIXELRPC_SHUTDOWN_GRACE": "2",
}
# One job at a time on the iterative services: a cancelled job that kept its slot blocks the next case.
PER_SERVICE = {
    "captioning": {"PIXELRPC_MAX_CONCURRENCY": "2", "PIXELRPC_PRELOAD": f"{CAPTIONER},{CLASSIFIER}",
                   "PIXELRPC_MAX_IMAGE_SIDE": str(MAX_IMAGE_SIDE)},
    "visualization": {"PIXELRPC_MAX_CONCURRENCY": "1", "PIXELRPC_PRELOAD": CLASSIFIER,
                      "PIXELRPC_MAX_IMAGE_SIDE": str(MAX_IMAGE_SIDE)},
    "style": {"PIXELRPC_MAX_CONCURRENCY": "1", "PIXELRPC_PRELOAD": CLASSIFIER,
              "PIXELRPC_MAX_IMAGE_SIDE": str(STYLE_MAX_SIDE)},
}
MEMORY_LIMIT = 8 * 1024 ** 3  # address space per server: torch maps ~4 GiB at start


# ====================================================================== test harness
@dataclass
class Ctx:
    """What a case sees: stubs on its server's channel, and the models' dimensions."""

    channel: grpc.Channel
    D: int  # captioner input dimension
    K: int  # classifier classes
    token: str | None = None

    @property
    def cap(self):
        return cgrpc.CaptioningServiceStub(self.channel)

    @property
    def vis(self):
        return vgrpc.VisualizationServiceStub(self.channel)

    @property
    def sty(self):
        return sgrpc.StyleTransferServiceStub(self.channel)

    @property
    def reg(self):
        return registry_pb2_grpc.ModelRegistryStub(self.channel)

    @property
    def info(self):
        return server_pb2_grpc.ServerInfoStub(self.channel)

    def raw_unary(self, path: str):
        return self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)

    def raw_unary_stream(self, path: str):
        return self.channel.unary_stream(path, request_serializer=None, response_deserializer=None)

    def raw_stream_stream(self, path: str):
        return self.channel.stream_stream(path, request_serializer=None, response_deserializer=None)


@dataclass(frozen=True)
class Case:
    id: str
    service: str  # captioning | visualization | style | auth-<service>
    run: Callable[[Ctx], Any]  # raises grpc.RpcError, or returns the response (streams: a list)
    expected: grpc.StatusCode
    check: Callable[[Any], None] | None = None  # more assertions on the response or the error
    contract: str = ""  # the contract point the case proves (shown when it fails)


CASES: list[Case] = []


def case(id: str, service: str, run, expected, check=None, contract: str = "") -> None:
    CASES.append(Case(id, service, run, expected, check, contract))


@pytest.fixture(scope="module")
def models(quick_bootstrap):
    reg = quick_bootstrap.registry
    return reg.resolve(CAPTIONER).metadata["input_dim"], reg.resolve(CLASSIFIER).metadata["num_classes"]


@pytest.fixture(scope="module")
def servers(quick_bootstrap, tmp_path_factory):
    """One ``pixelrpc serve`` process per service (started together), plus a token-protected one."""
    logs = tmp_path_factory.mktemp("hostile-logs")
    root = quick_bootstrap.registry.root
    procs = {svc: ServerProcess(svc, root, logs, env={**LIMITS, **PER_SERVICE[svc]}, memory_limit=MEMORY_LIMIT)
             for svc in PER_SERVICE}
    procs["auth"] = ServerProcess("all", root, logs, env={**LIMITS, "PIXELRPC_AUTH_TOKEN": TOKEN,
                                                          "PIXELRPC_MAX_IMAGE_SIDE": str(STYLE_MAX_SIDE)},
                                  memory_limit=MEMORY_LIMIT, label="auth")
    try:
        for p in procs.values():
            p.start()
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        codes = {name: p.stop() for name, p in procs.items()}
        # A server must survive every case and then still shut down cleanly.
        assert all(code == 0 for code in codes.values()), codes


def rpc_outcome(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    try:
        result = fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", exc
    return OK, "", result


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)  # CASES is filled below, before collection
def test_hostile(c: Case, servers, models):
    D, K = models
    service = c.service.removeprefix("auth-")
    proc = servers["auth" if c.service.startswith("auth-") else service].ensure()
    ctx = Ctx(proc.channel(service), D, K)
    code, details, result = rpc_outcome(lambda: c.run(ctx))
    alive = proc.alive
    health = proc.health_report() if alive else {"process": f"exited {proc.process.returncode}"}
    assert code == c.expected, (
        f"{c.id}: expected {c.expected.name}, got {code.name}: {details[:300]!r}"
        + (f" [contract: {c.contract}]" if c.contract else ""))
    if c.check is not None:
        c.check(result)
    assert alive and all(v == "SERVING" for v in health.values()), f"server unhealthy after {c.id}: {health}"


# ====================================================================== payload builders
def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@cache
def small_png(size: int = 32) -> bytes:
    rng = np.random.default_rng(size)
    return encode(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))


@cache
def noise(fmt: str, size: int = 64) -> bytes:
    rng = np.random.default_rng(7)
    return encode(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)), fmt)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@cache
def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@cache
def solid(width: int, height: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    color = {"RGB": (200, 40, 40), "RGBA": (200, 40, 40, 128), "LA": (90, 128), "CMYK": (0, 200, 200, 0),
             "L": 90, "1": 1, "I;16": 40000, "P": 3}[mode]
    img = Image.new(mode, (width, height), color)
    if mode == "P":
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    return encode(img, fmt)


@cache
def palette_with_transparency() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    img.paste(5, (4, 4, 12, 12))
    return encode(img, "PNG", transparency=0)


@cache
def over_max_image_bytes() -> bytes:
    return small_png() + os.urandom(MAX_IMAGE_BYTES + 1 - len(small_png()))


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<rect width="64" height="64" fill="red"/></svg>')

# kind -> (bytes factory, expected, contract point). ok=decodes and the job runs.
IMAGE_KINDS: dict[str, tuple[Callable[[], bytes], grpc.StatusCode, str]] = {
    "empty": (lambda: b"", IA, ""),
    "garbage": (lambda: b"\x00\x01not an image at all\xff" * 8, IA, ""),
    "truncated_png": (lambda: noise("PNG")[: len(noise("PNG")) // 2], IA, ""),
    "truncated_jpeg": (lambda: noise("JPEG")[: len(noise("JPEG")) // 2], IA, ""),
    "tiff": (lambda: solid(16, 16, fmt="TIFF"), IA, ""),
    "ico": (lambda: solid(16, 16, fmt="ICO"), IA, ""),
    "svg_text": (lambda: SVG, IA, ""),
    "bomb_header_100000x100000": (lambda: bomb_png(100_000, 100_000), IA, "max_image_pixels from the header"),
    "long_thin_1x400000": (lambda: solid(1, 400_000), IA, "admission: max_image_aspect from the header"),
    "long_thin_10000000x1": (lambda: solid(10_000_000, 1), IA, "admission: max_image_aspect from the header"),
    "aspect_100_to_1": (lambda: solid(1000, 10), IA, "admission: max_image_aspect"),
    "aspect_33_to_1": (lambda: solid(330, 10), IA, "admission: max_image_aspect (32)"),
    "aspect_32_to_1_at_limit": (lambda: solid(320, 10), OK, "admission: max_image_aspect is inclusive"),
    "tiny_1x1": (lambda: solid(1, 1), OK, "admission: 32x upscale is within max_image_upscale"),
    "mode_16bit_gray": (lambda: solid(16, 16, "I;16"), OK, ""),
    "mode_cmyk_jpeg": (lambda: solid(16, 16, "CMYK", "JPEG"), OK, ""),
    "mode_palette": (lambda: solid(16, 16, "P"), OK, ""),
    "mode_palette_transparency": (palette_with_transparency, OK, ""),
    "mode_la": (lambda: solid(16, 16, "LA"), OK, ""),
    "mode_1bit": (lambda: solid(16, 16, "1"), OK, ""),
    "mode_rgba": (lambda: solid(16, 16, "RGBA"), OK, ""),
    "mode_gray_gif": (lambda: solid(16, 16, "L", "GIF"), OK, ""),
    "bmp": (lambda: solid(16, 16, fmt="BMP"), OK, ""),
    "webp": (lambda: solid(16, 16, fmt="WEBP"), OK, ""),
    "over_max_image_bytes": (over_max_image_bytes, RE, "max_image_bytes -> RESOURCE_EXHAUSTED"),
}


def img(data: bytes) -> common_pb2.Image:
    return common_pb2.Image(data=data)


def features(D: int, value: float = 0.5, dtype: str = "float32", shape=None) -> common_pb2.Tensor:
    arr = np.full(D, value, dtype=dtype)
    return common_pb2.Tensor(shape=list(shape or arr.shape), dtype=dtype, data=arr.tobytes())


def caption_job(ctx: Ctx, **kw) -> cpb.CaptionJob:
    if "image" not in kw and "features" not in kw:
        kw["features"] = features(ctx.D)
    return cpb.CaptionJob(**kw)


def caption(ctx: Ctx, job: cpb.CaptionJob, timeout: float = TIMEOUT, metadata=None):
    return ctx.cap.Caption(cpb.CaptionRequest(job=job), timeout=timeout, metadata=metadata)


def style_job(content: bytes | None = None, styles: list[spb.StyleImage] | None = None, seed: int | None = 1,
              model: common_pb2.ModelRef | None = None, preset: str = "", **params) -> spb.StyleJob:
    p = {"image_size": 32, "style_size": 32, "iterations": 1, **params}
    job = spb.StyleJob(content=img(small_png() if content is None else content),
                       styles=[spb.StyleImage(image=img(small_png()))] if styles is None else styles,
                       parameters=spb.StyleParameters(**p), preset=preset, model=model)
    if seed is not None:
        job.seed = seed
    return job


def stylize_unary(ctx: Ctx, job: spb.StyleJob, timeout: float = TIMEOUT):
    return ctx.sty.StylizeUnary(spb.StylizeUnaryRequest(job=job), timeout=timeout)


def drain(call) -> list:
    return list(call)


# ====================================================================== images
IMAGE_TARGETS: dict[str, tuple[str, Callable[[Ctx, bytes], Any]]] = {
    "caption": ("captioning", lambda ctx, data: caption(ctx, cpb.CaptionJob(image=img(data)))),
    "classify": ("visualization", lambda ctx, data: ctx.vis.Classify(
        vpb.ClassifyRequest(images=[img(data)], top_k=3), timeout=TIMEOUT)),
    "saliency": ("visualization", lambda ctx, data: ctx.vis.Saliency(
        vpb.SaliencyRequest(image=img(data), target_class=1), timeout=TIMEOUT)),
    "stylize": ("style", lambda ctx, data: stylize_unary(ctx, style_job(content=data))),
    "explain": ("captioning", lambda ctx, data: drain(ctx.cap.ExplainCaption(
        cpb.ExplainCaptionRequest(image=img(data), max_length=3), timeout=TIMEOUT))),
}

for _target, (_service, _call) in IMAGE_TARGETS.items():
    for _kind, (_make, _expected, _contract) in IMAGE_KINDS.items():
        if _target == "stylize" and _kind == "aspect_32_to_1_at_limit":
            continue  # at image_size 32 its long side (1024) is over the style server's max_image_side
        case(f"images-{_target}-{_kind}", _service,
             lambda ctx, c=_call, m=_make: c(ctx, m()), _expected, contract=_contract)

case("images-classify-65_images", "visualization",
     lambda ctx: ctx.vis.Classify(vpb.ClassifyRequest(images=[img(solid(8, 8))] * 65), timeout=TIMEOUT), IA)
case("images-classify-64_images_ok", "visualization",
     lambda ctx: ctx.vis.Classify(vpb.ClassifyRequest(images=[img(solid(8, 8))] * 64), timeout=TIMEOUT), OK)
case("images-classify-one_bad_among_good", "visualization",
     lambda ctx: ctx.vis.Classify(vpb.ClassifyRequest(images=[img(small_png()), img(b"junk"), img(small_png())]),
                                  timeout=TIMEOUT), IA)
case("images-classify-request_pixels_over_max", "visualization",
     lambda ctx: ctx.vis.Classify(vpb.ClassifyRequest(images=[img(solid(2000, 2000))] * 3), timeout=TIMEOUT),
     RE, contract="admission: max_request_pixels -> RESOURCE_EXHAUSTED (LimitExceeded)")
case("images-stylize-request_pixels_over_max", "style",
     lambda ctx: stylize_unary(ctx, style_job(content=solid(2000, 2000), styles=[
         spb.StyleImage(image=img(solid(2000, 2000))), spb.StyleImage(image=img(solid(2000, 2000)))])),
     RE, contract="admission: max_request_pixels -> RESOURCE_EXHAUSTED (LimitExceeded)")
case("images-stylize-1x1_upscaled_64x", "style",
     lambda ctx: stylize_unary(ctx, style_job(content=solid(1, 1), image_size=64)), IA,
     contract="admission: max_image_upscale (32)")
case("images-stylize-garbage_style_image", "style",
     lambda ctx: stylize_unary(ctx, style_job(styles=[spb.StyleImage(image=img(b"GIF89a junk"))])), IA)
case("images-stylize-bomb_style_image", "style",
     lambda ctx: stylize_unary(ctx, style_job(styles=[spb.StyleImage(image=img(bomb_png(100_000, 100_000)))])),
     IA)
case("images-fooling-garbage", "visualization",
     lambda ctx: drain(ctx.vis.FoolingImage(vpb.FoolingImageRequest(image=img(b"garbage"), target_class=1),
                                            timeout=TIMEOUT)), IA)
case("images-fooling-bomb_header", "visualization",
     lambda ctx: drain(ctx.vis.FoolingImage(vpb.FoolingImageRequest(
         image=img(bomb_png(100_000, 100_000)), target_class=1), timeout=TIMEOUT)), IA)
case("images-explain-map_over_max_message_bytes", "captioning",
     lambda ctx: drain(ctx.cap.ExplainCaption(cpb.ExplainCaptionRequest(image=img(solid(1500, 1500))),
                                              timeout=TIMEOUT)), IA,
     contract="a word's float32 map at the image's resolution must fit in max_message_bytes")
case("images-explain-no_image", "captioning",
     lambda ctx: drain(ctx.cap.ExplainCaption(cpb.ExplainCaptionRequest(), timeout=TIMEOUT)), IA)
case("images-explain-unknown_words", "captioning",
     lambda ctx: drain(ctx.cap.ExplainCaption(cpb.ExplainCaptionRequest(
         image=img(small_png()), caption="a zebra " * 1000), timeout=TIMEOUT)), IA)
case("images-explain-max_length_-1", "captioning",
     lambda ctx: drain(ctx.cap.ExplainCaption(cpb.ExplainCaptionRequest(
         image=img(small_png()), max_length=2**32 - 1), timeout=TIMEOUT)), IA)
case("images-describe-bomb_header", "captioning",
     lambda ctx: ctx.info.DescribeImage(server_pb2.DescribeImageRequest(image=img(bomb_png(100_000, 100_000))),
                                        timeout=TIMEOUT), IA)


# ====================================================================== tensors (caption features)
def tensor_case(id: str, make: Callable[[Ctx], common_pb2.Tensor], expected=IA, contract: str = "") -> None:
    case(f"tensors-caption-{id}", "captioning", lambda ctx: caption(ctx, cpb.CaptionJob(features=make(ctx))),
         expected, contract=contract)


def raw_tensor(shape, dtype="float32", data=b"") -> Callable[[Ctx], common_pb2.Tensor]:
    return lambda ctx: common_pb2.Tensor(shape=list(shape(ctx) if callable(shape) else shape), dtype=dtype,
                                         data=data(ctx) if callable(data) else data)


tensor_case("float32_ok", lambda ctx: features(ctx.D), OK)
tensor_case("float64_1xD_ok", lambda ctx: features(ctx.D, dtype="float64", shape=[1, ctx.D]), OK)
tensor_case("dtype_int32", lambda ctx: features(ctx.D, 1, dtype="int32"))
tensor_case("dtype_uint8", lambda ctx: features(ctx.D, 1, dtype="uint8"))
tensor_case("dtype_float16", lambda ctx: common_pb2.Tensor(shape=[ctx.D], dtype="float16", data=b"\0" * 2 * ctx.D))
tensor_case("dtype_empty", lambda ctx: common_pb2.Tensor(shape=[ctx.D], dtype="", data=b"\0" * 4 * ctx.D))
tensor_case("dtype_object", lambda ctx: common_pb2.Tensor(shape=[ctx.D], dtype="object", data=b"\0" * 8 * ctx.D))
tensor_case("negative_dim", raw_tensor(lambda ctx: [-1, ctx.D], data=lambda ctx: b"\0" * 4 * ctx.D))
tensor_case("negative_dims_product_positive", raw_tensor(lambda ctx: [-1, -ctx.D], data=lambda ctx: b"\0" * 4 * ctx.D))
tensor_case("shape_2^32_x_2^32_overflows", raw_tensor([2**32, 2**32]),
            contract="tensor shape overflow -> INVALID_ARGUMENT (never INTERNAL)")
tensor_case("shape_2^62", raw_tensor([2**62]))
tensor_case("shape_2^63-1_x_2", raw_tensor([2**63 - 1, 2]), contract="tensor shape overflow -> INVALID_ARGUMENT")
tensor_case("data_short", raw_tensor(lambda ctx: [ctx.D], data=lambda ctx: b"\0" * (4 * ctx.D - 1)))
tensor_case("data_long", raw_tensor(lambda ctx: [ctx.D], data=lambda ctx: b"\0" * (4 * ctx.D + 4)))
tensor_case("nan", lambda ctx: features(ctx.D, float("nan")))
tensor_case("plus_inf", lambda ctx: features(ctx.D, float("inf")))
tensor_case("minus_inf", lambda ctx: features(ctx.D, float("-inf")))
tensor_case("float32_overflow_in_float64", lambda ctx: features(ctx.D, 1e300, dtype="float64"), OK)
tensor_case("wrong_D_minus_1", lambda ctx: features(ctx.D - 1))
tensor_case("wrong_D_plus_1", lambda ctx: features(ctx.D + 1))
tensor_case("zero_length", raw_tensor([0]))
tensor_case("scalar", raw_tensor([], data=b"\0\0\0\0"))
tensor_case("3d_1x1xD", lambda ctx: features(ctx.D, shape=[1, 1, ctx.D]))
tensor_case("2d_2xD", raw_tensor(lambda ctx: [2, ctx.D], data=lambda ctx: b"\0" * 8 * ctx.D))
case("tensors-caption-no_input", "captioning", lambda ctx: caption(ctx, cpb.CaptionJob()), IA)
case("tensors-stream_caption-nan", "captioning", lambda ctx: drain(ctx.cap.StreamCaption(
    cpb.StreamCaptionRequest(job=cpb.CaptionJob(features=features(ctx.D, float("nan")))), timeout=TIMEOUT)), IA)
case("tensors-stream_caption-shape_overflow", "captioning", lambda ctx: drain(ctx.cap.StreamCaption(
    cpb.StreamCaptionRequest(job=cpb.CaptionJob(features=raw_tensor([2**32, 2**32])(ctx))), timeout=TIMEOUT)),
    IA, contract="tensor shape overflow -> INVALID_ARGUMENT")


# ====================================================================== options
def caption_opts(expected=IA, contract: str = "", **opts):
    def run(ctx):
        return caption(ctx, caption_job(ctx, options=cpb.CaptionOptions(**opts)))
    return run, expected, contract


GREEDY, BEAM, SAMPLE = cpb.DECODING_STRATEGY_GREEDY, cpb.DECODING_STRATEGY_BEAM, cpb.DECODING_STRATEGY_SAMPLE
NAN, INF = float("nan"), float("inf")
U32_MINUS_1 = 2**32 - 1
for _id, (_run, _exp, _contract) in {
    "beam_width_33": caption_opts(strategy=BEAM, beam_width=33),
    "beam_width_2^32-1": caption_opts(strategy=BEAM, beam_width=U32_MINUS_1),
    "max_length_101": caption_opts(max_length=101),
    "max_length_2^32-1": caption_opts(max_length=U32_MINUS_1),
    "temperature_0": caption_opts(strategy=SAMPLE, temperature=0.0, seed=1),
    "temperature_negative": caption_opts(strategy=SAMPLE, temperature=-1.0, seed=1),
    "temperature_nan": caption_opts(strategy=SAMPLE, temperature=NAN, seed=1),
    "temperature_inf": caption_opts(strategy=SAMPLE, temperature=INF, seed=1),
    "num_captions_33_sample": caption_opts(strategy=SAMPLE, num_captions=33, seed=1),
    "num_captions_2_greedy": caption_opts(strategy=GREEDY, num_captions=2),
    "num_captions_over_beam_width": caption_opts(strategy=BEAM, beam_width=3, num_captions=4),
    "length_penalty_nan": caption_opts(strategy=BEAM, length_penalty=NAN),
    "length_penalty_negative": caption_opts(strategy=BEAM, length_penalty=-1.0),
    "strategy_unknown_enum_99": caption_opts(strategy=99),
    "seed_negative": caption_opts(strategy=SAMPLE, seed=-1),
    "seed_2^63_wraps_negative": caption_opts(strategy=SAMPLE, seed=-(2**63)),
    "seed_2^63-1_ok": caption_opts(OK, strategy=SAMPLE, seed=2**63 - 1),
    "beam_width_32_ok": caption_opts(OK, strategy=BEAM, beam_width=32, num_captions=2, max_length=8),
}.items():
    case(f"options-caption-{_id}", "captioning", _run, _exp, contract=_contract)

SMALL = lambda: img(small_png())  # noqa: E731


def vis_unary(rpc_name: str, expected=IA, contract: str = "", **fields):
    def run(ctx):
        request_cls = {"Classify": vpb.ClassifyRequest, "Saliency": vpb.SaliencyRequest}[rpc_name]
        kw = dict(fields)
        if rpc_name == "Classify":
            kw.setdefault("images", [SMALL()])
        else:
            kw.setdefault("image", SMALL())
        return getattr(ctx.vis, rpc_name)(request_cls(**kw), timeout=TIMEOUT)
    return run, expected, contract


def vis_stream(rpc_name: str, expected=IA, contract: str = "", **fields):
    def run(ctx):
        if rpc_name == "FoolingImage":
            kw = {"image": SMALL(), "target_class": 1, "max_iterations": 2, **fields}
            return drain(ctx.vis.FoolingImage(vpb.FoolingImageRequest(**kw), timeout=TIMEOUT))
        kw = {"target_class": 1, "num_iterations": 2, **fields}
        return drain(ctx.vis.ClassVisualization(vpb.ClassVisualizationRequest(**kw), timeout=TIMEOUT))
    return run, expected, contract


SEED_BUG = "seeds must be in [0, 2^63) as in CaptionOptions (not in the contract: see the report)"
for _id, (_run, _exp, _contract) in {
    "classify-top_k_2^32-1_clamped": vis_unary("Classify", OK, top_k=U32_MINUS_1),
    "saliency-target_class_K": vis_unary("Saliency", IA, target_class=18),
    "saliency-target_class_minus_1": vis_unary("Saliency", IA, target_class=U32_MINUS_1),
    "saliency-method_unknown_enum_99": vis_unary("Saliency", IA, method=99),
    "saliency-ig_baseline_unknown_enum_99": vis_unary(
        "Saliency", IA, method=vpb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
        integrated_gradients=vpb.IntegratedGradientsOptions(steps=4, baseline=99)),
    "saliency-ig_steps_1": vis_unary("Saliency", IA, method=vpb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
                                     integrated_gradients=vpb.IntegratedGradientsOptions(steps=1)),
    "saliency-ig_steps_over_max": vis_unary("Saliency", IA, method=vpb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
                                            integrated_gradients=vpb.IntegratedGradientsOptions(steps=1001)),
    "saliency-smoothgrad_samples_over_max": vis_unary(
        "Saliency", IA, method=vpb.SALIENCY_METHOD_SMOOTHGRAD, smoothgrad=vpb.SmoothGradOptions(samples=1001)),
    "saliency-smoothgrad_noise_nan": vis_unary(
        "Saliency", IA, method=vpb.SALIENCY_METHOD_SMOOTHGRAD,
        smoothgrad=vpb.SmoothGradOptions(samples=2, noise_level=NAN)),
    "saliency-smoothgrad_noise_negative": vis_unary(
        "Saliency", IA, method=vpb.SALIENCY_METHOD_SMOOTHGRAD,
        smoothgrad=vpb.SmoothGradOptions(samples=2, noise_level=-1.0)),
    "saliency-smoothgrad_seed_negative": vis_unary(
        "Saliency", IA, SEED_BUG, method=vpb.SALIENCY_METHOD_SMOOTHGRAD,
        smoothgrad=vpb.SmoothGradOptions(samples=2, seed=-1)),
    "fooling-target_class_K": vis_stream("FoolingImage", IA, target_class=18),
    "fooling-target_class_minus_1": vis_stream("FoolingImage", IA, target_class=U32_MINUS_1),
    "fooling-max_iterations_over_max": vis_stream("FoolingImage", IA, max_iterations=MAX_ITERATIONS + 1),
    "fooling-learning_rate_negative": vis_stream("FoolingImage", IA, learning_rate=-1.0),
    "fooling-learning_rate_nan": vis_stream("FoolingImage", IA, learning_rate=NAN),
    "fooling-learning_rate_inf": vis_stream("FoolingImage", IA, learning_rate=INF),
    "fooling-magnify_nan": vis_stream("FoolingImage", IA, "magnify must be finite and > 0 (not in the contract)",
                                      magnify=NAN),
    "fooling-magnify_negative": vis_stream("FoolingImage", IA, "magnify must be > 0 (not in the contract)",
                                           magnify=-5.0),
    "class_vis-target_class_K": vis_stream("ClassVisualization", IA, target_class=18),
    "class_vis-target_class_minus_1": vis_stream("ClassVisualization", IA, target_class=U32_MINUS_1),
    "class_vis-iterations_over_max": vis_stream("ClassVisualization", IA, num_iterations=MAX_ITERATIONS + 1),
    "class_vis-iterations_2^32-1": vis_stream("ClassVisualization", IA, num_iterations=U32_MINUS_1),
    "class_vis-learning_rate_negative": vis_stream("ClassVisualization", IA, learning_rate=-1.0),
    "class_vis-learning_rate_nan": vis_stream("ClassVisualization", IA, learning_rate=NAN),
    "class_vis-l2_reg_negative": vis_stream("ClassVisualization", IA, l2_reg=-1.0),
    "class_vis-l2_reg_nan": vis_stream("ClassVisualization", IA, l2_reg=NAN),
    "class_vis-size_7": vis_stream("ClassVisualization", IA, size=7),
    "class_vis-size_over_max_image_side": vis_stream("ClassVisualization", IA, size=MAX_IMAGE_SIDE + 1),
    "class_vis-max_jitter_huge": vis_stream("ClassVisualization", IA, max_jitter=10**6),
    "class_vis-seed_negative": vis_stream("ClassVisualization", IA, SEED_BUG, seed=-1),
    "class_vis-seed_2^63_wraps_negative": vis_stream("ClassVisualization", IA, SEED_BUG, seed=-(2**63)),
}.items():
    case(f"options-{_id}", "visualization", _run, _exp, contract=_contract)


def style_opts(expected=IA, contract: str = "", job: Callable[[], spb.StyleJob] | None = None, **params):
    return (lambda ctx: stylize_unary(ctx, job() if job else style_job(**params))), expected, contract


for _id, (_run, _exp, _contract) in {
    "iterations_0": style_opts(iterations=0),
    "iterations_over_max": style_opts(iterations=MAX_ITERATIONS + 1),
    "image_size_over_max_image_side": style_opts(image_size=STYLE_MAX_SIDE + 1),
    "style_size_over_max_image_side": style_opts(style_size=STYLE_MAX_SIDE + 1),
    "image_size_7": style_opts(image_size=7),
    "image_size_2^32-1": style_opts(image_size=U32_MINUS_1),
    "learning_rate_0": style_opts(learning_rate=0.0),
    "learning_rate_negative": style_opts(learning_rate=-1.0),
    "learning_rate_nan": style_opts(learning_rate=NAN),
    "decayed_learning_rate_nan": style_opts(decayed_learning_rate=NAN),
    "content_weight_nan": style_opts(content_weight=NAN),
    "content_weight_negative": style_opts(content_weight=-1.0),
    "tv_weight_inf": style_opts(tv_weight=INF),
    "content_layer_99": style_opts(content_layer=99),
    "style_layers_99": style_opts(style_layers=[99], style_weights=[1.0]),
    "style_weights_mismatched": style_opts(style_layers=[1, 4], style_weights=[1.0]),
    "style_weights_nan": style_opts(style_layers=[1], style_weights=[NAN]),
    "init_unknown_enum_99": style_opts(init=99),
    "preset_unknown": style_opts(preset="no-such-preset"),
    "style_image_weight_negative": style_opts(styles=[spb.StyleImage(image=SMALL(), weight=-1.0)]),
    "style_image_weight_nan": style_opts(styles=[spb.StyleImage(image=SMALL(), weight=NAN)]),
    "nine_style_images": style_opts(styles=[spb.StyleImage(image=SMALL())] * 9),
    "seed_negative": style_opts(IA, SEED_BUG, seed=-1),
    "seed_2^63_wraps_negative": style_opts(IA, SEED_BUG, seed=-(2**63)),
}.items():
    case(f"options-stylize-{_id}", "style", _run, _exp, contract=_contract)


# ====================================================================== names
def name_targets() -> dict[str, tuple[str, str, Callable[[Ctx, common_pb2.ModelRef], Any]]]:
    return {
        "caption": ("captioning", CAPTIONER, lambda ctx, ref: caption(ctx, caption_job(ctx, model=ref))),
        "classify": ("visualization", CLASSIFIER, lambda ctx, ref: ctx.vis.Classify(
            vpb.ClassifyRequest(model=ref, images=[SMALL()]), timeout=TIMEOUT)),
        "stylize": ("style", CLASSIFIER, lambda ctx, ref: stylize_unary(ctx, style_job(model=ref))),
        "get_model": ("visualization", CLASSIFIER, lambda ctx, ref: ctx.reg.GetModel(
            registry_pb2.GetModelRequest(model=ref), timeout=TIMEOUT)),
    }


def short_message(max_chars: int = 1000):
    def check(error):
        details = error.details() or ""
        assert len(details) <= max_chars, (
            f"message echoes {len(details)} characters (contract: echoed input clipped to 200)")
    return check


NAMES: dict[str, tuple[Callable[[str], str], int, grpc.StatusCode, str]] = {
    # id -> (name from the target's real model name, version, expected, contract)
    "control_char_nul": (lambda good: good[:3] + "\x00" + good[3:], 0, IA, ""),
    "control_char_escape": (lambda good: "\x1b[31m" + good, 0, IA, ""),
    "trailing_newline": (lambda good: good + "\n", 0, IA,
                         "model names match [a-z0-9][a-z0-9._-]{0,63} exactly (validate_name's `$` accepts "
                         "a trailing newline: not in the contract, see the report)"),
    "10000_chars": (lambda good: "a" * 10_000, 0, IA, "echoed input clipped to 200 characters"),
    "uppercase": (lambda good: good.upper(), 0, IA, ""),
    "path_traversal": (lambda good: "../x", 0, IA, ""),
    "path_traversal_deep": (lambda good: f"{good}/../../../etc/passwd", 0, IA, ""),
    "dot_dot": (lambda good: "..", 0, IA, ""),
    "absolute_path": (lambda good: "/etc/passwd", 0, IA, ""),
    "non_ascii": (lambda good: good + "\u00e9", 0, IA, ""),
    "unknown_model": (lambda good: "no-such-model", 0, NF, ""),
    # -1 through a uint32 field arrives as 2^32-1, beyond any version the registry can hold
    "version_minus_1": (lambda good: good, U32_MINUS_1, IA, "registry: versions are 1..999999999"),
    "version_absent_99": (lambda good: good, 99, NF, ""),
}

for _target, (_service, _good, _call) in name_targets().items():
    for _id, (_name, _version, _exp, _contract) in NAMES.items():
        case(f"names-{_target}-{_id}", _service,
             lambda ctx, c=_call, n=_name(_good), v=_version: c(ctx, common_pb2.ModelRef(name=n, version=v)),
             _exp, short_message() if _id == "10000_chars" else None, contract=_contract)
case("names-caption-wrong_task_classifier", "captioning",
     lambda ctx: caption(ctx, caption_job(ctx, model=common_pb2.ModelRef(name=CLASSIFIER))), IA)
case("names-classify-wrong_task_captioner", "visualization",
     lambda ctx: ctx.vis.Classify(vpb.ClassifyRequest(model=common_pb2.ModelRef(name=CAPTIONER),
                                                      images=[SMALL()]), timeout=TIMEOUT), IA)
case("names-get_model-empty", "visualization",
     lambda ctx: ctx.reg.GetModel(registry_pb2.GetModelRequest(), timeout=TIMEOUT), IA)


# ====================================================================== streams
def stream_requests(ctx: Ctx, items: list[tuple[str, cpb.CaptionJob | None]]) -> list[cpb.CaptionStreamRequest]:
    return [cpb.CaptionStreamRequest(id=i, job=job if job is not None else caption_job(ctx)) for i, job in items]


def caption_stream(items: Callable[[Ctx], list[tuple[str, cpb.CaptionJob | None]]]):
    def run(ctx):
        return drain(ctx.cap.CaptionStream(iter(stream_requests(ctx, items(ctx))), timeout=TIMEOUT))
    return run


def outcomes(responses) -> list[tuple[str, str]]:
    """(id, "OK" or the name of the error's google.rpc.Status code) per answer, sorted."""
    return sorted((r.id, "OK" if r.HasField("result") else _CODES[r.error.code].name)
                  for r in responses)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def expect_outcomes(*expected: tuple[str, str]):
    def check(responses):
        assert outcomes(responses) == sorted(expected)
    return check


# A duplicate of an id still in progress is refused (a finished id may be reused): the first "a" is a
# 3000x3000 image (about 0.2 s to decode and encode), so it is still in progress when the second arrives.
case("streams-caption_stream-duplicate_id", "captioning",
     caption_stream(lambda ctx: [("a", cpb.CaptionJob(image=img(solid(3000, 3000)))), ("a", None), ("b", None)]),
     OK, expect_outcomes(("a", "OK"), ("a", "INVALID_ARGUMENT"), ("b", "OK")))
case("streams-caption_stream-empty_id", "captioning",
     caption_stream(lambda ctx: [("", None), ("x", None)]), OK,
     expect_outcomes(("", "INVALID_ARGUMENT"), ("x", "OK")))
case("streams-caption_stream-nan_item_among_good", "captioning",
     caption_stream(lambda ctx: [("g1", None), ("bad", cpb.CaptionJob(features=features(ctx.D, NAN))),
                                 ("g2", None)]), OK,
     expect_outcomes(("bad", "INVALID_ARGUMENT"), ("g1", "OK"), ("g2", "OK")))
case("streams-caption_stream-unknown_model_item", "captioning",
     caption_stream(lambda ctx: [("g1", None), ("bad", caption_job(ctx, model=common_pb2.ModelRef(
         name="no-such-model"))), ("g2", None)]), OK,
     expect_outcomes(("bad", "NOT_FOUND"), ("g1", "OK"), ("g2", "OK")))
case("streams-caption_stream-garbage_image_item", "captioning",
     caption_stream(lambda ctx: [("bad", cpb.CaptionJob(image=img(b"garbage"))), ("g", None)]), OK,
     expect_outcomes(("bad", "INVALID_ARGUMENT"), ("g", "OK")))
case("streams-caption_stream-bomb_image_item", "captioning",
     caption_stream(lambda ctx: [("bad", cpb.CaptionJob(image=img(bomb_png(100_000, 100_000)))), ("g", None)]),
     OK, expect_outcomes(("bad", "INVALID_ARGUMENT"), ("g", "OK")))
case("streams-caption_stream-shape_overflow_item", "captioning",
     caption_stream(lambda ctx: [("bad", cpb.CaptionJob(features=raw_tensor([2**32, 2**32])(ctx))), ("g", None)]),
     OK, expect_outcomes(("bad", "INVALID_ARGUMENT"), ("g", "OK")), contract="tensor shape overflow")
case("streams-caption_stream-half_closed_without_requests", "captioning",
     caption_stream(lambda ctx: []), OK, expect_outcomes())
case("streams-caption_stream-half_closed_after_5", "captioning",
     caption_stream(lambda ctx: [(str(i), None) for i in range(5)]), OK,
     expect_outcomes(*[(str(i), "OK") for i in range(5)]))
case("streams-caption_stream-40_items_over_the_window", "captioning",
     caption_stream(lambda ctx: [(f"i{i:02d}", None) for i in range(40)]), OK,
     expect_outcomes(*[(f"i{i:02d}", "OK") for i in range(40)]))


class OpenRequests:
    """A request iterator that stays open (not half-closed) until ``close()``."""

    _END = object()

    def __init__(self):
        self.q: queue.Queue = queue.Queue()

    def send(self, item) -> None:
        self.q.put(item)

    def close(self) -> None:
        self.q.put(self._END)

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is self._END:
                return
            yield item


def ping_pong(ctx: Ctx):
    """Send one, read its answer, three times over one open stream, then half-close."""
    reqs = OpenRequests()
    call = ctx.cap.CaptionStream(iter(reqs), timeout=TIMEOUT)
    answers = []
    for i in range(3):
        reqs.send(cpb.CaptionStreamRequest(id=f"p{i}", job=caption_job(ctx)))
        answers.append(next(call))
    reqs.close()
    answers.extend(call)  # the stream ends with OK once the client half-closed
    return answers


def cancel_caption_stream(ctx: Ctx):
    """Answer one item, then the client cancels without half-closing."""
    reqs = OpenRequests()
    call = ctx.cap.CaptionStream(iter(reqs), timeout=TIMEOUT)
    reqs.send(cpb.CaptionStreamRequest(id="first", job=caption_job(ctx)))
    assert next(call).HasField("result")
    for i in range(5):
        reqs.send(cpb.CaptionStreamRequest(id=f"more{i}", job=caption_job(ctx)))
    call.cancel()
    try:
        return drain(call)
    finally:
        reqs.close()


def cancel_after_first(stream_call):
    """Read one message, cancel, and let the RpcError (CANCELLED) surface."""
    next(stream_call)
    stream_call.cancel()
    return drain(stream_call)


case("streams-caption_stream-ping_pong_open_stream", "captioning", ping_pong, OK,
     expect_outcomes(("p0", "OK"), ("p1", "OK"), ("p2", "OK")))
case("streams-caption_stream-client_cancels_mid_stream", "captioning", cancel_caption_stream, CANCELLED)
case("streams-stylize-client_cancels_mid_stream", "style",
     lambda ctx: cancel_after_first(ctx.sty.Stylize(spb.StylizeRequest(
         job=style_job(image_size=128, style_size=64, iterations=MAX_ITERATIONS)), timeout=TIMEOUT)), CANCELLED)
case("streams-stylize-short_job_after_cancel", "style",
     lambda ctx: stylize_unary(ctx, style_job(), timeout=15), OK)
case("streams-fooling-client_cancels_mid_stream", "visualization",
     lambda ctx: cancel_after_first(ctx.vis.FoolingImage(vpb.FoolingImageRequest(
         image=SMALL(), target_class=2, max_iterations=MAX_ITERATIONS, learning_rate=1e-6), timeout=TIMEOUT)),
     CANCELLED)


# ====================================================================== cancellation and deadlines
LONG_STYLE = dict(image_size=192, style_size=64, iterations=MAX_ITERATIONS)


def deadline_then_short_job(long_call: Callable[[Ctx], Any], short_call: Callable[[Ctx], Any]):
    """The long call must end DEADLINE_EXCEEDED; then a short job (15 s deadline) must get the slot."""
    def run(ctx):
        code, details, _ = rpc_outcome(lambda: long_call(ctx))
        assert code == DEADLINE, f"long job: expected DEADLINE_EXCEEDED, got {code.name}: {details}"
        return short_call(ctx)
    return run


def cancel_class_visualization_then_classify(ctx: Ctx):
    """Cancel a 1000-iteration ClassVisualization after its first message: the one job slot must come
    back within a step, so a Classify with a 10 s deadline succeeds."""
    call = ctx.vis.ClassVisualization(vpb.ClassVisualizationRequest(
        target_class=3, num_iterations=MAX_ITERATIONS, size=256, show_every=1), timeout=120)
    next(call)
    call.cancel()
    code, _, _ = rpc_outcome(lambda: drain(call))
    assert code == CANCELLED, code
    return ctx.vis.Classify(vpb.ClassifyRequest(images=[SMALL()]), timeout=10)


case("deadlines-stylize-long_job_1s_deadline", "style",
     deadline_then_short_job(
         lambda ctx: drain(ctx.sty.Stylize(spb.StylizeRequest(job=style_job(**LONG_STYLE)), timeout=1.0)),
         lambda ctx: stylize_unary(ctx, style_job(), timeout=15)), OK)
case("deadlines-stylize_unary-long_job_1s_deadline", "style",
     lambda ctx: stylize_unary(ctx, style_job(**LONG_STYLE), timeout=1.0), DEADLINE)
case("deadlines-class_vis-cancel_frees_the_slot", "visualization", cancel_class_visualization_then_classify, OK)
case("deadlines-class_vis-long_job_1s_deadline", "visualization",
     deadline_then_short_job(
         lambda ctx: drain(ctx.vis.ClassVisualization(vpb.ClassVisualizationRequest(
             target_class=3, num_iterations=MAX_ITERATIONS, size=256), timeout=1.0)),
         lambda ctx: ctx.vis.Classify(vpb.ClassifyRequest(images=[SMALL()]), timeout=10)), OK)
case("deadlines-saliency-integrated_gradients_50ms", "visualization",
     lambda ctx: ctx.vis.Saliency(vpb.SaliencyRequest(
         image=img(small_png()), method=vpb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
         integrated_gradients=vpb.IntegratedGradientsOptions(steps=MAX_ITERATIONS)), timeout=0.05), DEADLINE)
case("deadlines-caption-1ms", "captioning", lambda ctx: caption(ctx, caption_job(ctx), timeout=0.001), DEADLINE)
case("deadlines-stream_caption-1ms", "captioning", lambda ctx: drain(ctx.cap.StreamCaption(
    cpb.StreamCaptionRequest(job=caption_job(ctx)), timeout=0.001)), DEADLINE)


def open_caption_stream_until_deadline(ctx: Ctx):
    reqs = OpenRequests()
    call = ctx.cap.CaptionStream(iter(reqs), timeout=0.5)
    reqs.send(cpb.CaptionStreamRequest(id="one", job=caption_job(ctx)))
    try:
        return drain(call)
    finally:
        reqs.close()


case("deadlines-caption_stream-never_half_closed", "captioning", open_caption_stream_until_deadline, DEADLINE)


# ====================================================================== protocol junk
JUNK = {
    "bad_varint": b"\x08" + b"\xff" * 10 + b"\x01",  # field 1 varint, 11 continuation bytes
    "truncated_field": b"\x0a\x64abc",  # field 1 claims 100 bytes, 3 follow
    "bad_tag_zero": b"\x00\x00\x00",  # field number 0 does not exist
}
METHODS = {
    # path -> (service, kind)
    "/pixelrpc.v1.CaptioningService/Caption": ("captioning", "unary"),
    "/pixelrpc.v1.CaptioningService/StreamCaption": ("captioning", "unary_stream"),
    "/pixelrpc.v1.CaptioningService/CaptionStream": ("captioning", "stream_stream"),
    "/pixelrpc.v1.VisualizationService/Classify": ("visualization", "unary"),
    "/pixelrpc.v1.VisualizationService/Saliency": ("visualization", "unary"),
    "/pixelrpc.v1.VisualizationService/FoolingImage": ("visualization", "unary_stream"),
    "/pixelrpc.v1.VisualizationService/ClassVisualization": ("visualization", "unary_stream"),
    "/pixelrpc.v1.StyleTransferService/Stylize": ("style", "unary_stream"),
    "/pixelrpc.v1.StyleTransferService/StylizeUnary": ("style", "unary"),
    "/pixelrpc.v1.ModelRegistry/GetModel": ("captioning", "unary"),
    "/pixelrpc.v1.ServerInfo/DescribeImage": ("style", "unary"),
}


def send_raw(path: str, kind: str, messages: list[bytes], timeout: float = TIMEOUT):
    def run(ctx):
        if kind == "unary":
            return ctx.raw_unary(path)(messages[0], timeout=timeout)
        if kind == "unary_stream":
            return drain(ctx.raw_unary_stream(path)(messages[0], timeout=timeout))
        return drain(ctx.raw_stream_stream(path)(iter(messages), timeout=timeout))
    return run


def names_the_message_not_python(message_type: str):
    def check(error):
        details = error.details() or ""
        for leak in ("DecodeError", "Exception deserializing", "Traceback", "<class"):
            assert leak not in details, f"the status message leaks {leak!r}: {details!r}"
        assert message_type in details, f"the status message should name {message_type}: {details!r}"
    return check


MALFORMED = "malformed request bytes -> INVALID_ARGUMENT naming the message type"
for _path, (_service, _kind) in METHODS.items():
    for _jid, _payload in JUNK.items():
        _method = _path.rsplit("/", 1)[1]
        case(f"junk-{_method}-{_jid}", _service, send_raw(_path, _kind, [_payload]), IA,
             names_the_message_not_python(f"{_method}Request"), contract=MALFORMED)

case("junk-GetModel-invalid_utf8_name", "captioning",
     send_raw("/pixelrpc.v1.ModelRegistry/GetModel", "unary", [b"\x0a\x04\x0a\x02\xff\xfe"]), IA,
     names_the_message_not_python("GetModelRequest"), contract=MALFORMED)
case("junk-Caption-invalid_utf8_model_name", "captioning",
     send_raw("/pixelrpc.v1.CaptioningService/Caption", "unary", [b"\x0a\x06\x0a\x04\x0a\x02\xff\xfe"]), IA,
     names_the_message_not_python("CaptionRequest"), contract=MALFORMED)
case("junk-CaptionStream-junk_after_a_good_item", "captioning",
     lambda ctx: send_raw("/pixelrpc.v1.CaptioningService/CaptionStream", "stream_stream",
                          [stream_requests(ctx, [("ok", None)])[0].SerializeToString(), JUNK["bad_varint"]])(ctx),
     IA, contract=MALFORMED)
case("junk-Caption-unknown_fields_ignored", "captioning",
     lambda ctx: ctx.raw_unary("/pixelrpc.v1.CaptioningService/Caption")(
         cpb.CaptionRequest(job=caption_job(ctx)).SerializeToString() + b"\xf8\x06\x2a", timeout=TIMEOUT), OK)
for _service, _path in {"captioning": "/pixelrpc.v1.CaptioningService/NoSuchMethod",
                        "visualization": "/pixelrpc.v1.VisualizationService/NoSuchMethod",
                        "style": "/pixelrpc.v1.StyleTransferService/NoSuchMethod"}.items():
    case(f"junk-unknown_method-{_service}", _service, send_raw(_path, "unary", [b""]), UNIMPL)
case("junk-unknown_service", "captioning", send_raw("/no.such.Service/Method", "unary", [b""]), UNIMPL)
case("junk-unknown_method_streaming", "style",
     send_raw("/pixelrpc.v1.StyleTransferService/NoSuchStream", "stream_stream", [b"", b""]), UNIMPL)

OVERSIZED = MAX_MESSAGE_BYTES + 64 * 1024
case("junk-oversized_message-caption", "captioning",
     lambda ctx: caption(ctx, cpb.CaptionJob(features=common_pb2.Tensor(
         shape=[OVERSIZED // 4], dtype="float32", data=b"\0" * (OVERSIZED // 4 * 4)))), RE)
case("junk-oversized_message-classify", "visualization",
     lambda ctx: ctx.vis.Classify(vpb.ClassifyRequest(images=[img(b"\x89PNG" + b"\0" * OVERSIZED)]),
                                  timeout=TIMEOUT), RE)
case("junk-oversized_message-stylize", "style",
     lambda ctx: drain(ctx.sty.Stylize(spb.StylizeRequest(job=style_job(content=b"\x89PNG" + b"\0" * OVERSIZED)),
                                       timeout=TIMEOUT)), RE)
for _path, _service in {"/pixelrpc.v1.CaptioningService/Caption": "captioning",
                        "/pixelrpc.v1.VisualizationService/Classify": "visualization",
                        "/pixelrpc.v1.VisualizationService/Saliency": "visualization",
                        "/pixelrpc.v1.StyleTransferService/StylizeUnary": "style"}.items():
    case(f"junk-empty_request-{_path.rsplit('/', 1)[1]}", _service, send_raw(_path, "unary", [b""]), IA)
case("junk-empty_request-FoolingImage", "visualization",
     send_raw("/pixelrpc.v1.VisualizationService/FoolingImage", "unary_stream", [b""]), IA)


def junk_request_id(value: str):
    def run(ctx):
        response, call = ctx.cap.Caption.with_call(cpb.CaptionRequest(job=caption_job(ctx)), timeout=TIMEOUT,
                                                   metadata=(("x-request-id", value),))
        trailing = dict(call.trailing_metadata() or ())
        assert trailing.get("x-request-id") == response.result.meta.request_id
        assert trailing.get("x-request-id") != value, "an invalid x-request-id must not be echoed"
        return response
    return run


case("junk-request_id_with_spaces", "captioning", junk_request_id("not a valid id; DROP TABLE"), OK)
case("junk-request_id_1000_chars", "captioning", junk_request_id("r" * 1000), OK)


# ====================================================================== auth
def auth_md(value: str | None):
    return () if value is None else (("authorization", value),)


AUTH_CALLS: dict[str, tuple[str, Callable[[Ctx, tuple], Any]]] = {
    "Caption": ("captioning", lambda ctx, md: ctx.cap.Caption(
        cpb.CaptionRequest(job=caption_job(ctx)), timeout=TIMEOUT, metadata=md)),
    "StreamCaption": ("captioning", lambda ctx, md: drain(ctx.cap.StreamCaption(
        cpb.StreamCaptionRequest(job=caption_job(ctx)), timeout=TIMEOUT, metadata=md))),
    "CaptionStream": ("captioning", lambda ctx, md: drain(ctx.cap.CaptionStream(
        iter(stream_requests(ctx, [("a", None)])), timeout=TIMEOUT, metadata=md))),
    "Classify": ("visualization", lambda ctx, md: ctx.vis.Classify(
        vpb.ClassifyRequest(images=[SMALL()]), timeout=TIMEOUT, metadata=md)),
    "ClassVisualization": ("visualization", lambda ctx, md: drain(ctx.vis.ClassVisualization(
        vpb.ClassVisualizationRequest(target_class=1, num_iterations=2), timeout=TIMEOUT, metadata=md))),
    "StylizeUnary": ("style", lambda ctx, md: ctx.sty.StylizeUnary(
        spb.StylizeUnaryRequest(job=style_job()), timeout=TIMEOUT, metadata=md)),
    "Stylize": ("style", lambda ctx, md: drain(ctx.sty.Stylize(
        spb.StylizeRequest(job=style_job()), timeout=TIMEOUT, metadata=md))),
    "ListModels": ("style", lambda ctx, md: ctx.reg.ListModels(
        registry_pb2.ListModelsRequest(), timeout=TIMEOUT, metadata=md)),
    "GetServerInfo": ("visualization", lambda ctx, md: ctx.info.GetServerInfo(
        server_pb2.GetServerInfoRequest(), timeout=TIMEOUT, metadata=md)),
}
for _method, (_service, _call) in AUTH_CALLS.items():
    case(f"auth-{_method}-missing_token", f"auth-{_service}", lambda ctx, c=_call: c(ctx, auth_md(None)), UNAUTH)
    case(f"auth-{_method}-wrong_token", f"auth-{_service}",
         lambda ctx, c=_call: c(ctx, auth_md(f"Bearer {TOKEN}x")), UNAUTH)
for _id, _value in {"empty_bearer": "Bearer ", "basic_scheme": f"Basic {TOKEN}", "token_without_scheme": TOKEN,
                    "token_prefix": f"Bearer {TOKEN[:-1]}", "4000_char_token": "Bearer " + "t" * 4000}.items():
    case(f"auth-Caption-{_id}", "auth-captioning", lambda ctx, v=_value: AUTH_CALLS["Caption"][1](ctx, auth_md(v)),
         UNAUTH)
# gRPC's transport refuses request metadata over its 16 KiB hard limit before any handler runs
# (between 8 and 16 KiB it refuses at random, so no case sits there).
case("auth-Caption-20000_char_token_over_the_metadata_limit", "auth-captioning",
     lambda ctx: AUTH_CALLS["Caption"][1](ctx, auth_md("Bearer " + "t" * 20_000)), RE)
for _method in ("Caption", "Classify", "StylizeUnary", "ListModels"):
    _service, _call = AUTH_CALLS[_method]
    case(f"auth-{_method}-right_token", f"auth-{_service}",
         lambda ctx, c=_call: c(ctx, auth_md(f"Bearer {TOKEN}")), OK)


def health_without_token(ctx: Ctx):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(ctx.channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    return response


for _service in ("captioning", "visualization", "style"):
    case(f"auth-health_open_without_token-{_service}", f"auth-{_service}", health_without_token, OK)


def test_case_count():
    """The issue asks for at least 120 hostile cases; every category is represented."""
    assert len(CASES) >= 120, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    categories = {c.id.split("-", 1)[0] for c in CASES}
    assert categories == {"images", "tensors", "options", "names", "streams", "deadlines", "junk", "auth"}
    assert {c.service.removeprefix("auth-") for c in CASES} == {"captioning", "visualization", "style"}
