"""Server settings: defaults < environment (``PIXELRPC_*``) < command-line flags.

Every field can be set through the environment as ``PIXELRPC_<FIELD>`` (upper case), e.g.
``PIXELRPC_QUEUE_DEPTH=32``. In ``pixelrpc serve all`` the per-service ports come from
``PIXELRPC_<SERVICE>_PORT``, ``PIXELRPC_<SERVICE>_METRICS_PORT`` and ``PIXELRPC_<SERVICE>_HTTP_PORT``; the default
ports are the suite table's (``pixelrpc.common.suite``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from pixelrpc.common.suite import service as service_spec
from pixelrpc.models.imaging import ImageLimits

MIB = 1024 * 1024


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota (``cpu.max``) if any."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota readable: the affinity mask is the limit
        pass
    return max(1, cpus)


# More intra-op threads than this rarely speed up a single small-batch forward (SqueezeNet, 224 px)
# and make every OpenMP barrier dearer; set PIXELRPC_TORCH_THREADS to go beyond it.
MAX_DEFAULT_TORCH_THREADS = 4


def default_torch_threads() -> int:
    """Torch intra-op threads when ``torch_threads`` is 0: the CPUs this process may use, at most 4."""
    return min(available_cpus(), MAX_DEFAULT_TORCH_THREADS)


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``. Without an NVIDIA device node there is no GPU to
    find, so torch is not imported just to look (a captioner serving feature vectors never needs it)."""
    if "torch" not in sys.modules and not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0")):
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # torch missing or broken CUDA: the CPU always works
        return "cpu"


@dataclass
class Settings:
    """Every server setting. Each field's ``#:`` comment is its documentation: scripts/gen_config_docs.py
    renders them into docs/configuration.md (``make docs``; ``make test`` fails when it is stale)."""

    #: Bind address (`0.0.0.0` in containers).
    host: str = "127.0.0.1"
    #: Port of a single service; 0: the service's default (captioning 50051, visualization 50052, style
    #: 50053). In `serve all`: `PIXELRPC_<SERVICE>_PORT`.
    port: int = 0
    #: Registry root folder; empty: `~/.cache/pixelrpc/registry`.
    registry: str = ""  # "" -> PIXELRPC_REGISTRY or ~/.cache/pixelrpc/registry
    #: Largest gRPC message, in bytes, both directions (the client library's default is the same).
    max_message_bytes: int = 64 * MIB
    #: Largest encoded image, in bytes (`RESOURCE_EXHAUSTED` above).
    max_image_bytes: int = 48 * MIB
    #: Largest image, in pixels claimed by its header and in decoded pixels (4 bytes of decoder memory
    #: each); `INVALID_ARGUMENT`, checked before decoding (see serving.md, Admission). Lowered from 36
    #: to 24 million so one maximal image stays well inside a 300 MB budget above idle.
    max_image_pixels: int = 24_000_000  # decoded pixels of one image (see models/imaging.py)
    #: Largest side, in pixels, of the images iterative jobs compute at (style transfer, fooling, class
    #: visualization).
    max_image_side: int = 1024
    #: Most iterations of an iterative job (also SmoothGrad samples and Integrated Gradients steps).
    max_iterations: int = 1000
    #: Threads that run jobs (the torch work), shared by a process's services; `max_concurrency` jobs
    #: are admitted and take turns on them step by step. Keep 1 on CPU: torch called from two threads at
    #: once runs two OpenMP pools that spin against each other (a SqueezeNet forward went from 7.5 ms to
    #: 13-15 ms on 2 cores).
    worker_threads: int = 1
    #: `torch.set_num_threads`; 0: the CPUs the process may use (affinity, cgroup `cpu.max`), at most 4
    #: (a 2-core box: 2). Several services on one host (compose): 2 each with `OMP_WAIT_POLICY=PASSIVE`
    #: (compose's default), or split the cores (e.g. 1 each) when they are busy at once.
    torch_threads: int = 0  # torch intra-op threads; 0: the CPUs this process may use, at most 4
    #: Compute device; empty: `cuda` when torch sees a GPU, else `cpu`. Overrides a manifest's
    #: `serving.device`.
    device: str = ""  # "" -> cuda when available, else cpu
    #: Calls that may wait for a job slot; more get `RESOURCE_EXHAUSTED`. A waiting call holds only its
    #: request message, so the queue is deep: bursts of clients wait instead of being refused.
    queue_depth: int = 128
    #: Jobs running at once per service.
    max_concurrency: int = 2
    #: Log level (`DEBUG`, `INFO`, `WARNING`, ...).
    log_level: str = "INFO"
    #: `text` or `json` (one JSON object per line, access lines included).
    log_format: str = "text"  # "text" or "json"
    #: Prometheus `/metrics` port; -1: the service's default (9101 / 9102 / 9103; in `serve all`:
    #: `PIXELRPC_<SERVICE>_METRICS_PORT`), 0: off.
    metrics_port: int = -1  # -1: the service's default port, 0: off
    #: HTTP port (KServe V2 REST and the native API as JSON, docs/http.md): -1 off, 0 a free port;
    #: `from_env(service=...)` takes the service's default (8081 / 8082 / 8083) unless
    #: `PIXELRPC_HTTP_PORT` or `pixelrpc serve --http-port` sets it.
    http_port: int = -1
    #: Seconds the HTTP port keeps an idle connection open. Longer than clients' own keep-alive
    #: (aiohttp and tritonclient.http: 15 s) and load balancers' idle timeouts (60 s), so the client
    #: side closes first: with uvicorn's 5 s default, a client could reuse a connection the server was
    #: closing and see "server disconnected". nginx's default, too.
    http_keep_alive_seconds: float = 75.0
    #: Serve TLS with this certificate (PEM path); needs `tls_key`. Empty: plaintext.
    tls_cert: str = ""
    #: The TLS certificate's private key (PEM path).
    tls_key: str = ""
    #: When set, every RPC except health needs `authorization: Bearer <token>`; the client library and
    #: the CLI send it from the same variable.
    auth_token: str = ""
    #: Seconds in-flight calls get to finish on SIGTERM/SIGINT.
    shutdown_grace: float = 10.0
    #: Seconds `NOT_SERVING` is announced before the server stops accepting calls.
    shutdown_delay: float = 0.5  # seconds NOT_SERVING is announced before the server stops accepting
    #: Models kept loaded per service (LRU).
    model_cache_size: int = 8
    #: How often, in seconds, the default version of a loaded model is re-read (a new default is loaded,
    #: then swapped in) and a gone registry is looked for again.
    registry_refresh_seconds: float = 2.0
    #: Comma-separated `NAME[:V]` loaded, golden-checked and warmed before the services report
    #: `SERVING`; a failure exits 1 naming each failed model.
    preload: str = ""  # comma-separated model refs to load and warm before reporting SERVING
    #: The model a request that names none gets; empty: each service's preference list (see models.md).
    default_model: str = ""  # the model a request that names none gets (else each service's preference list)
    #: Dynamic batching of captions: most requests decoded together; 0: the manifest's
    #: `serving.max_batch_size`, else the service's default. Above 0, it overrides the manifest.
    max_batch_size: int = 0
    #: Dynamic batching: milliseconds a batch waits for more requests; -1 (or 0): the manifest's
    #: `serving.max_batch_delay_ms`, else the service's default. Above 0, it overrides the manifest.
    max_batch_delay_ms: float = -1.0
    #: Where caption decoding runs: `process`, a worker process of the service's own (numpy and the
    #: captioners, no torch, about 60 MiB), so that decoding and the event loop do not take turns on
    #: one GIL (64 clients on 2 cores: 1.1-1.35x the captions/s of `thread`); `thread`, a thread of the
    #: server process (a lone caller after an idle spell: about 1 ms sooner). The same captions, bitwise.
    caption_decode: str = "process"
    #: Caption decoding dtype, `float32` or `float64`; empty: the manifest's `serving.decode_dtype`,
    #: else the model's own dtype. Decoding is batch-invariant in both.
    decode_dtype: str = ""
    #: Serve gRPC server reflection (`grpcurl -plaintext localhost:50051 list`).
    reflection: bool = True
    #: Mutual TLS: a CA bundle (PEM path); every client must present a certificate signed by it (needs
    #: `tls_cert`); a client without one fails the handshake (`UNAVAILABLE`), health checks included.
    tls_client_ca: str = ""
    #: A stream whose client accepts no message for this many seconds is ended with `ABORTED` ("stream
    #: stalled"), its job stopped and freed; 0: no limit.
    stream_stall_seconds: float = 30.0
    #: Messages a streaming job computes ahead of what gRPC has accepted for its client; when they wait,
    #: the job gives its job slot back until the client reads.
    stream_send_window: int = 2
    #: Items of one `CaptionStream` in progress; the next request is read only when one is answered.
    caption_stream_window: int = 32
    #: Readiness: each service's health name stays `NOT_SERVING` until its preload models (or, without a
    #: preload list, its default model) are loaded, golden-checked and warmed, retrying every
    #: `registry_refresh_seconds`; `""` stays liveness.
    require_models: bool = False
    # Admission (models/imaging.py): image shapes refused from the header, and decoded-pixel budgets
    # (a decoded pixel is 4 bytes of decoder memory) per request and for the whole server.
    #: Largest ratio of an image's longest to shortest side (`INVALID_ARGUMENT`, from the header).
    max_image_aspect: float = 32.0
    #: Largest factor an image is enlarged by to reach the size a job works at (`INVALID_ARGUMENT`, from
    #: the header).
    max_image_upscale: float = 32.0
    #: Decoded pixels summed over one request's images (`RESOURCE_EXHAUSTED`, before decoding).
    max_request_pixels: int = 192_000_000
    #: Decoded pixels admitted server-wide and not yet decoded; beyond it `RESOURCE_EXHAUSTED` with
    #: `RetryInfo`.
    max_pixels_in_flight: int = 48_000_000
    #: OpenTelemetry tracing (docs/observability.md); also on when `OTEL_TRACES_EXPORTER` or
    #: `OTEL_EXPORTER_OTLP_ENDPOINT` is set, off when `OTEL_SDK_DISABLED=true`; off by default.
    tracing: bool = False
    #: Not read from the environment: free-form settings passed in code (no service reads it today).
    extra: dict = field(default_factory=dict)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_bytes, self.max_image_pixels, self.max_image_side,
                           self.max_image_aspect, self.max_image_upscale, self.max_request_pixels)

    def resolved_device(self) -> str:
        return self.device or default_device()

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: dict | None = None, *, service: str | None = None, **overrides) -> Settings:
        """Defaults, then ``PIXELRPC_*`` variables, then ``overrides`` that are not None."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"PIXELRPC_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        spec = service_spec(service) if service else None
        if spec is not None:
            for name, var in (("port", spec.port_env), ("metrics_port", spec.metrics_port_env),
                              ("http_port", spec.http_port_env)):
                raw = env.get(var)
                if raw:
                    values[name] = int(raw)
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        settings = cls(**values)
        if spec is not None:
            if "port" not in values:
                settings.port = spec.port
            if settings.metrics_port == -1:
                settings.metrics_port = spec.metrics_port
            if "http_port" not in values:
                settings.http_port = spec.http_port
        elif settings.metrics_port == -1:
            settings.metrics_port = 0
        return settings


def _coerce(f: dataclasses.Field, raw: str):
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    try:
        if kind == "bool":
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"PIXELRPC_{f.name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
