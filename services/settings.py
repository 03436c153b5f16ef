"""Server settings: defaults < environment (``PIXELRPC_*``) < command-line flags.

Every field can be set through the environment as ``PIXELRPC_<FIELD>`` (upper case), e.g.
``PIXELRPC_QUEUE_DEPTH=32``. In ``pixelrpc serve all`` the per-service ports come from
``PIXELRPC_<SERVICE>_PORT`` and ``PIXELRPC_<SERVICE>_METRICS_PORT``; the default ports are the suite
table's (``pixelrpc.clients.suite``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from pixelrpc.clients.suite import service as service_spec
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
    host: str = "127.0.0.1"
    port: int = 0
    registry: str = ""  # "" -> PIXELRPC_REGISTRY or ~/.cache/pixelrpc/registry
    max_message_bytes: int = 64 * MIB
    max_image_bytes: int = 48 * MIB
    max_image_pixels: int = 24_000_000  # decoded pixels of one image (see models/imaging.py)
    max_image_side: int = 1024
    max_iterations: int = 1000
    # Threads that run jobs (torch work), shared by the services of a process: 1 keeps one OpenMP pool
    # (see JobRunner); max_concurrency still bounds the jobs admitted at once.
    worker_threads: int = 1
    torch_threads: int = 0  # torch intra-op threads; 0: the CPUs this process may use, at most 4
    device: str = ""  # "" -> cuda when available, else cpu
    # Calls that may wait for a job slot; more get RESOURCE_EXHAUSTED. A waiting call holds only its
    # request message (images are decoded when it runs), so a deep queue is cheap and turns bursts of
    # clients (64 concurrent captioners, issue 10) into waiting instead of refusals.
    queue_depth: int = 128
    max_concurrency: int = 2
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json"
    metrics_port: int = -1  # -1: the service's default port, 0: off
    tls_cert: str = ""
    tls_key: str = ""
    auth_token: str = ""
    shutdown_grace: float = 10.0
    shutdown_delay: float = 0.5  # seconds NOT_SERVING is announced before the server stops accepting
    model_cache_size: int = 8
    registry_refresh_seconds: float = 2.0
    preload: str = ""  # comma-separated model refs to load and warm before reporting SERVING
    default_model: str = ""  # the model a request that names none gets (else each service's preference list)
    # Dynamic batching (captioning); a model's manifest "serving" section may override the defaults,
    # and these explicit overrides win over the manifest when set (> 0).
    max_batch_size: int = 0
    max_batch_delay_ms: float = -1.0
    # Caption decoding dtype ("float32" or "float64"; empty: the manifest's serving.decode_dtype, else
    # the model's own dtype). Decoding is batch-invariant in both.
    decode_dtype: str = ""
    reflection: bool = True
    # Mutual TLS: a CA bundle (PEM path); when set, the TLS server requires every client to present a
    # certificate signed by it (needs tls_cert and tls_key).
    tls_client_ca: str = ""
    # Streams (flow control): a streaming job computes at most stream_send_window messages ahead of
    # what gRPC has accepted for its client, and gives its job slot back while it waits; a stream
    # whose client accepts nothing for stream_stall_seconds is ended with ABORTED. A CaptionStream
    # reads its next item only while fewer than caption_stream_window of its items are in progress.
    stream_stall_seconds: float = 30.0
    stream_send_window: int = 2
    caption_stream_window: int = 32
    # Readiness: per-service health stays NOT_SERVING until the service's default model (or every model
    # of ``preload``) is loaded, golden-checked and warmed; ``""`` is liveness only.
    require_models: bool = False
    # Admission (models/imaging.py): image shapes refused from the header, and decoded-pixel budgets
    # (a decoded pixel is 4 bytes of decoder memory) per request and for the whole server.
    max_image_aspect: float = 32.0
    max_image_upscale: float = 32.0
    max_request_pixels: int = 192_000_000
    max_pixels_in_flight: int = 48_000_000
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
            for name, var in (("port", spec.port_env), ("metrics_port", spec.metrics_port_env)):
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
