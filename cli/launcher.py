"""Start PixelRPC services as separate processes on loopback, wait until healthy, stop them cleanly.

Used by ``make demo`` and the end-to-end tests; production deployments use docker-compose.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pixelrpc.clients.base import ServiceClient
from pixelrpc.clients.errors import RpcError
from pixelrpc.common.suite import SERVICES as SUITE

SERVICES = tuple(SUITE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Suite:
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return self.services[name].address

    def env(self) -> dict[str, str]:
        """Environment variables that point the client library and CLI at this suite."""
        return {SUITE[n].address_env: s.address for n, s in self.services.items()}

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for svc in self.services.values():
            while True:
                if svc.process.poll() is not None:
                    raise RuntimeError(f"{svc.name} exited with {svc.process.returncode}; log: "
                                       f"{svc.log_path.read_text()[-2000:]}")
                try:
                    with ServiceClient(svc.address, timeout=2) as c:
                        if c.health(timeout=2) == "SERVING":
                            break
                except RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{svc.name} on {svc.address} not SERVING after {timeout:.0f}s")
                time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every service (graceful drain) and return their exit codes."""
        for svc in self.services.values():
            if svc.process.poll() is None:
                svc.process.send_signal(signal.SIGTERM)
        codes = {}
        for svc in self.services.values():
            try:
                codes[svc.name] = svc.process.wait(timeout)
            except subprocess.TimeoutExpired:
                svc.process.kill()
                codes[svc.name] = svc.process.wait()
        return codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_suite(registry: str | os.PathLike, log_dir: str | os.PathLike, *,
                services: tuple[str, ...] = SERVICES, ports: dict[str, int] | None = None,
                extra_env: dict[str, str] | None = None) -> Suite:
    """Start each service as ``pixelrpc serve NAME`` in its own process on 127.0.0.1."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    suite = Suite()
    for name in services:
        port = (ports or {}).get(name) or free_port()
        env = {**os.environ, "PIXELRPC_REGISTRY": str(registry), "PIXELRPC_HOST": "127.0.0.1",
               "PIXELRPC_PORT": str(port), "PIXELRPC_METRICS_PORT": "0",
               "PIXELRPC_HTTP_PORT": "-1", **(extra_env or {})}
        log_path = log_dir / f"{name}.log"
        log_file = open(log_path, "w")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen([sys.executable, "-m", "pixelrpc.cli", "serve", name],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env)
        suite.services[name] = ServiceProcess(name, port, proc, log_path)
    return suite
