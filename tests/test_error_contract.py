"""Errors people and tools can act on: malformed bytes, long echoed input, request ids in trailers,
no server paths, standard per-item errors in CaptionStream, and one seed check for every service.

Every case runs against one in-process server of all three services on a toy registry: the errors are
raised before any real model is needed.
"""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from conftest import publish_toy
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixelrpc.clients import ServiceClient
from pixelrpc.clients.captioning import CaptioningClient, build_job
from pixelrpc.clients.errors import InvalidArgument, NotFound
from pixelrpc.models.errors import ECHO_LIMIT, InvalidInput, clip
from pixelrpc.models.options import check_seed, resolve_seed
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server
from pixelrpc.v1 import captioning_pb2 as cap
from pixelrpc.v1 import captioning_pb2_grpc as cap_grpc
from pixelrpc.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from pixelrpc.v1 import style_transfer_pb2 as sty
from pixelrpc.v1 import style_transfer_pb2_grpc as sty_grpc
from pixelrpc.v1 import visualization_pb2 as vis
from pixelrpc.v1 import visualization_pb2_grpc as vis_grpc

FAST = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.2)
GARBAGE = b"\xff\xff\xff\xff\xff"  # field 31 with an invalid wire type: no message parses it
PYTHON_NAMES = re.compile(r"DecodeError|Exception|Traceback|<class|google\.protobuf")
SEED_MESSAGE = "seed must be in [0, 2^63), got -1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pixelrpc.models.registry import Registry

    registry = Registry(tmp_path_factory.mktemp("error-contract") / "registry")
    publish_toy(registry, "toy", tasks=("captioning", "classification", "feature-extraction"))
    with running_server(["captioning", "visualization", "style"], FAST, registry=registry) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def trailer(err: grpc.RpcError, key: str):
    return dict(err.trailing_metadata() or ()).get(key)


def rich(err: grpc.RpcError) -> status_pb2.Status:
    status = status_pb2.Status()
    status.ParseFromString(trailer(err, "grpc-status-details-bin"))
    return status


def detail(status: status_pb2.Status, cls):
    for any_ in status.details:
        if any_.Is(cls.DESCRIPTOR):
            out = cls()
            any_.Unpack(out)
            return out
    return None


def fail(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kw)
        if isinstance(result, grpc.Call) and hasattr(result, "__next__"):
            list(result)  # a server stream: read it to its status
    return info.value


# ----------------------------------------------------------------------------- malformed bytes

METHODS = [  # (path, kind): unary, server-streaming and bidi methods of every service
    ("/pixelrpc.v1.CaptioningService/Caption", "unary"),
    ("/pixelrpc.v1.CaptioningService/StreamCaption", "server_stream"),
    ("/pixelrpc.v1.CaptioningService/CaptionStream", "bidi"),
    ("/pixelrpc.v1.VisualizationService/Classify", "unary"),
    ("/pixelrpc.v1.VisualizationService/FoolingImage", "server_stream"),
    ("/pixelrpc.v1.StyleTransferService/StylizeUnary", "unary"),
    ("/pixelrpc.v1.StyleTransferService/Stylize", "server_stream"),
    ("/pixelrpc.v1.ModelRegistry/GetModel", "unary"),
    ("/pixelrpc.v1.ServerInfo/GetServerInfo", "unary"),
    ("/grpc.health.v1.Health/Check", "unary"),  # handlers outside @rpc too
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "bidi"),
]


def raw_call(channel, path: str, kind: str, messages: list[bytes], request_id: str):
    md = (("x-request-id", request_id),)
    if kind == "unary":
        return channel.unary_unary(path)(messages[0], timeout=10, metadata=md)
    if kind == "server_stream":
        return list(channel.unary_stream(path)(messages[0], timeout=10, metadata=md))
    return list(channel.stream_stream(path)(iter(messages), timeout=10, metadata=md))


@pytest.mark.parametrize("path,kind", METHODS, ids=[p.rsplit("/", 1)[1] for p, _ in METHODS])
def test_malformed_bytes_are_invalid_argument_naming_the_message_type(channel, path, kind):
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, path, kind, [GARBAGE], request_id=f"garbage-{kind}")
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert re.search(r"not a valid [a-z0-9.]+\.[A-Z]\w*Request message", err.details()), err.details()
    assert not PYTHON_NAMES.search(err.details())
    assert trailer(err, "x-request-id") == f"garbage-{kind}"
    assert detail(rich(err), error_details_pb2.RequestInfo).request_id == f"garbage-{kind}"


def test_a_bad_message_after_good_ones_ends_the_stream_with_invalid_argument(channel):
    good = cap.CaptionStreamRequest(id="", job=cap.CaptionJob()).SerializeToString()  # answered with an error
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, "/pixelrpc.v1.CaptioningService/CaptionStream", "bidi", [good, GARBAGE], "mixed-1")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixelrpc.v1.CaptionStreamRequest" in info.value.details()
    assert trailer(info.value, "x-request-id") == "mixed-1"


def test_the_server_keeps_serving_after_malformed_bytes(server, channel):
    for path, kind in METHODS:
        with pytest.raises(grpc.RpcError):
            raw_call(channel, path, kind, [GARBAGE], request_id="again")
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    models = registry_pb2_grpc.ModelRegistryStub(channel).ListModels(registry_pb2.ListModelsRequest(), timeout=10)
    assert [m.name for m in models.models] == ["toy"]


# ----------------------------------------------------------------------------- echoed input is bounded


def test_clip_bounds_the_text_and_says_how_long_it_was():
    assert clip("short") == "short"
    cut = clip("x" * 10_000)
    assert len(cut) <= ECHO_LIMIT and cut.endswith("…(10000 characters)")
    assert clip(123456, limit=3) == "123"


def test_a_10000_character_model_name_is_invalid_argument_with_a_short_message(server, channel):
    name = "x" * 10_000
    registry = registry_pb2_grpc.ModelRegistryStub(channel)
    err = fail(registry.GetModel, registry_pb2.GetModelRequest(model=common_pb2.ModelRef(name=name)), timeout=10)
    caption = cap_grpc.CaptioningServiceStub(channel).Caption
    err2 = fail(caption, cap.CaptionRequest(job=cap.CaptionJob(model=common_pb2.ModelRef(name=name))), timeout=10)
    for e in (err, err2):
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
        assert "invalid model name" in e.details() and len(e.details()) <= 300
        bad = detail(rich(e), error_details_pb2.BadRequest)
        assert bad.field_violations and all(len(v.description) <= 300 for v in bad.field_violations)
    with ServiceClient(server.address) as client, pytest.raises(InvalidArgument) as typed:
        client.registry.get(name)
    assert len(str(typed.value)) <= 330 and typed.value.violations


# ----------------------------------------------------------------------------- request ids and NOT_FOUND


def test_failed_calls_carry_the_request_id_in_their_trailers(channel):
    registry = registry_pb2_grpc.ModelRegistryStub(channel)
    missing = fail(registry.GetModel, registry_pb2.GetModelRequest(model=common_pb2.ModelRef(name="missing")),
                   timeout=10, metadata=(("x-request-id", "nf-1"),))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    invalid = fail(cap_grpc.CaptioningServiceStub(channel).Caption,
                   cap.CaptionRequest(job=cap.CaptionJob(model=common_pb2.ModelRef(name="toy"))), timeout=10,
                   metadata=(("x-request-id", "ia-1"),))
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    streamed = fail(vis_grpc.VisualizationServiceStub(channel).ClassVisualization,
                    vis.ClassVisualizationRequest(model=common_pb2.ModelRef(name="missing")), timeout=10,
                    metadata=(("x-request-id", "st-1"),))
    assert streamed.code() == grpc.StatusCode.NOT_FOUND
    for err, rid in ((missing, "nf-1"), (invalid, "ia-1"), (streamed, "st-1")):
        assert trailer(err, "x-request-id") == rid
        assert detail(rich(err), error_details_pb2.RequestInfo).request_id == rid
    # without one from the caller, the server's own id is in both places
    anonymous = fail(registry.GetModel, registry_pb2.GetModelRequest(model=common_pb2.ModelRef(name="missing")),
                     timeout=10)
    generated = trailer(anonymous, "x-request-id")
    assert generated and detail(rich(anonymous), error_details_pb2.RequestInfo).request_id == generated


def test_unauthenticated_calls_carry_a_request_id_too(tmp_path):
    with running_server(["captioning"], FAST.replace(auth_token="s3cret"), registry=str(tmp_path)) as srv, \
            grpc.insecure_channel(srv.address) as channel:
        registry = registry_pb2_grpc.ModelRegistryStub(channel)
        err = fail(registry.ListModels, registry_pb2.ListModelsRequest(), timeout=10,
                   metadata=(("x-request-id", "auth-1"),))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert trailer(err, "x-request-id") == "auth-1"
        # denied before parsing: malformed bytes without a token are UNAUTHENTICATED, not INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as raw:
            channel.unary_unary("/pixelrpc.v1.ModelRegistry/ListModels")(GARBAGE, timeout=10)
        assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED and trailer(raw.value, "x-request-id")


def test_not_found_does_not_reveal_the_server_filesystem(server, channel):
    root = str(server.ctx.registry.root)
    registry = registry_pb2_grpc.ModelRegistryStub(channel)
    err = fail(registry.GetModel, registry_pb2.GetModelRequest(model=common_pb2.ModelRef(name="missing")), timeout=10)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "'missing'" in err.details()
    everything = err.details() + str(rich(err))
    assert root not in everything and "/tmp" not in everything and "registry at" not in everything
    with ServiceClient(server.address) as client, pytest.raises(NotFound) as typed:
        client.registry.get("missing")
    assert root not in str(typed.value)


# ----------------------------------------------------------------------------- CaptionStream item errors


def test_a_caption_stream_item_error_is_a_google_rpc_status(server, channel):
    bad = build_job(np.zeros(2, np.float32), model="toy", strategy="beam", beam_width=1000)
    stub = cap_grpc.CaptioningServiceStub(channel)
    call = stub.CaptionStream(iter([cap.CaptionStreamRequest(id="a", job=bad)]), timeout=10,
                              metadata=(("x-request-id", "cs-1"),))
    [answer] = list(call)
    assert answer.id == "a" and answer.HasField("error")
    status = answer.error
    assert isinstance(status, status_pb2.Status) and status.code == code_pb2.INVALID_ARGUMENT
    assert "beam_width" in status.message
    bad_request = detail(status, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["job.options.beam_width"]
    assert detail(status, error_details_pb2.RequestInfo).request_id == "cs-1"
    assert dict(call.trailing_metadata())["x-request-id"] == "cs-1"


def test_the_client_turns_an_item_status_into_its_typed_exception(server):
    with CaptioningClient(server.address) as client:
        outcomes = dict(client.caption_many([np.zeros(2, np.float32)], model="toy", strategy="beam",
                                            beam_width=1000, request_id="cm-1"))
    err = outcomes[0]
    assert isinstance(err, InvalidArgument) and err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.request_id == "cm-1"
    assert [f for f, _ in err.violations] == ["job.options.beam_width"]


# ----------------------------------------------------------------------------- seeds


def test_check_seed_accepts_exactly_the_int64_range_numpy_and_torch_take():
    assert check_seed(None, "seed") is None
    assert check_seed(0, "seed") == 0 and check_seed(2**63 - 1, "seed") == 2**63 - 1
    for bad in (-1, 2**63, -(2**63)):
        with pytest.raises(InvalidInput) as info:
            check_seed(bad, "x.seed")
        assert info.value.violations[0].field == "x.seed"
    assert 0 <= resolve_seed(None, "seed") < 2**63


def seed_errors(channel) -> dict[str, grpc.RpcError]:
    caption = cap_grpc.CaptioningServiceStub(channel).Caption
    visual = vis_grpc.VisualizationServiceStub(channel)
    style = sty_grpc.StyleTransferServiceStub(channel)
    sample = cap.CaptionOptions(strategy=cap.DECODING_STRATEGY_SAMPLE, seed=-1)
    greedy = cap.CaptionOptions(strategy=cap.DECODING_STRATEGY_GREEDY, seed=-1)
    toy = common_pb2.ModelRef(name="toy")
    return {
        "job.options.seed": fail(caption, cap.CaptionRequest(job=cap.CaptionJob(model=toy, options=sample)),
                                 timeout=10),
        "job.options.seed (greedy)": fail(caption, cap.CaptionRequest(job=cap.CaptionJob(model=toy, options=greedy)),
                                          timeout=10),
        "smoothgrad.seed": fail(visual.Saliency, vis.SaliencyRequest(
            model=toy, method=vis.SALIENCY_METHOD_SMOOTHGRAD, smoothgrad=vis.SmoothGradOptions(seed=-1)),
            timeout=10),
        "seed": fail(visual.ClassVisualization, vis.ClassVisualizationRequest(model=toy, seed=-1), timeout=10),
        "job.seed": fail(style.StylizeUnary, sty.StylizeUnaryRequest(job=sty.StyleJob(model=toy, seed=-1)),
                         timeout=10),
    }


def test_seeds_out_of_range_are_refused_alike_by_every_service(channel):
    for label, err in seed_errors(channel).items():
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, err.details())
        assert err.details() == SEED_MESSAGE, (label, err.details())
        [violation] = detail(rich(err), error_details_pb2.BadRequest).field_violations
        assert violation.field == label.split(" ")[0] and violation.description == SEED_MESSAGE
