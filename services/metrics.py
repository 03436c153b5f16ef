"""Prometheus metrics, one collector registry per server so several servers share a process.

Names and labels are documented in docs/observability.md; the Grafana dashboard and the alert
rules in deploy/ use them (tests/test_dashboards.py checks that every name they use is exported).
Request, latency and compute metrics carry ``model`` and ``version`` (empty for calls that use no
model, e.g. ListModels): model names come from the registry, never from a request that failed to
resolve one, so their number is bounded by the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

# No ``*_created`` series: they double the series count and no dashboard uses them.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
MODEL_LABELS = ("model", "version")


def split_ref(ref: str) -> tuple[str, str]:
    """``"name:3"`` -> ``("name", "3")``; ``""`` -> ``("", "")`` (a call that used no model)."""
    name, _, version = (ref or "").partition(":")
    return name, version


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # CPU seconds, resident and virtual memory, open and max file descriptors, start time
        # (process_*), read from /proc: the same names every Prometheus client library exports.
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "pixelrpc_requests", "RPCs handled, by service, method, status code and model",
            ["service", "method", "code", *MODEL_LABELS], registry=self.registry)
        self.latency = Histogram(
            "pixelrpc_request_latency_seconds", "RPC latency from arrival to last message",
            ["service", "method", *MODEL_LABELS], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.compute = Histogram(
            "pixelrpc_compute_seconds", "Time an RPC spent computing (executor work: decoding, the model, "
            "encoding; batched caption decoding counts the steps the call took part in)",
            ["service", "method", *MODEL_LABELS], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_time = Histogram(
            "pixelrpc_queue_seconds", "Time a job waited for an executor slot",
            ["service"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_pending = Gauge(
            "pixelrpc_queue_pending", "Work waiting now: calls queued for a job slot plus captions "
            "waiting for a batch", ["service"], registry=self.registry)
        self.queue_capacity = Gauge(
            "pixelrpc_queue_capacity", "Calls that may wait for a job slot before new ones are refused "
            "(queue_depth)", ["service"], registry=self.registry)
        self.in_flight = Gauge(
            "pixelrpc_in_flight_requests", "RPCs being handled now", ["service"], registry=self.registry)
        self.model_load = Histogram(
            "pixelrpc_model_load_seconds", "Time to read, verify and load a model",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(
            "pixelrpc_batch_size", "Requests decoded together by dynamic batching, once per batch (a run "
            "of decoding steps over the same requests)",
            ["service", *MODEL_LABELS], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        # Triton's nv_inference_count / nv_inference_exec_count: inferences / executions is the
        # average number of requests one model execution served (1.0: no batching at all).
        # Every service counts both, whatever the door (native gRPC, Open Inference Protocol over gRPC
        # or REST, JSON): a call over N images is N inferences in 1 execution, a job (style, fooling
        # image, class visualization, caption explanation) is 1 and 1, captions count per batch.
        self.inferences = Counter(
            "pixelrpc_inference", "Inferences done: one per image classified or explained, caption "
            "decoded, or optimisation job finished", ["service", *MODEL_LABELS], registry=self.registry)
        self.executions = Counter(
            "pixelrpc_inference_exec", "Model executions that did them (a job run over a request's "
            "images, a batched caption decode run)", ["service", *MODEL_LABELS], registry=self.registry)
        self.golden_failures = Counter(
            "pixelrpc_golden_failures", "Model versions that failed their golden examples after loading "
            "(not swapped in; the previous default keeps serving)", ["model"], registry=self.registry)
        self.registry_up = Gauge(
            "pixelrpc_registry_up", "1 while the registry folder is readable, 0 when it is gone, empty "
            "after holding models, or unreadable", registry=self.registry)
        self.service_ready = Gauge(
            "pixelrpc_service_ready", "1 when the service's required models are loaded and warmed",
            ["service"], registry=self.registry)

    def watch_queue(self, service: str, pending: Callable[[], float], capacity: int) -> None:
        """Report ``pending()`` (read at scrape time) and the queue's capacity for ``service``."""
        self.queue_pending.labels(service).set_function(pending)
        self.queue_capacity.labels(service).set(capacity)

    def count_execution(self, service: str, ref: str, inferences: int = 1) -> None:
        """One execution of model ``ref`` that made ``inferences`` inferences (``Call.executed``)."""
        labels = (service, *split_ref(ref))
        self.executions.labels(*labels).inc()
        self.inferences.labels(*labels).inc(inferences)

    def batch_observer(self, service: str, ref: str) -> tuple[Callable[[int], None], Callable[[int], None]]:
        """``(on_batch(size), on_inferences(n))`` for one model's batcher: a batch is one execution."""
        labels = (service, *split_ref(ref))
        sizes, executions, inferences = (self.batch_size.labels(*labels), self.executions.labels(*labels),
                                         self.inferences.labels(*labels))

        def on_batch(size: int) -> None:
            sizes.observe(size)
            executions.inc()

        return on_batch, inferences.inc

    def serve_http(self, port: int, host: str = "127.0.0.1"):
        """Expose /metrics on ``port`` (0 picks a free port). Returns (server, bound_port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_address[1]
