"""OpenTelemetry tracing: one trace from the client library through the captioning service (image
input) to its pinned encoder, with the request id on the spans; off unless asked for."""

from __future__ import annotations

import io

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image

from pixelrpc.clients.captioning import CaptioningClient
from pixelrpc.models import bootstrap as bs
from pixelrpc.models.data import shapes
from pixelrpc.services import tracing
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server

SETTINGS = Settings(max_concurrency=1, torch_threads=1, shutdown_delay=0.0, device="cpu", metrics_port=0)


@pytest.fixture(scope="module")
def exporter():
    """An in-memory exporter on the process's tracer provider (installed here if none is)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()  # later spans of this process are dropped, not kept in memory


def scene_png() -> bytes:
    scene = next(iter(shapes.iter_scenes(777, 1, bs.SCENE_SIZE)))
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="PNG")
    return buf.getvalue()


def test_tracing_is_off_unless_asked_for():
    assert not tracing.wanted(False, {})
    assert tracing.wanted(True, {})
    assert tracing.wanted(False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing.wanted(False, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.wanted(False, {"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.wanted(True, {"OTEL_SDK_DISABLED": "true"})
    assert tracing.tracer_for(False, {}) is None


def test_one_trace_from_client_through_captioning_to_the_encoder(quick_bootstrap, exporter):
    settings = SETTINGS.replace(tracing=True)
    client_tracer = trace.get_tracer("test-client")
    with running_server(["captioning"], settings, registry=quick_bootstrap.registry) as srv, \
            CaptioningClient(srv.address, timeout=60) as client:
        exporter.clear()
        with client_tracer.start_as_current_span("client: caption a scene") as root:
            out = client.caption(scene_png(), request_id="trace-me-1")
        assert out.captions and out.captions[0].text
        trace_id = root.get_span_context().trace_id
    spans = exporter.get_finished_spans()
    mine = [s for s in spans if s.context.trace_id == trace_id]
    assert {s.context.trace_id for s in spans if s.attributes.get(tracing.REQUEST_ID_ATTR) == "trace-me-1"} \
        == {trace_id}, "every span of the request is in the client's trace"
    by_id = {s.context.span_id: s for s in mine}
    rpc = [s for s in mine if s.name == "pixelrpc.v1.CaptioningService/Caption"]
    assert len(rpc) == 1, [s.name for s in mine]
    rpc = rpc[0]
    assert rpc.kind == trace.SpanKind.SERVER
    assert rpc.parent is not None and rpc.parent.span_id == root.get_span_context().span_id  # via traceparent
    assert rpc.attributes[tracing.REQUEST_ID_ATTR] == "trace-me-1"
    assert rpc.attributes[tracing.MODEL_ATTR] == quick_bootstrap.registry.resolve(bs.CAPTIONER_NAME).ref
    assert rpc.attributes["rpc.grpc.status_code"] == 0

    def ancestors(span):
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            yield span

    encode = [s for s in mine if s.name == "encode image"]
    assert len(encode) == 1
    assert rpc in ancestors(encode[0])
    assert encode[0].attributes[tracing.MODEL_ATTR] == quick_bootstrap.registry.resolve(bs.CLASSIFIER_NAME).ref
    assert encode[0].attributes[tracing.REQUEST_ID_ATTR] == "trace-me-1"
    step = [s for s in mine if s.name == "compute encode_image"]
    assert len(step) == 1 and step[0].parent.span_id == encode[0].context.span_id
    names = {s.name for s in mine}
    assert {"queue wait", "decode caption (batched)", "model load"} <= names, names
    loads = [s for s in mine if s.name == "model load"]  # the captioner and its encoder, first use
    assert all(rpc in ancestors(s) for s in loads)
    for s in mine:
        if s.context.span_id != root.get_span_context().span_id and s.name != "model load":
            assert s.attributes.get(tracing.REQUEST_ID_ATTR) == "trace-me-1", s.name


def test_servers_without_tracing_record_nothing(quick_bootstrap, exporter):
    with running_server(["captioning"], SETTINGS, registry=quick_bootstrap.registry) as srv, \
            CaptioningClient(srv.address, timeout=60) as client:
        exporter.clear()
        with trace.get_tracer("test-client").start_as_current_span("client"):
            client.caption(scene_png(), request_id="untraced")
    assert [s.name for s in exporter.get_finished_spans()] == ["client"]
