"""The suite's services: ONE table that everything else derives from.

Each row is one gRPC service of the suite: its CLI and settings name (``pixelrpc serve NAME``), its
proto service (also its health name), its default port and metrics port, the registry tasks it serves,
the models it prefers when a request names none, its typed client, the environment variable clients
read its address from, and the retry policy its client channels use. Readers: the client library
(``Client``, default addresses, the channel service config), the CLI (``serve``, ``health``,
``--addr`` help), the server (``Settings.from_env`` ports, ``create_server``: module, health name,
tasks, default models), the launcher, and ``tests/test_suite_table.py``, which checks that
``docker-compose.yml``, the Dockerfile and ``scripts/compose_test.sh`` agree with it.

Plain data on purpose (``pixelrpc.common``): this module imports nothing beyond the standard library,
so the client side (no torch) and the server side both import it, and neither imports the other. Code is named by dotted path (``client``,
``server_module``) and imported only by whoever needs it; a missing module is an error, never skipped.

To add a service: one row here, its servicer module and its client module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retry policy for a service's calls (A6 client-side retries), applied by the channel
    before any response message has arrived."""

    max_attempts: int = 4  # within 0.7 s, so a 1 s call to a dead server still says UNAVAILABLE
    initial_backoff: str = "0.1s"
    max_backoff: str = "2s"
    backoff_multiplier: float = 2
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE",)

    def to_json(self) -> dict:
        return {"maxAttempts": self.max_attempts, "initialBackoff": self.initial_backoff,
                "maxBackoff": self.max_backoff, "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": list(self.retryable_status_codes)}


# Retry UNAVAILABLE (a restarting or overloaded replica) with exponential backoff.
RETRY_UNAVAILABLE = RetryPolicy()


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # CLI and settings name: `pixelrpc serve NAME`, PIXELRPC_<NAME>_PORT
    full_name: str  # proto service; also its health name (readiness)
    port: int  # default gRPC port
    metrics_port: int  # default Prometheus port
    http_port: int  # default HTTP port (KServe V2 REST and the native API as JSON, services/http/)
    tasks: tuple[str, ...]  # registry tasks it serves (and lists in ModelRegistry)
    default_models: tuple[str, ...]  # preference order for a request that names no model
    client: str  # "module:SyncClass:AsyncClass" of its typed client
    server_module: str  # module with add_to_server(server, ctx) (and optional warmup)
    address_env: str  # environment variable of its address, read by the client library and CLI
    retry: RetryPolicy = field(default=RETRY_UNAVAILABLE)

    @property
    def default_address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def port_env(self) -> str:
        """Its port in ``pixelrpc serve all`` (one process, several ports)."""
        return f"PIXELRPC_{self.name.upper()}_PORT"

    @property
    def metrics_port_env(self) -> str:
        return f"PIXELRPC_{self.name.upper()}_METRICS_PORT"

    @property
    def http_port_env(self) -> str:
        return f"PIXELRPC_{self.name.upper()}_HTTP_PORT"

    def client_class(self, asynchronous: bool = False) -> type:
        module_name, sync_name, async_name = self.client.split(":")
        return getattr(importlib.import_module(module_name), async_name if asynchronous else sync_name)


SERVICES: dict[str, ServiceSpec] = {s.name: s for s in (
    ServiceSpec(
        name="captioning", full_name="pixelrpc.v1.CaptioningService", port=50051, metrics_port=9101, http_port=8081,
        tasks=("captioning",), default_models=("shapes-captioner",),
        client="pixelrpc.clients.captioning:CaptioningClient:AsyncCaptioningClient",
        server_module="pixelrpc.services.captioning", address_env="PIXELRPC_CAPTIONING_ADDR"),
    ServiceSpec(
        name="visualization", full_name="pixelrpc.v1.VisualizationService", port=50052, metrics_port=9102, http_port=8082,
        tasks=("classification",), default_models=("squeezenet1_1", "shapes-squeezenet"),
        client="pixelrpc.clients.visualization:VisualizationClient:AsyncVisualizationClient",
        server_module="pixelrpc.services.visualization", address_env="PIXELRPC_VISUALIZATION_ADDR"),
    # Default models: the Caffe trunk the style presets were calibrated on, then an ImageNet
    # SqueezeNet, then the bootstrapped shapes model.
    ServiceSpec(
        name="style", full_name="pixelrpc.v1.StyleTransferService", port=50053, metrics_port=9103, http_port=8083,
        tasks=("feature-extraction",), default_models=("squeezenet1_1-caffe", "squeezenet1_1", "shapes-squeezenet"),
        client="pixelrpc.clients.style:StyleClient:AsyncStyleClient",
        server_module="pixelrpc.services.style", address_env="PIXELRPC_STYLE_ADDR"),
)}

# Served by every process beside its own service(s), with the same retry policy.
SHARED_SERVICES: dict[str, RetryPolicy] = {
    "pixelrpc.v1.ModelRegistry": RETRY_UNAVAILABLE,
    "pixelrpc.v1.ServerInfo": RETRY_UNAVAILABLE,
    "grpc.health.v1.Health": RETRY_UNAVAILABLE,
}


def service(name: str) -> ServiceSpec:
    """The row of ``name``, or ValueError naming the services there are."""
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}") from None


def service_config() -> dict:
    """The channel's gRPC service config: round_robin over the targets of an address, and each
    service's retry policy (services sharing a policy share one methodConfig entry)."""
    by_policy: dict[RetryPolicy, list[str]] = {}
    for full_name, policy in [*((s.full_name, s.retry) for s in SERVICES.values()), *SHARED_SERVICES.items()]:
        by_policy.setdefault(policy, []).append(full_name)
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": n} for n in names], "retryPolicy": policy.to_json()}
                         for policy, names in by_policy.items()],
    }
