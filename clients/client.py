"""``Client``: one object for the whole suite, one attribute per service."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

from pixelrpc.clients.base import DEFAULT_TIMEOUT, AsyncServiceClient, ServiceClient, TLSConfig

DEFAULT_ADDRESSES = {"captioning": "localhost:50051", "visualization": "localhost:50052",
                     "style": "localhost:50053"}
ENV_ADDRESSES = {"captioning": "PIXELRPC_CAPTIONING_ADDR", "visualization": "PIXELRPC_VISUALIZATION_ADDR",
                 "style": "PIXELRPC_STYLE_ADDR"}
# service -> (module, sync class, async class); each service issue provides its typed client.
CLIENT_CLASSES = {
    "captioning": ("pixelrpc.clients.captioning", "CaptioningClient", "AsyncCaptioningClient"),
    "visualization": ("pixelrpc.clients.visualization", "VisualizationClient", "AsyncVisualizationClient"),
    "style": ("pixelrpc.clients.style", "StyleClient", "AsyncStyleClient"),
}


def client_class(service: str, asynchronous: bool = False):
    module_name, sync_name, async_name = CLIENT_CLASSES[service]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return AsyncServiceClient if asynchronous else ServiceClient
    return getattr(module, async_name if asynchronous else sync_name)


class Client:
    """Sync client of the suite: ``client.captioning``, ``client.visualization``, ``client.style``.

    Each attribute is connected lazily and also exposes that server's ``registry``. An address may be
    a list of targets (or a comma-separated string), balanced with gRPC's round_robin policy.
    """

    _asynchronous = False

    def __init__(self, *, captioning: str | Sequence[str] = DEFAULT_ADDRESSES["captioning"],
                 visualization: str | Sequence[str] = DEFAULT_ADDRESSES["visualization"],
                 style: str | Sequence[str] = DEFAULT_ADDRESSES["style"],
                 timeout: float | None = DEFAULT_TIMEOUT, token: str | None = None,
                 tls: TLSConfig | None = None):
        self.addresses = {"captioning": captioning, "visualization": visualization, "style": style}
        self._kw = {"timeout": timeout, "token": token, "tls": tls}
        self._clients: dict[str, object] = {}

    @classmethod
    def from_env(cls, **overrides):
        kw = {svc: os.environ.get(env, DEFAULT_ADDRESSES[svc]) for svc, env in ENV_ADDRESSES.items()}
        if os.environ.get("PIXELRPC_AUTH_TOKEN") and "token" not in overrides:
            kw["token"] = os.environ["PIXELRPC_AUTH_TOKEN"]
        if "tls" not in overrides:
            kw["tls"] = TLSConfig.from_env()
        kw.update(overrides)
        return cls(**kw)

    def _get(self, service: str):
        if service not in self._clients:
            self._clients[service] = client_class(service, self._asynchronous)(
                self.addresses[service], **self._kw)
        return self._clients[service]

    @property
    def captioning(self):
        return self._get("captioning")

    @property
    def visualization(self):
        return self._get("visualization")

    @property
    def style(self):
        return self._get("style")

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(Client):
    """The asyncio flavour: the same attributes, each an async client."""

    _asynchronous = True

    async def close(self) -> None:  # type: ignore[override]
        for c in self._clients.values():
            await c.close()
        self._clients.clear()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
