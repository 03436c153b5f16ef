"""Channels, credentials, retries and error conversion shared by every service client."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from PIL import Image

from pixelrpc.clients.errors import from_grpc
from pixelrpc.common.suite import service_config
from pixelrpc.v1 import common_pb2, registry_pb2, registry_pb2_grpc, server_pb2, server_pb2_grpc

ImageInput = bytes | str | os.PathLike | Image.Image  # encoded bytes, a file path, or a PIL image
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0

# Round robin over an address's targets, and each service's retry policy from the suite table (gRPC
# applies it transparently before any response message has arrived).
RETRY_SERVICE_CONFIG = service_config()


_propagate = None  # opentelemetry.propagate once looked up; False when opentelemetry is not installed


def trace_metadata() -> list[tuple[str, str]]:
    """W3C ``traceparent`` / ``tracestate`` of the current OpenTelemetry span, for gRPC metadata.

    Tracing is optional for the client: without opentelemetry installed, or outside a recording span,
    this is empty and costs a global lookup. The propagators are the process's (``OTEL_PROPAGATORS``,
    default W3C trace context and baggage).
    """
    global _propagate
    if _propagate is None:
        try:
            from opentelemetry import propagate
        except ImportError:
            propagate = False
        _propagate = propagate
    if not _propagate:
        return []
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return list(carrier.items())


def image_pb(image: ImageInput) -> common_pb2.Image:
    """Encoded bytes as they are, a file's bytes, or a PIL image as PNG."""
    if isinstance(image, common_pb2.Image):
        return image
    if isinstance(image, bytes | bytearray | memoryview):
        return common_pb2.Image(data=bytes(image))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return common_pb2.Image(data=path.read_bytes(), format_hint=path.suffix.lstrip(".").lower())
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return common_pb2.Image(data=buf.getvalue(), format_hint="png")
    raise TypeError(f"an image must be bytes, a path or a PIL image, got {type(image).__name__}")


@dataclass(frozen=True)
class TLSConfig:
    """Client TLS: ``ca`` verifies the server (None: the system roots); ``cert``/``key`` are the
    client's certificate chain and private key for a server that requires client certificates
    (mutual TLS, the server's ``PIXELRPC_TLS_CLIENT_CA``); ``server_name`` overrides the name checked
    against the server's certificate. Each is a PEM path or PEM bytes."""

    ca: str | bytes | None = None
    cert: str | bytes | None = None
    key: str | bytes | None = None
    server_name: str | None = None

    def __post_init__(self):
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLSConfig needs both cert and key for a client certificate, or neither")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TLSConfig | None:
        """From ``PIXELRPC_TLS_CA``, ``PIXELRPC_TLS_CLIENT_CERT``, ``PIXELRPC_TLS_CLIENT_KEY`` and
        ``PIXELRPC_TLS_SERVER_NAME``; None (plaintext) when none of the first three is set."""
        env = os.environ if env is None else env
        ca, cert, key = (env.get(f"PIXELRPC_TLS_{k}") or None for k in ("CA", "CLIENT_CERT", "CLIENT_KEY"))
        if ca is None and cert is None and key is None:
            return None
        if (cert is None) != (key is None):
            raise ValueError("set PIXELRPC_TLS_CLIENT_CERT and PIXELRPC_TLS_CLIENT_KEY together")
        return cls(ca=ca, cert=cert, key=key, server_name=env.get("PIXELRPC_TLS_SERVER_NAME") or None)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(v):
            if v is None or isinstance(v, bytes):
                return v
            return Path(v).read_bytes()
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def _target(addr: str | Sequence[str]) -> str:
    """One address, or several balanced with round_robin through the ``ipv4:`` resolver."""
    if isinstance(addr, str):
        parts = [a.strip() for a in addr.split(",") if a.strip()]
    else:
        parts = list(addr)
    if len(parts) == 1:
        return parts[0]
    hosts = []
    for p in parts:
        host = p.replace("localhost", "127.0.0.1")
        hosts.append(host)
    return "ipv4:" + ",".join(hosts)


def channel_options(max_message_bytes: int, tls: TLSConfig | None) -> list[tuple]:
    opts = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        # A replica that restarts takes traffic within a second: reconnect attempts back off from
        # 0.1 s to at most 1 s (gRPC's default grows to 120 s, so a client could miss a restart
        # for minutes, and its retries fail fast while the channel waits).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if tls is not None and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return opts


class _Base:
    def __init__(self, target: str | Sequence[str], *, timeout: float | None = DEFAULT_TIMEOUT,
                 token: str | None = None, tls: TLSConfig | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.target = _target(target)
        self.timeout = timeout
        self.token = token
        self.tls = tls
        self._options = channel_options(max_message_bytes, tls)

    def metadata(self, request_id: str | None = None) -> list[tuple[str, str]]:
        md = []
        if self.token:
            md.append(("authorization", f"Bearer {self.token}"))
        if request_id:
            md.append(("x-request-id", request_id))
        md.extend(trace_metadata())
        return md


class ServiceClient(_Base):
    """A synchronous client of one PixelRPC server. Every call raises ``RpcError`` subclasses."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        if self.tls is not None:
            self.channel = grpc.secure_channel(self.target, self.tls.credentials(), options=self._options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=self._options)
        self._registry = registry_pb2_grpc.ModelRegistryStub(self.channel)
        self._info = server_pb2_grpc.ServerInfoStub(self.channel)
        self.registry = RegistryClient(self)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def unary(self, method, request, *, timeout: float | None = None, request_id: str | None = None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self.metadata(request_id))
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None

    def stream(self, method, request, *, timeout: float | None = None, request_id: str | None = None):
        """Iterate a server-streaming call; cancel it by closing the generator."""
        call = method(request, timeout=timeout or self.timeout, metadata=self.metadata(request_id))
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None
        finally:
            call.cancel()

    def server_info(self) -> server_pb2.GetServerInfoResponse:
        return self.unary(self._info.GetServerInfo, server_pb2.GetServerInfoRequest())

    def describe_image(self, data: bytes) -> server_pb2.DescribeImageResponse:
        return self.unary(self._info.DescribeImage,
                          server_pb2.DescribeImageRequest(image=common_pb2.Image(data=data)))

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = self.unary(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


class AsyncServiceClient(_Base):
    """The asyncio flavour of ServiceClient (grpc.aio channel)."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        if self.tls is not None:
            self.channel = grpc.aio.secure_channel(self.target, self.tls.credentials(), options=self._options)
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options=self._options)
        self._registry = registry_pb2_grpc.ModelRegistryStub(self.channel)
        self._info = server_pb2_grpc.ServerInfoStub(self.channel)
        self.registry = AsyncRegistryClient(self)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def unary(self, method, request, *, timeout: float | None = None, request_id: str | None = None):
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self.metadata(request_id))
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None

    async def stream(self, method, request, *, timeout: float | None = None, request_id: str | None = None):
        call = method(request, timeout=timeout or self.timeout, metadata=self.metadata(request_id))
        try:
            async for item in call:
                yield item
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None
        finally:
            call.cancel()

    async def server_info(self):
        return await self.unary(self._info.GetServerInfo, server_pb2.GetServerInfoRequest())

    async def health(self, service: str = "", timeout: float = 5.0) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = await self.unary(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


@dataclass(frozen=True)
class ModelSummary:
    name: str
    version: int
    tasks: tuple[str, ...]
    framework: str
    sha256: str
    loaded: bool
    is_default: bool
    created: str
    metadata: dict
    files: tuple[tuple[str, str, int], ...]

    @classmethod
    def from_pb(cls, m: registry_pb2.ModelInfo) -> ModelSummary:
        return cls(m.name, m.version, tuple(m.tasks), m.framework, m.sha256, m.loaded, m.is_default,
                   m.created.ToJsonString() if m.created.seconds else "", dict(m.metadata),
                   tuple((f.name, f.sha256, f.size) for f in m.files))

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "tasks": list(self.tasks),
                "framework": self.framework, "sha256": self.sha256, "loaded": self.loaded,
                "default": self.is_default, "created": self.created,
                "files": [{"name": n, "sha256": s, "size": z} for n, s, z in self.files]}


class RegistryClient:
    def __init__(self, owner: ServiceClient):
        self._owner = owner

    def list(self, task: str = "", all_versions: bool = False) -> list[ModelSummary]:
        resp = self._owner.unary(self._owner._registry.ListModels,
                                 registry_pb2.ListModelsRequest(task=task, all_versions=all_versions))
        return [ModelSummary.from_pb(m) for m in resp.models]

    def get(self, name: str, version: int = 0) -> ModelSummary:
        resp = self._owner.unary(self._owner._registry.GetModel, registry_pb2.GetModelRequest(
            model=common_pb2.ModelRef(name=name, version=version)))
        return ModelSummary.from_pb(resp.model)


class AsyncRegistryClient:
    def __init__(self, owner: AsyncServiceClient):
        self._owner = owner

    async def list(self, task: str = "", all_versions: bool = False) -> list[ModelSummary]:
        resp = await self._owner.unary(self._owner._registry.ListModels,
                                       registry_pb2.ListModelsRequest(task=task, all_versions=all_versions))
        return [ModelSummary.from_pb(m) for m in resp.models]

    async def get(self, name: str, version: int = 0) -> ModelSummary:
        resp = await self._owner.unary(self._owner._registry.GetModel, registry_pb2.GetModelRequest(
            model=common_pb2.ModelRef(name=name, version=version)))
        return ModelSummary.from_pb(resp.model)
