"""What the HTTP front shares with the gRPC server: its method handlers and a grpc-like call context.

``HandlerRecorder`` stands in for the ``grpc.aio.Server`` while the servicers register (it forwards
everything), and keeps each method's handler, so an HTTP request runs the very handler a gRPC call
runs: the ``@rpc`` wrapper of ``services/runtime.py`` with its request id, access log, metrics,
limits and error mapping. ``HttpCallContext`` implements the part of ``grpc.aio.ServicerContext``
that ``runtime.rpc``/``Call``, ``streaming.send_stream`` and ``errors.abort`` use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
from google.rpc import status_pb2

from pixelrpc.services.errors import DETAILS_KEY, REQUEST_ID_KEY

# Headers an HTTP caller may send that a handler reads as gRPC metadata (lower case).
FORWARDED_HEADERS = ("authorization", REQUEST_ID_KEY, "traceparent", "tracestate", "user-agent")


class HandlerRecorder:
    """A ``grpc.aio.Server`` stand-in for ``add_*Servicer_to_server``: records, then forwards."""

    def __init__(self, server):
        self._server = server
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler
        self._server.add_registered_method_handlers(service, handlers)

    def add_generic_rpc_handlers(self, handlers: Sequence) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def __getattr__(self, name):
        return getattr(self._server, name)


class HttpAbort(Exception):  # noqa: N818 - the counterpart of grpc's AbortError
    """Raised by ``HttpCallContext.abort``: the call's final status, with its ``google.rpc.Status``."""

    def __init__(self, code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None,
                 request_id: str = ""):
        super().__init__(message)
        self.code, self.message, self.request_id = code, message, request_id
        self.status = status or status_pb2.Status(code=code.value[0], message=message)


class HttpCallContext:
    """The grpc-side view of one HTTP request (see the module doc).

    ``write`` hands messages to the HTTP response through a queue of one: a write completes once the
    response has taken the message, so ``send_stream``'s window and stall limit hold for HTTP clients
    as they do for gRPC ones (the transport's own back-pressure stops the response when the client
    reads nothing).
    """

    def __init__(self, metadata: Sequence[tuple[str, str]], peer: str, timeout_s: float | None = None):
        self._metadata = tuple(metadata)
        self._peer = peer
        self._deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        self._trailing: tuple = ()
        self._code: grpc.StatusCode | None = None
        self.messages: asyncio.Queue = asyncio.Queue(maxsize=1)

    # ---- what the handlers read
    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    @property
    def deadline(self) -> float | None:
        """The client's deadline (``Connect-Timeout-Ms``), a ``time.monotonic()`` value, or None."""
        return self._deadline

    def set_trailing_metadata(self, metadata) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self):
        return self._trailing

    def code(self):
        return self._code

    def cancelled(self) -> bool:
        return False

    # ---- what the handlers do
    async def send_initial_metadata(self, metadata) -> None:
        return None

    async def write(self, message) -> None:
        await self.messages.put(message)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self._code = code
        self._trailing = tuple(trailing_metadata or ()) or self._trailing
        status = None
        for key, value in self._trailing:
            if key == DETAILS_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
        raise HttpAbort(code, details, status, self.request_id)

    @property
    def request_id(self) -> str:
        for key, value in self._trailing:
            if key == REQUEST_ID_KEY:
                return str(value)
        return ""
