"""``Client``: one object for the whole suite, one attribute per service of the suite table."""

from __future__ import annotations

import os
from collections.abc import Sequence

from pixelrpc.clients.base import DEFAULT_TIMEOUT, TLSConfig
from pixelrpc.common.suite import SERVICES, service

# Derived from the suite table (pixelrpc.common.suite), for callers that want plain mappings.
DEFAULT_ADDRESSES = {name: spec.default_address for name, spec in SERVICES.items()}
ENV_ADDRESSES = {name: spec.address_env for name, spec in SERVICES.items()}


def client_class(name: str, asynchronous: bool = False) -> type:
    """The typed client of service ``name`` (its module must import: a missing one is an error)."""
    return service(name).client_class(asynchronous)


class Client:
    """Sync client of the suite: one attribute per service of the table (``client.captioning``,
    ``client.visualization``, ``client.style``).

    ``Client(captioning="host:port", ...)``: one keyword per service, each defaulting to the table's
    address. Each attribute is connected lazily and also exposes that server's ``registry``. An
    address may be a list of targets (or a comma-separated string), balanced with gRPC's round_robin
    policy.
    """

    _asynchronous = False

    def __init__(self, *, timeout: float | None = DEFAULT_TIMEOUT, token: str | None = None,
                 tls: TLSConfig | None = None, **addresses: str | Sequence[str]):
        unknown = sorted(set(addresses) - set(SERVICES))
        if unknown:
            raise TypeError(f"unknown service {', '.join(map(repr, unknown))}; the suite has {', '.join(SERVICES)}")
        self.addresses = {name: addresses.get(name, spec.default_address) for name, spec in SERVICES.items()}
        self._kw = {"timeout": timeout, "token": token, "tls": tls}
        self._clients: dict[str, object] = {}

    @classmethod
    def from_env(cls, **overrides):
        kw = {name: os.environ.get(spec.address_env, spec.default_address) for name, spec in SERVICES.items()}
        if os.environ.get("PIXELRPC_AUTH_TOKEN") and "token" not in overrides:
            kw["token"] = os.environ["PIXELRPC_AUTH_TOKEN"]
        if "tls" not in overrides:
            kw["tls"] = TLSConfig.from_env()
        kw.update(overrides)
        return cls(**kw)

    def _get(self, name: str):
        if name not in self._clients:
            self._clients[name] = client_class(name, self._asynchronous)(self.addresses[name], **self._kw)
        return self._clients[name]

    def __getattr__(self, name: str):
        # Called only for attributes not found otherwise: the services of the table.
        if name in SERVICES:
            return self._get(name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def __dir__(self):
        return [*super().__dir__(), *SERVICES]

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
