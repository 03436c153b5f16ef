"""Run a real server on an ephemeral port in a background thread (for tests and benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pixelrpc.models.registry import Registry
from pixelrpc.services.runtime import ServiceContext
from pixelrpc.services.server import PixelServer, create_server
from pixelrpc.services.settings import Settings


@dataclass
class RunningServer:
    server: PixelServer
    port: int
    loop: asyncio.AbstractEventLoop

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def contexts(self) -> dict[str, ServiceContext]:
        return self.server.contexts

    @property
    def ctx(self) -> ServiceContext:
        return next(iter(self.server.contexts.values()))

    def call(self, coro_fn: Callable, *args, timeout: float = 30.0):
        """Run ``coro_fn(*args)`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self.loop).result(timeout)

    def stop_async(self, grace: float | None = None):
        """Begin a graceful stop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)


@contextlib.contextmanager
def running_server(services: Sequence[str] = ("captioning",), settings: Settings | None = None, *,
                   registry: Registry | str | None = None,
                   configure: Callable[[PixelServer], None] | None = None) -> Iterator[RunningServer]:
    """Start ``create_server`` on 127.0.0.1 port 0 in a thread; stop it on exit."""
    settings = (settings or Settings()).replace(host="127.0.0.1", port=0)
    if settings.metrics_port < 0:
        settings.metrics_port = 0
    if isinstance(registry, str):
        registry = Registry(registry)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="pixelrpc-test-server", daemon=True)
    thread.start()

    async def _start():
        server, port = await create_server(list(services), settings, registry=registry, configure=configure)
        await server.start()
        return server, port

    try:
        server, port = asyncio.run_coroutine_threadsafe(_start(), loop).result(60)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise
    handle = RunningServer(server, port, loop)
    try:
        yield handle
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
