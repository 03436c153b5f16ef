"""Run a real server (captioning slot) with the slow test handler until SIGTERM, like ``pixelrpc serve``."""

from __future__ import annotations

import asyncio
import sys

from slow_handler import install

from pixelrpc.services.server import create_server, serve_until_signal
from pixelrpc.services.settings import Settings


async def main(registry: str) -> int:
    settings = Settings.from_env(port=0, registry=registry, metrics_port=0, shutdown_delay=1.0,
                                 shutdown_grace=10.0)
    server, port = await create_server(["captioning"], settings, configure=install)
    await server.start()
    print(f"PORT {port}", flush=True)
    return await serve_until_signal([server])


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
