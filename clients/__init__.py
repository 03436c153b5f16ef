"""The PixelRPC client library: ``Client`` (sync) and ``AsyncClient`` (asyncio)."""

from pixelrpc.clients.base import AsyncServiceClient, ServiceClient, TLSConfig
from pixelrpc.clients.client import AsyncClient, Client
from pixelrpc.clients.errors import RpcError

__all__ = ["AsyncClient", "AsyncServiceClient", "Client", "RpcError", "ServiceClient", "TLSConfig"]
