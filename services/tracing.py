"""OpenTelemetry tracing for the services: off by default, and an optional dependency.

Tracing is on when the setting ``tracing`` is (``PIXELRPC_TRACING=1``) or when the standard
variables ask for it: ``OTEL_TRACES_EXPORTER`` set to anything but ``none``, or
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set; ``OTEL_SDK_DISABLED=true``
turns it off whatever else says. Spans go to the process's tracer provider: one an embedding program
(or a test, with the in-memory exporter) installed, else one built here from the ``OTEL_*``
variables (OTLP over gRPC or HTTP per ``OTEL_EXPORTER_OTLP_PROTOCOL``, or ``console``; service name
and resource attributes from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``; sampling from
``OTEL_TRACES_SAMPLER``).

A call's context comes from the W3C ``traceparent`` / ``tracestate`` metadata its client sent
(``pixelrpc.clients`` injects it when opentelemetry is importable). Spans: the RPC (``SERVER``
kind, with the request id, model and status code), its queue wait for a job slot, model loads,
each compute step in the executor, and the captioner's image encoding and decoding. Everything
here is a no-op when a context's tracer is None, so the hot path pays one attribute check.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

log = logging.getLogger("pixelrpc.tracing")

REQUEST_ID_ATTR = "pixelrpc.request_id"
MODEL_ATTR = "pixelrpc.model"
INSTRUMENTATION_NAME = "pixelrpc.services"


def wanted(tracing_setting: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """Whether tracing is asked for (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return bool(tracing_setting)
    return bool(tracing_setting or exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def tracer_for(tracing_setting: bool = False, env: Mapping[str, str] | None = None):
    """The tracer a server's services use, or None when tracing is off.

    Raises RuntimeError with the fix when tracing is asked for but opentelemetry is not installed.
    """
    if not wanted(tracing_setting, env):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        raise RuntimeError(
            "tracing is on (PIXELRPC_TRACING or OTEL_* variables) but opentelemetry is not installed: "
            "pip install 'pixelrpc[tracing]'") from exc
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(_provider_from_env(env))
    return trace.get_tracer(INSTRUMENTATION_NAME)


def _provider_from_env(env: Mapping[str, str] | None):
    """An SDK tracer provider exporting per the ``OTEL_*`` variables (batching span processor)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "pixelrpc"})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    kinds = [k.strip().lower() for k in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",") if k.strip()]
    for kind in kinds:
        if kind == "console":
            exporter = ConsoleSpanExporter()
        elif kind == "otlp":
            protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                        or "grpc").strip().lower()
            if protocol.startswith("http"):
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter()  # endpoint, headers, timeout, TLS: OTEL_EXPORTER_OTLP_*
        elif kind == "none":
            continue
        else:
            raise RuntimeError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported here: use otlp, console or none")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: exporting spans to %s", ", ".join(kinds) or "nowhere")
    return provider


# ---------------------------------------------------------------- the RPC span
_SERVICE_NAMES: dict[type, str] = {}


def service_name(servicer) -> str:
    """The full proto service name of a servicer (its module's ``SERVICE_NAME``), for span names."""
    cls = type(servicer)
    name = _SERVICE_NAMES.get(cls)
    if name is None:
        module = inspect.getmodule(cls)
        name = _SERVICE_NAMES[cls] = getattr(module, "SERVICE_NAME", None) or cls.__name__.removesuffix("Servicer")
    return name


def start_rpc(tracer, grpc_context, service: str, method: str, request_id: str):
    """Start the RPC's SERVER span as a child of the caller's ``traceparent`` and make it current.

    Returns ``(span, token)`` for ``end_rpc``, or None when tracing is off.
    """
    if tracer is None:
        return None
    from opentelemetry import context, propagate, trace

    carrier = {k: v for k, v in (grpc_context.invocation_metadata() or ()) if isinstance(v, str)}
    parent = propagate.extract(carrier)
    span = tracer.start_span(f"{service}/{method}", context=parent, kind=trace.SpanKind.SERVER, attributes={
        "rpc.system": "grpc", "rpc.service": service, "rpc.method": method, REQUEST_ID_ATTR: request_id})
    token = context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_rpc(started, code_name: str, code_value: int, model: str) -> None:
    """End the span of ``start_rpc`` with the call's status and model."""
    if started is None:
        return
    from opentelemetry import context, trace

    span, token = started
    span.set_attribute("rpc.grpc.status_code", code_value)
    if model:
        span.set_attribute(MODEL_ATTR, model)
    if code_name != "OK":
        span.set_status(trace.Status(trace.StatusCode.ERROR, code_name))
    span.end()
    try:
        context.detach(token)
    except ValueError:  # ended in another context than it began (never expected): the span is done anyway
        pass


# ---------------------------------------------------------------- spans inside a call
@contextlib.contextmanager
def span(tracer, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A child span of the current one (the RPC's, on the event loop); nothing when tracing is off."""
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=dict(attributes or {})) as current:
        yield current


def record(tracer, name: str, seconds: float, attributes: Mapping[str, Any] | None = None) -> None:
    """A span that ended now and lasted ``seconds`` (queue waits and model loads are reported after
    the fact, by callbacks): a child of the current span."""
    if tracer is None:
        return
    end = time.time_ns()
    done = tracer.start_span(name, start_time=end - int(seconds * 1e9), attributes=dict(attributes or {}))
    done.end(end_time=end)


_GENERIC_STEPS = {"next", "work", "job", "start", "run", "<lambda>"}


def step_name(fn: Callable, method: str) -> str:
    """A compute span's name: the function a job step runs (``compute encode_image``), or the RPC
    method when that function says nothing (a local ``work``, a generator's ``next``)."""
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return f"compute {method if name in _GENERIC_STEPS else name}"
