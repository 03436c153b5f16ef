"""The HTTP front of a PixelRPC server: one port per server, same process and event loop as gRPC.

An ASGI app (starlette) served by uvicorn's ``Server.serve()`` as an asyncio task that
``PixelServer.start``/``stop`` start and drain (``HttpFront``). Routes: KServe V2 REST
(``services/http/v2.py``) and the native API as JSON (``services/http/connect.py``). Auth is the gRPC
server's (``authorization: Bearer <token>`` on everything but ``/v2/health/*``); limits, request ids,
metrics and errors come from running the same ``@rpc`` handlers (see ``handlers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pixelrpc.models.errors import InvalidInput, LimitExceeded, PixelRPCError, clip
from pixelrpc.services.errors import status_code_for
from pixelrpc.services.http import v2
from pixelrpc.services.http.connect import call_method
from pixelrpc.services.http.errors import HTTP_STATUS, error_body, error_response_parts, plain_abort
from pixelrpc.services.http.handlers import FORWARDED_HEADERS, HttpAbort, HttpCallContext
from pixelrpc.services.oip.models import parse_version
from pixelrpc.services.runtime import _REQUEST_ID_OK, new_request_id

log = logging.getLogger("pixelrpc.http")
SERVER_NAME = "pixelrpc"
EXTENSIONS = ["binary_tensor_data", "classification"]


class _LoopServer(uvicorn.Server):
    """uvicorn without its signal handlers: the PixelRPC process owns SIGTERM/SIGINT (serve_until_signal)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        return None


class HttpFront:
    def __init__(self, server):
        self.server = server  # services.server.PixelServer
        self.settings = server.settings
        self._expected = f"Bearer {self.settings.auth_token}".encode() if self.settings.auth_token else None
        self.inference = server.inference  # services/oip/server.py: the same servicer as gRPC's OIP
        self.rest = v2.RestInference(self.inference)
        self.app = Starlette(routes=[
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/models/{name}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", self.model_infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.model_infer, methods=["POST"]),
            Route("/{service}/{method}", self.native, methods=["POST"]),
        ])
        self._uvicorn: _LoopServer | None = None
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: a free port), start serving on this loop; returns the bound port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP. Without
        # it a keep-alive request waited 40 ms (Nagle holding the body behind the headers' delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(f"could not bind the HTTP port {host}:{port} (PIXELRPC_HTTP_PORT): {exc}") from None
        sock.listen(1024)
        sock.setblocking(False)
        s = self.settings
        ssl = {}
        if s.tls_cert:
            ssl = {"ssl_certfile": s.tls_cert, "ssl_keyfile": s.tls_key}
            if s.tls_client_ca:
                import ssl as ssl_module

                ssl.update(ssl_ca_certs=s.tls_client_ca, ssl_cert_reqs=ssl_module.CERT_REQUIRED)
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=max(0.1, s.shutdown_grace), server_header=False,
                                timeout_keep_alive=max(1, int(s.http_keep_alive_seconds)),
                                **ssl)
        self._uvicorn = _LoopServer(config)
        self._task = asyncio.get_running_loop().create_task(self._uvicorn.serve(sockets=[sock]), name="pixelrpc-http")
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
        bound = sock.getsockname()[1]
        log.info("HTTP (KServe V2 REST, JSON API) on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (shutdown_grace), close."""
        if self._uvicorn is None or self._task is None:
            return
        self._uvicorn.should_exit = True
        with contextlib.suppress(Exception):
            await self._task

    # ------------------------------------------------------------------ shared pieces
    @staticmethod
    def _request_id(request: Request) -> str:
        given = request.headers.get("x-request-id", "")
        return given if _REQUEST_ID_OK.match(given) else new_request_id()

    def _authorize(self, request: Request) -> None:
        if self._expected is None:
            return
        presented = request.headers.get("authorization", "")
        if hmac.compare_digest(presented.encode(), self._expected):
            return
        message = ("missing bearer token: send 'Authorization: Bearer <token>'" if not presented
                   else "invalid bearer token")
        raise plain_abort(grpc.StatusCode.UNAUTHENTICATED, message, self._request_id(request))

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_message_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise LimitExceeded(f"the request body is {int(declared):,} bytes, over this server's limit of "
                                f"{limit:,} (max_message_bytes)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise LimitExceeded(f"the request body is over this server's limit of {limit:,} bytes "
                                    "(max_message_bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    def _context(self, request: Request) -> HttpCallContext:
        metadata = [(k, request.headers[k]) for k in FORWARDED_HEADERS if k in request.headers]
        timeout = None
        raw = request.headers.get("connect-timeout-ms", "")
        if raw.isdigit():
            timeout = int(raw) / 1000.0
        client = request.client
        host = client.host if client else "unknown"
        peer = f"{'ipv6' if ':' in host else 'ipv4'}:{host}:{client.port if client else 0}"
        return HttpCallContext(metadata, peer, timeout)

    def _fail(self, exc: BaseException, request: Request, v2_style: bool = False) -> Response:
        if not isinstance(exc, HttpAbort):
            rid = self._request_id(request)
            if isinstance(exc, PixelRPCError):
                exc = plain_abort(status_code_for(exc), exc.message, rid, exc)
            else:
                log.error("HTTP %s failed (request id %s)", request.url.path, rid, exc_info=exc)
                exc = plain_abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})", rid)
        status, body, headers = error_response_parts(exc)
        if v2_style:  # KServe clients read "error"
            doc = {"error": exc.status.message or exc.message, **error_body(exc)}
            body = json.dumps(doc).encode()
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    # ------------------------------------------------------------------ native API
    async def native(self, request: Request) -> Response:
        service, method = request.path_params["service"], request.path_params["method"]
        handler = self.server.handlers.get(f"/{service}/{method}")
        try:
            self._authorize(request)
            if handler is None:
                raise plain_abort(grpc.StatusCode.UNIMPLEMENTED,
                                  f"no method {clip(service)}/{clip(method)} on this server", self._request_id(request))
            content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if content_type not in ("application/json", "application/proto", "application/connect+json"):
                raise InvalidInput(f"Content-Type {clip(content_type)!r} is not served: use application/json "
                                   "(or application/connect+json for Connect streaming)", field="Content-Type")
            body = await self._body(request)
        except Exception as exc:  # noqa: BLE001 - answered as JSON
            response = self._fail(exc, request)
            if handler is None and response.status_code == HTTP_STATUS[grpc.StatusCode.UNIMPLEMENTED]:
                response.status_code = 404  # Connect: an unknown procedure is 404
            return response
        context = self._context(request)
        return await call_method(handler, body, content_type, context, self._request_id(request))

    # ------------------------------------------------------------------ KServe V2
    async def live(self, request: Request) -> Response:
        live = not self.server.shutting_down
        return JSONResponse({"live": live}, status_code=200 if live else 503)

    async def ready(self, request: Request) -> Response:
        ready = self.server.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except HttpAbort as exc:
            return self._fail(exc, request, True)
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("pixelrpc")
        except PackageNotFoundError:
            ver = "0"
        return JSONResponse({"name": SERVER_NAME, "version": ver, "extensions": EXTENSIONS})

    @staticmethod
    def _model(request: Request) -> tuple[str, int]:
        """The route's model name and version (the Open Inference Protocol's version rule)."""
        return request.path_params["name"], parse_version(request.path_params.get("version") or "")

    async def model_metadata(self, request: Request) -> Response:
        """The Open Inference Protocol servicer's ModelMetadata (the same tensors as gRPC's)."""
        try:
            self._authorize(request)
            meta = await self.inference.describe(*self._model(request))
        except Exception as exc:  # noqa: BLE001
            return self._fail(exc, request, True)
        return JSONResponse(meta)

    async def model_ready(self, request: Request) -> Response:
        """The Open Inference Protocol servicer's ModelReady: 200, or 400 (Triton's answer) when not ready."""
        try:
            self._authorize(request)
            ready = await self.inference.model_ready(*self._model(request)) and not self.server.shutting_down
        except HttpAbort as exc:
            return self._fail(exc, request, True)
        except PixelRPCError:  # e.g. a malformed version
            ready = False
        return JSONResponse({"ready": ready}, status_code=200 if ready else 400)

    async def model_infer(self, request: Request) -> Response:
        """V2 REST inference: ``v2.RestInference`` (under ``@rpc``) runs the Open Inference Protocol's
        ``InferenceServicer.infer``, the one gRPC ModelInfer runs."""
        started = time.perf_counter()
        try:
            self._authorize(request)
            body = await self._body(request)
        except Exception as exc:  # noqa: BLE001
            return self._fail(exc, request, True)
        name = request.path_params["name"]
        raw = (body, request.headers.get(v2.HEADER_LENGTH), name, request.path_params.get("version"))
        context = self._context(request)
        try:
            payload, headers = await self.rest.ModelInfer(raw, context)
        except Exception as exc:  # noqa: BLE001 - HttpAbort with the call's status and request id
            return self._fail(exc, request, True)
        headers["x-request-id"] = context.request_id
        log.debug("infer %s in %.1f ms", name, (time.perf_counter() - started) * 1000)
        return Response(payload, headers=headers, media_type=headers.pop("content-type"))
