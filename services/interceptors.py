"""Server interceptors: bearer-token authentication, and request parsing inside the handler.

``ParseInterceptor`` exists because grpc.aio parses request bytes before any handler code runs and
answers undecodable bytes with ``UNKNOWN: Unexpected <class 'google.protobuf.message.DecodeError'>``
(unary requests) or lets the DecodeError escape from the request iterator, where the service turned it
into INTERNAL (streaming requests). The interceptor hands the handler's original deserializer a
pass-through instead and parses in a wrapper, so malformed bytes get INVALID_ARGUMENT naming the proto
message type, with the request id, for unary and streaming requests of every service alike.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import logging

import grpc
from google.protobuf import descriptor_pool

from pixelrpc.models.errors import InvalidInput
from pixelrpc.services.errors import abort
from pixelrpc.services.runtime import request_id_for

log = logging.getLogger("pixelrpc.server")
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
# Open Inference Protocol liveness and readiness: probes, open without a token like grpc.health.v1.
OPEN_METHODS = ("/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady")
OWN_SERVICES_PREFIX = "/pixelrpc.v1."  # handlers wrapped by ``runtime.rpc``
_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _rebuild(handler, behavior, kind: str, request_deserializer):
    """A method handler like ``handler`` with another behaviour and request deserializer."""
    make = {"unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler}[kind]
    return make(behavior, request_deserializer=request_deserializer,
                response_serializer=handler.response_serializer)


def _kind(handler) -> tuple[str, object]:
    for kind in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return kind, behavior
    raise ValueError("a method handler without a behaviour")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every RPC except health checks (``OPEN_METHODS``)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_METHOD_PREFIX) or details.method in OPEN_METHODS:
            return handler
        presented = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                presented = value if isinstance(value, str) else value.decode(errors="replace")
        if hmac.compare_digest(presented.encode(), self._expected):
            return handler
        message = ("missing bearer token: send 'authorization: Bearer <token>' metadata"
                   if not presented else "invalid bearer token")
        return _denying_handler(handler, message)


def _denying_handler(handler, message: str):
    """Answers UNAUTHENTICATED (with the request id) without parsing the request."""

    async def deny(request_or_iterator, context):
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, message, request_id=request_id_for(context))

    async def deny_stream(request_or_iterator, context):
        await deny(request_or_iterator, context)
        yield  # pragma: no cover - makes this an async generator

    kind, _ = _kind(handler)
    return _rebuild(handler, deny_stream if kind.endswith("_stream") else deny, kind, None)


class ParseInterceptor(grpc.aio.ServerInterceptor):
    """Parse request bytes inside the handler: malformed bytes are INVALID_ARGUMENT, not UNKNOWN/INTERNAL.

    Handlers without a deserializer (raw bytes) or with synchronous behaviours are left as they are.
    """

    def __init__(self):
        self._wrapped: dict[str, tuple[object, object]] = {}  # method -> (original handler, wrapped)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = parsing_handler(handler, details.method)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped


def message_type_name(deserializer, method: str) -> str:
    """The full proto name of a method's request (``pixelrpc.v1.CaptionRequest``), for messages."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    if descriptor is not None:
        return descriptor.full_name
    service, _, name = method.strip("/").rpartition("/")
    try:
        return descriptor_pool.Default().FindServiceByName(service).methods_by_name[name].input_type.full_name
    except (KeyError, AttributeError):
        return "request"


def parsing_handler(handler, method: str):
    """``handler`` receiving raw bytes and parsing them itself (see ``ParseInterceptor``)."""
    kind, behavior = _kind(handler)
    is_gen, is_coro = inspect.isasyncgenfunction(behavior), inspect.iscoroutinefunction(behavior)
    if not (is_gen or is_coro):
        return handler
    deserialize = handler.request_deserializer
    type_name = message_type_name(deserialize, method)
    malformed = f"malformed request: the bytes are not a valid {type_name} message"
    own_service = method.startswith(OWN_SERVICES_PREFIX)

    async def parse(raw: bytes, context):
        try:
            return deserialize(raw)
        except Exception:  # noqa: BLE001 - DecodeError, or whatever a deserializer raises on bad bytes
            request_id = request_id_for(context)
            log.info("malformed %s in %s (request id %s)", type_name, method, request_id)
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, malformed, request_id=request_id)

    async def parsed_iterator(iterator, context):
        async for raw in iterator:
            if not own_service:
                yield await parse(raw, context)
                continue
            try:
                yield deserialize(raw)
            except Exception:  # noqa: BLE001 - as in parse
                # Raised, not aborted: a PixelRPC handler may read its requests in another task
                # (CaptionStream) while it writes; its @rpc wrapper answers this in the handler's own
                # task, with the request id and rich details, like any domain error.
                log.info("malformed %s in %s (request id %s)", type_name, method, request_id_for(context))
                raise InvalidInput(malformed) from None

    if kind.startswith("unary_"):
        async def request_of(raw, context):
            return await parse(raw, context)
    else:
        async def request_of(iterator, context):
            return parsed_iterator(iterator, context)

    if is_gen:
        async def run_stream(request_or_iterator, context):
            request = await request_of(request_or_iterator, context)
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
        return _rebuild(handler, run_stream, kind, None)

    async def run(request_or_iterator, context):
        return await behavior(await request_of(request_or_iterator, context), context)
    return _rebuild(handler, run, kind, None)
