"""Real ``pixelrpc serve`` subprocesses for the hostile-input and fault tests.

A hostile request must not be able to take the test runner down with it, so each service runs in its
own process, optionally under an address-space limit (a decompression bomb that slips through
then fails to allocate instead of swallowing the machine) and optionally as an unprivileged user
(so that ``chmod`` can make the registry unreadable to it; root ignores permissions). ``ensure()``
restarts a server that a previous case crashed, so one crash fails one case, not all that follow.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixelrpc.common.suite import SERVICES as SUITE

FULL_NAMES = {name: spec.full_name for name, spec in SUITE.items()}
REGISTRY_SERVICE = "pixelrpc.v1.ModelRegistry"
SERVICES = tuple(FULL_NAMES)
NOBODY = 65534
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(registry: str | os.PathLike) -> dict[str, str]:
    """A quiet, small server: one torch thread, CPU, no metrics port, short shutdown delay."""
    return {
        "PIXELRPC_REGISTRY": str(registry), "PIXELRPC_HOST": "127.0.0.1", "PIXELRPC_DEVICE": "cpu",
        "PIXELRPC_METRICS_PORT": "0", "PIXELRPC_HTTP_PORT": "-1", "PIXELRPC_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PIXELRPC_WORKER_THREADS": "2",
        "PIXELRPC_SHUTDOWN_DELAY": "0", "PYTHONUNBUFFERED": "1",
    }


def can_drop_privileges() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


class ServerProcess:
    """``pixelrpc serve <service>`` (or ``all``) on fresh loopback ports."""

    def __init__(self, service: str, registry: str | os.PathLike, log_dir: str | os.PathLike, *,
                 env: dict[str, str] | None = None, ports: dict[str, int] | None = None,
                 memory_limit: int | None = None, as_user: int | None = None, label: str = ""):
        self.service = service
        self.services = SERVICES if service == "all" else (service,)
        self.registry = Path(registry)
        self.log_dir = Path(log_dir)
        self.extra_env = dict(env or {})
        self.ports = dict(ports or {s: free_port() for s in self.services})
        self.memory_limit = memory_limit
        self.as_user = as_user
        self.label = label or service
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self._channels: dict[str, grpc.Channel] = {}

    # ------------------------------------------------------------------ lifecycle
    def address(self, service: str | None = None) -> str:
        return f"127.0.0.1:{self.ports[service or self.services[0]]}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.label}.log"

    def start(self) -> ServerProcess:
        env = {**os.environ, **base_env(self.registry), **self.extra_env}
        if self.service == "all":
            for s in self.services:
                env[f"PIXELRPC_{s.upper()}_PORT"] = str(self.ports[s])
                env[f"PIXELRPC_{s.upper()}_METRICS_PORT"] = "0"
            env.pop("PIXELRPC_PORT", None)
        else:
            env["PIXELRPC_PORT"] = str(self.ports[self.service])
        command = [sys.executable, "-m", "pixelrpc.cli", "serve", self.service]
        if self.as_user is not None:
            command = ["setpriv", f"--reuid={self.as_user}", f"--regid={self.as_user}", "--clear-groups",
                       "--", *command]
        limit = self.memory_limit

        def preexec():  # runs in the child between fork and exec
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it for its lifetime
        log.write(f"==== start {self.starts + 1}\n")
        log.flush()
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, preexec_fn=preexec if limit else None)
        log.close()
        self.starts += 1
        return self

    def wait_serving(self, timeout: float = 120.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        for service in self.services:
            while self.health("", service) != "SERVING":
                if not self.alive:
                    raise RuntimeError(f"{self.label} exited with {self.process.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.label} not SERVING after {timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.2)
        return self

    def wait_ready(self, timeout: float = 300.0) -> ServerProcess:
        """``wait_serving``, then wait until every served service is ready too (its preloaded models
        loaded and warmed: readiness may follow liveness by seconds on a busy machine)."""
        self.wait_serving()
        deadline = time.monotonic() + timeout
        while not self.is_healthy():
            if not self.alive:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label} not ready after {timeout:.0f}s: {self.health_report()}")
            time.sleep(0.2)
        return self

    def ensure(self) -> ServerProcess:
        """Restart the server if an earlier case killed it (and wait until it is ready)."""
        if not self.alive:
            self.close_channels()
            self.start().wait_ready()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain) and the exit code; SIGKILL if it does not exit in ``timeout``."""
        self.close_channels()
        if self.process is None:
            return None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def rss_kib(self) -> int:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    # ------------------------------------------------------------------ channels and health
    def channel(self, service: str | None = None) -> grpc.Channel:
        service = service or self.services[0]
        if service not in self._channels:
            self._channels[service] = grpc.insecure_channel(self.address(service), options=CHANNEL_OPTIONS)
        return self._channels[service]

    def close_channels(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def health(self, name: str = "", service: str | None = None, timeout: float = 5.0) -> str:
        """The health status name of ``name`` ("" is the whole server), or the RPC's error code name."""
        stub = health_pb2_grpc.HealthStub(self.channel(service))
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def health_report(self) -> dict[str, str]:
        """``{"<port> <name>": status}`` for "" and every served service name."""
        report = {}
        for service in self.services:
            for name in ("", FULL_NAMES[service]):
                report[f"{service}:{name or '<server>'}"] = self.health(name, service)
        return report

    def is_healthy(self) -> bool:
        return self.alive and all(v == "SERVING" for v in self.health_report().values())
