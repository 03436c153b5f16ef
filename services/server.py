"""The shared server runtime: ``create_server(services, settings) -> (server, port)`` and ``serve``.

Every PixelRPC process serves, beside its own service(s): the standard ``grpc.health.v1`` service
(a status per service name and ``""`` for the whole server), server reflection, ``ModelRegistry``
and ``ServerInfo``. Metrics are exposed for Prometheus on an HTTP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pixelrpc.models.registry import ModelCache, Registry, parse_ref
from pixelrpc.services import registry_service, server_info
from pixelrpc.services.logs import configure_logging
from pixelrpc.services.metrics import Metrics
from pixelrpc.services.runtime import JobRunner, PixelBudget, ServiceContext
from pixelrpc.services.settings import Settings

log = logging.getLogger("pixelrpc.server")

# service name -> module defining SERVICE_NAME, TASKS, add_to_server(server, ctx) (optional warmup)
SERVICE_MODULES = {
    "captioning": "pixelrpc.services.captioning",
    "visualization": "pixelrpc.services.visualization",
    "style": "pixelrpc.services.style",
}
FULL_NAMES = {
    "captioning": "pixelrpc.v1.CaptioningService",
    "visualization": "pixelrpc.v1.VisualizationService",
    "style": "pixelrpc.v1.StyleTransferService",
}
# Registry tasks each service serves (its module's TASKS wins when it defines one).
SERVICE_TASKS = {
    "captioning": ("captioning",),
    "visualization": ("classification",),
    "style": ("feature-extraction",),
}
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


def _service_module(name: str):
    """The service's module, or None while that service is not implemented in this build."""
    module_name = SERVICE_MODULES[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every RPC except health checks."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_METHOD_PREFIX):
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
    async def deny(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)


class PixelServer:
    """A started-or-not gRPC server with its health servicer, contexts and metrics endpoint."""

    def __init__(self, grpc_server: grpc.aio.Server, port: int, settings: Settings,
                 health_servicer: health.aio.HealthServicer, contexts: dict[str, ServiceContext],
                 modules: dict[str, object], service_names: list[str]):
        self.grpc_server = grpc_server
        self.port = port
        self.settings = settings
        self.health = health_servicer
        self.contexts = contexts
        self.modules = modules
        self.service_names = service_names
        self.metrics_port: int | None = None
        self._metrics_http = None
        self._watcher: asyncio.Task | None = None
        self._stopped = asyncio.Event()

    @property
    def address(self) -> str:
        host = self.settings.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def set_status(self, status) -> None:
        for name in [*self.service_names, ""]:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc_server.start()
        if self.settings.metrics_port > 0:
            self._metrics_http, self.metrics_port = next(iter(self.contexts.values())).metrics.serve_http(
                self.settings.metrics_port, self.settings.host)
        await self._preload()
        await self.set_status(health_pb2.HealthCheckResponse.SERVING)
        self._watcher = asyncio.create_task(self._watch_defaults())
        log.info("serving %s on %s%s", ", ".join(self.service_names), self.address,
                 f" (metrics on :{self.metrics_port})" if self.metrics_port else "")

    async def _preload(self) -> None:
        refs = [r.strip() for r in self.settings.preload.split(",") if r.strip()]
        loop = asyncio.get_running_loop()
        for ref in refs:
            name, version = parse_ref(ref)
            for svc, ctx in self.contexts.items():
                loaded = await loop.run_in_executor(ctx.jobs.executor, ctx.cache.get, name, version)
                warmup = getattr(self.modules.get(svc), "warmup", None)
                if warmup is not None and set(loaded.manifest.tasks) & set(ctx.tasks):
                    await loop.run_in_executor(ctx.jobs.executor, warmup, ctx, loaded)
                log.info("preloaded %s for %s in %.2fs", loaded.manifest.ref, svc, loaded.load_seconds)

    async def _watch_defaults(self) -> None:
        """Load newly published default versions of loaded models in the background, then swap."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.2, self.settings.registry_refresh_seconds))
            for ctx in self.contexts.values():
                names = {m.manifest.name for m in ctx.cache.loaded()}
                for name in names:
                    try:
                        await loop.run_in_executor(ctx.jobs.executor, ctx.cache.get, name, 0)
                    except Exception as exc:  # noqa: BLE001 - keep serving the old version
                        log.warning("could not load the new default of %s: %s", name, exc)

    async def stop(self, grace: float | None = None) -> None:
        """Announce NOT_SERVING, give load balancers ``shutdown_delay``, then drain for ``grace``."""
        if self._stopped.is_set():
            return
        await self.health.enter_graceful_shutdown()
        if self.settings.shutdown_delay > 0:
            await asyncio.sleep(self.settings.shutdown_delay)
        if self._watcher is not None:
            self._watcher.cancel()
        await self.grpc_server.stop(self.settings.shutdown_grace if grace is None else grace)
        for ctx in self.contexts.values():
            ctx.jobs.shutdown()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def _credentials(settings: Settings):
    if not settings.tls_cert:
        return None
    if not settings.tls_key:
        raise ValueError("PIXELRPC_TLS_CERT is set but PIXELRPC_TLS_KEY is not")
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


async def create_server(services: Sequence[str], settings: Settings, *, registry: Registry | None = None,
                        configure: Callable[[PixelServer], None] | None = None) -> tuple[PixelServer, int]:
    """Build (not start) a server for ``services`` (names from SERVICE_MODULES) bound per ``settings``.

    Returns ``(server, port)``; with ``settings.port == 0`` the OS picks the port. ``configure`` may
    add test-only handlers before the server starts.
    """
    if settings.torch_threads > 0:
        import torch

        torch.set_num_threads(settings.torch_threads)
    registry = registry or Registry(settings.registry or None)
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    interceptors = [AuthInterceptor(settings.auth_token)] if settings.auth_token else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    metrics = Metrics()
    device = settings.resolved_device()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    contexts: dict[str, ServiceContext] = {}
    modules: dict[str, object] = {}
    served = [registry_service.SERVICE_NAME, server_info.SERVICE_NAME]
    pixels = PixelBudget(settings.max_pixels_in_flight)  # one decoded-pixel budget per server
    for name in services:
        if name not in SERVICE_MODULES:
            raise ValueError(f"unknown service {name!r}; choose from {', '.join(SERVICE_MODULES)}")
        module = _service_module(name)
        modules[name] = module
        cache = ModelCache(registry, max_models=settings.model_cache_size,
                           refresh_seconds=settings.registry_refresh_seconds, device=device,
                           device_is_explicit=bool(settings.device),
                           on_load=lambda m, s: metrics.model_load.labels(m.ref).observe(s))
        jobs = JobRunner(settings.max_concurrency, settings.queue_depth, settings.worker_threads, name)
        ctx = ServiceContext(name=name, settings=settings, registry=registry, cache=cache, jobs=jobs,
                             metrics=metrics, tasks=tuple(getattr(module, "TASKS", SERVICE_TASKS[name])), services=served,
                             pixels=pixels)
        contexts[name] = ctx
        if module is not None:
            module.add_to_server(server, ctx)
            served.append(module.SERVICE_NAME)
    if not contexts:
        raise ValueError("create_server needs at least one service")
    first = next(iter(contexts.values()))
    if len(contexts) > 1:  # one process serving several services lists the union of their tasks
        first = ServiceContext(**{**first.__dict__, "tasks": tuple(t for c in contexts.values() for t in c.tasks)})
    registry_service.add_to_server(server, first)
    server_info.add_to_server(server, first)
    health_names = [FULL_NAMES[n] for n in services if modules.get(n) is not None]
    health_names.append(registry_service.SERVICE_NAME)
    if settings.reflection:
        reflection.enable_server_reflection(
            [*served, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server)
    target = f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"
    credentials = _credentials(settings)
    port = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    if port == 0:
        raise OSError(f"could not bind {target}")
    pixel = PixelServer(server, port, settings, health_servicer, contexts, modules, health_names)
    if configure is not None:
        configure(pixel)
    return pixel, port


async def serve_until_signal(servers: Sequence[PixelServer]) -> int:
    """Wait for SIGTERM/SIGINT, then stop every server gracefully (NOT_SERVING, drain); returns 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: NOT_SERVING, draining in-flight calls")
    await asyncio.gather(*(s.stop() for s in servers))
    log.info("stopped")
    return 0


async def serve(plans: Sequence[tuple[str, Settings]]) -> int:
    """Run one server per (service, settings) in this process until SIGTERM/SIGINT; returns 0."""
    servers = []
    for name, settings in plans:
        server, _port = await create_server([name], settings)
        await server.start()
        servers.append(server)
        print(f"pixelrpc {name} listening on {server.address}", flush=True)
    return await serve_until_signal(servers)


def run(plans: Sequence[tuple[str, Settings]]) -> int:
    configure_logging(plans[0][1].log_level, plans[0][1].log_format)
    return asyncio.run(serve(plans))
