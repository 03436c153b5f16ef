"""The native API as JSON over HTTP, in the Connect protocol's style (https://connectrpc.com/docs/protocol).

``POST /<package.Service>/<Method>``: the route names the gRPC method; the handler the gRPC server
registered for it runs (``services/http/handlers.py``), so both doors share auth, limits, request ids,
metrics and errors. Message bodies use the proto3 JSON mapping (``google.protobuf.json_format``;
``bytes`` fields are base64).

- Unary methods: ``Content-Type: application/json`` (or ``application/proto``), answered with the
  response message, or with an error as Connect spells it (``{"code", "message", "details"}``) and
  the HTTP status of its code (``errors.HTTP_STATUS``).
- Server-streaming methods, two framings:
  ``application/connect+json`` (Connect streaming: each message in a 5-byte envelope, flags then a
  big-endian length; the last envelope, flag 0x02, holds ``{"error"?, "metadata"}``), or
  ``application/json`` (newline-delimited JSON, grpc-gateway's shape: one ``{"result": message}`` per
  line, and ``{"error": {...}}`` as the last line if the stream fails after it started; a failure
  before the first message is answered like a unary error, with its HTTP status).
- Client- and bidi-streaming methods (``CaptionStream``) read the whole request body first
  (half duplex): enveloped messages under ``application/connect+json``, one JSON message per line
  under ``application/json``.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format
from starlette.responses import Response, StreamingResponse

from pixelrpc.models.errors import DEADLINE_PASSED, InvalidInput, clip
from pixelrpc.services.http.errors import error_body, error_response_parts, plain_abort
from pixelrpc.services.http.handlers import HttpAbort, HttpCallContext
from pixelrpc.services.runtime import on_loop_clock

CONNECT_JSON = "application/connect+json"
NDJSON = "application/x-ndjson"
END_STREAM = 0x02


def _envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def _unenvelope(body: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(body):
        if pos + 5 > len(body):
            raise InvalidInput("the connect+json body ends inside an envelope prefix", field="body")
        flags, length = struct.unpack_from(">BI", body, pos)
        pos += 5
        if flags & 0x01:
            raise InvalidInput("compressed envelopes are not supported", field="body")
        if pos + length > len(body):
            raise InvalidInput("the connect+json body ends inside a message", field="body")
        out.append(body[pos:pos + length])
        pos += length
    return out


def to_json(message) -> bytes:
    return json_format.MessageToJson(message, indent=None).encode()


def parse(cls, payload: bytes, content_type: str):
    """A request message from JSON (or binary proto); INVALID_ARGUMENT naming the type otherwise."""
    name = cls.DESCRIPTOR.full_name
    try:
        if content_type == "application/proto":
            return cls.FromString(payload)
        return json_format.Parse(payload or b"{}", cls())
    except Exception as exc:  # noqa: BLE001 - ParseError, DecodeError, UnicodeDecodeError
        detail = clip(str(exc), 300)
        raise InvalidInput(f"malformed request: the body is not a valid {name} message ({detail})",
                           field="body") from None


async def _iterate(items):
    for item in items:
        yield item


async def call_method(handler, body: bytes, content_type: str, context: HttpCallContext,
                      request_id: str) -> Response:
    """Run ``handler`` (a grpc method handler) for one HTTP request; see the module doc."""
    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                if getattr(handler, k) is not None)
    behavior = getattr(handler, kind)
    cls = handler.request_deserializer.__self__
    connect_stream = content_type == CONNECT_JSON
    try:
        if connect_stream:
            payloads = _unenvelope(body)
        elif kind.startswith("stream_"):
            payloads = [line for line in body.splitlines() if line.strip()]
        else:
            payloads = [body]
        if kind.startswith("unary_") and len(payloads) != 1:
            raise InvalidInput(f"{cls.DESCRIPTOR.full_name}: expected one request message, got {len(payloads)}",
                               field="body")
        messages = [parse(cls, p, "application/json" if connect_stream else content_type) for p in payloads]
    except InvalidInput as exc:
        return _error(plain_abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message, request_id, exc), connect_stream)
    request = messages[0] if kind.startswith("unary_") else _iterate(messages)

    if kind.endswith("_unary"):
        try:
            response = await _within_deadline(behavior(request, context), context)
        except HttpAbort as exc:
            return _error(exc, connect_stream)
        headers = {"x-request-id": context.request_id}
        if connect_stream:  # a client-streaming call under Connect streaming: one message, then the end
            end = json.dumps({"metadata": {"x-request-id": [context.request_id]}}).encode()
            return Response(_envelope(to_json(response)) + _envelope(end, END_STREAM), media_type=CONNECT_JSON,
                            headers=headers)
        if content_type == "application/proto":
            return Response(response.SerializeToString(), media_type="application/proto", headers=headers)
        return Response(to_json(response), media_type="application/json", headers=headers)
    return await _stream(behavior, request, context, connect_stream)


def _expired(context: HttpCallContext) -> HttpAbort:
    return plain_abort(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_PASSED, context.request_id)


async def _within_deadline(awaitable, context: HttpCallContext):
    """Await a unary handler until the client's deadline, as grpc does for ``grpc-timeout``: at the
    deadline the handler is cancelled (the runtime records DEADLINE_EXCEEDED and cancels its job,
    which stops within one step and frees its slot) and the call answers DEADLINE_EXCEEDED, even if
    it was still waiting for a slot or inside one long step."""
    if context.deadline is None:
        return await awaitable
    try:
        async with asyncio.timeout_at(on_loop_clock(context.deadline)):
            return await awaitable
    except TimeoutError:
        raise _expired(context) from None


def _cancel_at_deadline(task: asyncio.Task, context: HttpCallContext) -> list[bool]:
    """Cancel a streaming handler's task at the client's deadline; the returned flag is set if it was."""
    fired = [False]
    if context.deadline is not None:
        def expire() -> None:
            if not task.done():
                fired[0] = True
                task.cancel()

        handle = asyncio.get_running_loop().call_at(on_loop_clock(context.deadline), expire)
        task.add_done_callback(lambda _: handle.cancel())
    return fired


def _failure(task: asyncio.Task, expired: list[bool], context: HttpCallContext) -> BaseException | None:
    """How a finished streaming handler failed: its exception, DEADLINE_EXCEEDED if the deadline
    cancelled it, or None."""
    if task.cancelled():
        return _expired(context) if expired[0] else None
    return task.exception()


def _error(exc: HttpAbort, connect_stream: bool) -> Response:
    if connect_stream:  # Connect streaming answers 200 and puts the error in the end-of-stream message
        end = {"error": error_body(exc), "metadata": {"x-request-id": [exc.request_id]}}
        return Response(_envelope(json.dumps(end).encode(), END_STREAM), media_type=CONNECT_JSON,
                        headers={"x-request-id": exc.request_id})
    status, body, headers = error_response_parts(exc)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _next_event(task: asyncio.Task, context: HttpCallContext):
    """The next message the handler wrote, or None once it has ended (its queue drained)."""
    if not context.messages.empty():
        return context.messages.get_nowait()
    getter = asyncio.ensure_future(context.messages.get())
    try:
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    if not context.messages.empty():
        return context.messages.get_nowait()
    return None


async def _stream(behavior, request, context: HttpCallContext, connect_stream: bool) -> Response:
    task = asyncio.get_running_loop().create_task(behavior(request, context))
    expired = _cancel_at_deadline(task, context)
    first = await _next_event(task, context)
    if first is None and not connect_stream:
        failure = _failure(task, expired, context)
        if isinstance(failure, HttpAbort):
            return _error(failure, connect_stream)  # failed before its first message: a plain error

    async def body() -> AsyncIterator[bytes]:
        try:
            message = first
            while message is not None:
                if connect_stream:
                    yield _envelope(to_json(message))
                else:
                    yield b'{"result":' + to_json(message) + b"}\n"
                message = await _next_event(task, context)
            failure = _failure(task, expired, context)
            if connect_stream:
                end: dict = {"metadata": {"x-request-id": [context.request_id]}}
                if failure is not None:
                    end["error"] = error_body(_as_abort(failure, context))
                yield _envelope(json.dumps(end).encode(), END_STREAM)
            elif failure is not None:
                yield json.dumps({"error": error_body(_as_abort(failure, context))}).encode() + b"\n"
        finally:
            if not task.done():  # the client went away: cancel the call like a gRPC cancel
                task.cancel()
                await asyncio.wait({task})

    return StreamingResponse(body(), media_type=CONNECT_JSON if connect_stream else NDJSON,
                             headers={"x-request-id": context.request_id})


def _as_abort(exc: BaseException, context: HttpCallContext) -> HttpAbort:
    if isinstance(exc, HttpAbort):
        return exc
    return plain_abort(grpc.StatusCode.INTERNAL, f"internal error (request id {context.request_id})",
                       context.request_id)
