"""The shared server runtime: ``create_server(services, settings) -> (server, port)`` and ``serve``.

Every PixelRPC process serves, beside its own service(s): the standard ``grpc.health.v1`` service
(a status per service name and ``""`` for the whole server), server reflection, ``ModelRegistry``
and ``ServerInfo``. Metrics are exposed for Prometheus on an HTTP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pixelrpc.common.suite import SERVICES, service
from pixelrpc.models.errors import PixelRPCError
from pixelrpc.models.registry import ModelCache, Registry, parse_ref
from pixelrpc.services import registry_service, server_info, tracing
from pixelrpc.services.http.handlers import HandlerRecorder
from pixelrpc.services.interceptors import AuthInterceptor, ParseInterceptor
from pixelrpc.services.logs import configure_logging
from pixelrpc.services.metrics import Metrics
from pixelrpc.services.runtime import JobRunner, PixelBudget, ServiceContext, compute_runner, torch_executor
from pixelrpc.services.settings import Settings, default_torch_threads

log = logging.getLogger("pixelrpc.server")

# The services, their modules, health names, tasks and default models: the suite table
# (pixelrpc.common.suite.SERVICES). A service's module defines add_to_server(server, ctx) and
# optionally warmup(ctx, loaded).
# ServiceContext.state keys the server keeps current for GetServerInfo and the registry service.
REGISTRY_STATUS_KEY = server_info.REGISTRY_STATUS_KEY
READINESS_KEY = server_info.READINESS_KEY
CACHES_KEY = registry_service.CACHES_KEY


class PreloadFailed(PixelRPCError):
    """A model of PIXELRPC_PRELOAD could not be loaded: the server does not start (exit code 1)."""


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
        self._preloaded = False
        self._ready: dict[str, bool] = {}
        self._not_ready: dict[str, str] = {}
        self._registry_status = None
        self.handlers: dict = {}  # "/pkg.Service/Method" -> grpc method handler (the HTTP front calls them)
        self.inference = None  # the Open Inference Protocol's servicer (gRPC, and V2 REST on the HTTP front)
        self.http = None  # services/http/: KServe V2 REST + the native API as JSON, when http_port >= 0
        self.http_port: int | None = None
        self.shutting_down = False

    @property
    def address(self) -> str:
        host = self.settings.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def set_status(self, status) -> None:
        for name in [*self.service_names, ""]:
            await self.health.set(name, status)

    async def start(self) -> None:
        """Start answering, then make each service ready.

        Health names: ``""`` is liveness (SERVING once the port answers, until shutdown); each service's
        full name is readiness (SERVING once its models are loaded and warmed: every ``preload`` model,
        and with ``require_models`` the service's default model); ``pixelrpc.v1.ModelRegistry`` says
        whether the registry folder is readable. A preload that fails stops the server and raises
        ``PreloadFailed`` (one line, for the CLI to print).
        """
        await self.set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc_server.start()
        try:
            if self.settings.metrics_port > 0:
                self._metrics_http, self.metrics_port = self._metrics().serve_http(
                    self.settings.metrics_port, self.settings.host)
            await self._start_http()
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
            await self._check_registry()
            await self._preload()
        except BaseException:
            await self._abort()
            raise
        for svc in self.contexts:
            await self._make_ready(svc)
        self._watcher = asyncio.create_task(self._watch())
        log.info("serving %s on %s%s", ", ".join(self.service_names), self.address,
                 f" (metrics on :{self.metrics_port})" if self.metrics_port else "")

    # ---- HTTP front (services/http/): same process, same event loop, same contexts
    async def _start_http(self) -> None:
        if self.settings.http_port < 0:
            return
        from pixelrpc.services.http.app import HttpFront

        self.http = HttpFront(self)
        self.http_port = await self.http.start(self.settings.host, self.settings.http_port)

    @property
    def ready(self) -> bool:
        """Every service of this server is ready (its health is SERVING) and it is not shutting down."""
        return not self.shutting_down and all(self._ready.get(s, False) for s in self.contexts
                                              if SERVICES[s].full_name in self.service_names)

    async def _stop_http(self) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None

    def _metrics(self) -> Metrics:
        return next(iter(self.contexts.values())).metrics

    async def _abort(self) -> None:
        await self._stop_http()
        await self.grpc_server.stop(0)
        for ctx in self.contexts.values():
            ctx.jobs.shutdown()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http = None
        self._stopped.set()

    async def _preload(self) -> None:
        """Load and warm every ``preload`` model in every service; all failures in one error."""
        refs = [r.strip() for r in self.settings.preload.split(",") if r.strip()]
        loop = asyncio.get_running_loop()
        failures = []
        for ref in refs:
            label = ref if ref.isprintable() else repr(ref)  # the error stays one line
            try:
                name, version = parse_ref(ref)
                for svc, ctx in self.contexts.items():
                    loaded = await loop.run_in_executor(ctx.jobs.control, ctx.cache.get, name, version)
                    await loop.run_in_executor(ctx.jobs.control, self._warm, svc, loaded)
                    await self._warm_async(svc, loaded)
                    log.info("preloaded %s for %s in %.2fs", loaded.manifest.ref, svc, loaded.load_seconds)
            except PixelRPCError as exc:
                failures.append(f"{label}: {exc.message}")
            except Exception as exc:  # noqa: BLE001 - a loader's own error still gets one clear line
                failures.append(f"{label}: {type(exc).__name__}: {exc}")
        if failures:
            text = "; ".join(failures).replace("\n", " ")
            raise PreloadFailed(f"preload failed (PIXELRPC_PRELOAD): {text}")
        self._preloaded = bool(refs)

    def _warm(self, svc: str, loaded) -> None:
        """Warm ``loaded`` for ``svc`` (its module's ``warmup``), and load the encoder it pins."""
        ctx = self.contexts[svc]
        warmup = getattr(self.modules.get(svc), "warmup", None)
        if warmup is not None and set(loaded.manifest.tasks) & set(ctx.tasks):
            # on the torch thread (its one OpenMP pool); loads stay here, so it never waits on one
            ctx.jobs.compute(lambda: warmup(ctx, loaded))
        pin = loaded.manifest.metadata.get("encoder")
        if isinstance(pin, dict) and pin.get("name"):
            ctx.cache.get(str(pin["name"]), int(pin.get("version") or 0))

    async def _warm_async(self, svc: str, loaded) -> None:
        """The event loop's side of a warm-up (its module's ``warmup_async``: the captioning
        decoding process started and given the model)."""
        ctx = self.contexts[svc]
        warmup = getattr(self.modules.get(svc), "warmup_async", None)
        if warmup is not None and set(loaded.manifest.tasks) & set(ctx.tasks):
            await warmup(ctx, loaded)

    def _load_default(self, svc: str):
        """Load and warm the model ``svc`` answers requests naming none with; returns it."""
        ctx = self.contexts[svc]
        name, _reason = ctx.choose_default(ctx.tasks[0], SERVICES[svc].default_models)
        loaded = ctx.cache.get(name, 0)
        self._warm(svc, loaded)
        return loaded

    async def _make_ready(self, svc: str) -> bool:
        """Set ``svc``'s readiness: at once, or once its default model is loaded (``require_models``)."""
        if self._ready.get(svc):
            return True
        full = SERVICES[svc].full_name
        ready, reason = True, ""
        if self.settings.require_models and not self._preloaded:
            loop = asyncio.get_running_loop()
            ctx = self.contexts[svc]
            try:
                loaded = await loop.run_in_executor(ctx.jobs.control, self._load_default, svc)
                await self._warm_async(svc, loaded)
                log.info("%s is ready: %s loaded and warmed", full, loaded.manifest.ref)
            except Exception as exc:  # noqa: BLE001 - stay NOT_SERVING and retry
                ready = False
                reason = exc.message if isinstance(exc, PixelRPCError) else f"{type(exc).__name__}: {exc}"
                if self._not_ready.get(svc) != reason:
                    log.warning("%s is not ready (PIXELRPC_REQUIRE_MODELS): %s; retrying every %.1fs",
                                full, reason, self._tick())
        self._ready[svc] = ready
        self._not_ready[svc] = reason
        self._metrics().service_ready.labels(svc).set(1 if ready else 0)
        await self.health.set(full, health_pb2.HealthCheckResponse.SERVING if ready
                              else health_pb2.HealthCheckResponse.NOT_SERVING)
        self._publish_state()
        return ready

    def _tick(self) -> float:
        return max(0.2, self.settings.registry_refresh_seconds)

    async def _check_registry(self) -> None:
        """Registry health: ``pixelrpc.v1.ModelRegistry`` is NOT_SERVING while the folder is away."""
        registry = next(iter(self.contexts.values())).registry
        status = await asyncio.get_running_loop().run_in_executor(None, registry.status)
        before = self._registry_status
        self._registry_status = status
        if before is None or before.state != status.state:
            if not status.healthy and status.state != "absent":
                log.warning("registry degraded (%s): %s", status.state, status.message)
            elif before is not None and not before.healthy and status.healthy:
                log.info("registry %s is back: recovered", registry.root)
        self._metrics().registry_up.set(1 if status.healthy else 0)
        await self.health.set(registry_service.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING
                              if status.healthy else health_pb2.HealthCheckResponse.NOT_SERVING)
        self._publish_state()

    def _publish_state(self) -> None:
        """What GetServerInfo reports: the registry's state and each service's readiness."""
        for ctx in self.contexts.values():
            ctx.state[REGISTRY_STATUS_KEY] = self._registry_status
            ctx.state[READINESS_KEY] = {SERVICES[s].full_name: (self._ready.get(s, False), self._not_ready.get(s, ""))
                                        for s in self.contexts}

    async def _watch(self) -> None:
        """Every refresh interval: registry health, readiness of services still waiting for their
        models, and the new default versions of loaded models (loaded in the background, then swapped)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick())
            try:
                await self._check_registry()
                for svc in self.contexts:
                    if not self._ready.get(svc):
                        await self._make_ready(svc)
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("registry watcher")
            for ctx in self.contexts.values():
                names = {m.manifest.name for m in ctx.cache.loaded()}
                for name in names:
                    try:
                        await loop.run_in_executor(ctx.jobs.control, ctx.cache.get, name, 0)
                    except Exception as exc:  # noqa: BLE001 - keep serving the old version
                        log.debug("could not load the new default of %s: %s", name, exc)

    async def stop(self, grace: float | None = None) -> None:
        """Announce NOT_SERVING, give load balancers ``shutdown_delay``, then drain for ``grace``."""
        if self._stopped.is_set():
            return
        self.shutting_down = True
        await self.health.enter_graceful_shutdown()
        if self.settings.shutdown_delay > 0:
            await asyncio.sleep(self.settings.shutdown_delay)
        if self._watcher is not None:
            self._watcher.cancel()
        grace = self.settings.shutdown_grace if grace is None else grace
        await asyncio.gather(self.grpc_server.stop(grace), self._stop_http())
        for ctx in self.contexts.values():
            ctx.jobs.shutdown()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def _credentials(settings: Settings):
    """TLS server credentials, or None for plaintext. With ``tls_client_ca`` (mutual TLS) the handshake
    fails for a client without a certificate signed by that CA, before any RPC is read."""
    if not settings.tls_cert:
        if settings.tls_client_ca:
            raise ValueError("PIXELRPC_TLS_CLIENT_CA is set but PIXELRPC_TLS_CERT is not: client "
                             "certificates are verified in a TLS handshake, so the server needs its own")
        return None
    if not settings.tls_key:
        raise ValueError("PIXELRPC_TLS_CERT is set but PIXELRPC_TLS_KEY is not")
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    if settings.tls_client_ca:
        client_ca = Path(settings.tls_client_ca).read_bytes()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])


def configure_torch_threads(settings: Settings, services: Sequence[str] = ()) -> int:
    """Size torch's intra-op pool: ``torch_threads``, or when 0 the CPUs this process may use (at most
    4; ``default_torch_threads``). Returns the number set.

    A captioning-only process imports torch only for an image encoder: then the count goes to
    ``OMP_NUM_THREADS``, which torch reads when it loads, and torch is not imported here.
    """
    threads = settings.torch_threads if settings.torch_threads > 0 else default_torch_threads()
    if "torch" not in sys.modules and not set(services) - {"captioning"}:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        return threads
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


async def create_server(services: Sequence[str], settings: Settings, *, registry: Registry | None = None,
                        configure: Callable[[PixelServer], None] | None = None) -> tuple[PixelServer, int]:
    """Build (not start) a server for ``services`` (names of the suite table) bound per ``settings``.

    Returns ``(server, port)``; with ``settings.port == 0`` the OS picks the port. ``configure`` may
    add test-only handlers before the server starts.
    """
    configure_torch_threads(settings, services)
    registry = registry or Registry(settings.registry or None)
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    # Authentication first: a denied call is answered without parsing its request.
    interceptors = [AuthInterceptor(settings.auth_token)] if settings.auth_token else []
    interceptors.append(ParseInterceptor())
    server = grpc.aio.server(options=options, interceptors=interceptors)
    metrics = Metrics()
    tracer = tracing.tracer_for(settings.tracing)  # None unless tracing is on (docs/observability.md)
    device = settings.resolved_device()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    contexts: dict[str, ServiceContext] = {}
    modules: dict[str, object] = {}
    served = [registry_service.SERVICE_NAME, server_info.SERVICE_NAME]
    recorder = HandlerRecorder(server)  # keeps the method handlers for the HTTP front
    pixels = PixelBudget(settings.max_pixels_in_flight)  # one decoded-pixel budget per server
    # One torch executor per process (worker_threads threads, default 1), shared by its services:
    # see JobRunner. Each service keeps its own slots and queue.
    executor = torch_executor(settings.worker_threads, "torch")
    for name in services:
        spec = service(name)  # ValueError naming the services for an unknown name
        module = importlib.import_module(spec.server_module)  # a missing module is an error
        modules[name] = module
        cache = ModelCache(registry, max_models=settings.model_cache_size,
                           refresh_seconds=settings.registry_refresh_seconds, device=device,
                           device_is_explicit=bool(settings.device),
                           on_load=lambda m, s: (metrics.model_load.labels(m.ref).observe(s), tracing.record(
                               tracer, "model load", s, {tracing.MODEL_ATTR: m.ref})),
                           on_golden=lambda m, r: (metrics.golden_failures.labels(m.ref).inc()
                                                   if r.state == "failed" else None),
                           compute=compute_runner(executor))
        jobs = JobRunner(settings.max_concurrency, settings.queue_depth, settings.worker_threads, name,
                         executor=executor)
        ctx = ServiceContext(name=name, settings=settings, registry=registry, cache=cache, jobs=jobs,
                             metrics=metrics, tasks=spec.tasks, services=served, pixels=pixels, tracer=tracer)
        contexts[name] = ctx
        module.add_to_server(recorder, ctx)
        served.append(spec.full_name)
    if not contexts:
        raise ValueError("create_server needs at least one service")
    first = next(iter(contexts.values()))
    if len(contexts) > 1:  # one process serving several services lists the union of their tasks
        first = ServiceContext(**{**first.__dict__, "tasks": tuple(t for c in contexts.values() for t in c.tasks)})
    first.state[CACHES_KEY] = [c.cache for c in contexts.values()]
    registry_service.add_to_server(recorder, first)
    server_info.add_to_server(recorder, first)
    # The Open Inference Protocol (KServe V2 / Triton gRPC) on the same port, over the same contexts.
    from pixelrpc.services import oip

    inference = oip.add_to_server(server, contexts)
    served.append(oip.SERVICE_NAME)
    health_names = [SERVICES[n].full_name for n in services]
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
    pixel.handlers = recorder.handlers
    pixel.inference = inference
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
        try:
            await server.start()
        except BaseException:
            await asyncio.gather(*(s.stop(0) for s in servers), return_exceptions=True)
            raise
        servers.append(server)
        print(f"pixelrpc {name} listening on {server.address}", flush=True)
    return await serve_until_signal(servers)


def run(plans: Sequence[tuple[str, Settings]]) -> int:
    configure_logging(plans[0][1].log_level, plans[0][1].log_format)
    return asyncio.run(serve(plans))
