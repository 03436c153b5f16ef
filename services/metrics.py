"""Prometheus metrics, one collector registry per server so several servers share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pixelrpc_requests", "RPCs handled, by service, method and status code",
            ["service", "method", "code"], registry=self.registry)
        self.latency = Histogram(
            "pixelrpc_request_latency_seconds", "RPC latency from arrival to last message",
            ["service", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_time = Histogram(
            "pixelrpc_queue_seconds", "Time a job waited for an executor slot",
            ["service"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "pixelrpc_in_flight_requests", "RPCs being handled now", ["service"], registry=self.registry)
        self.model_load = Histogram(
            "pixelrpc_model_load_seconds", "Time to read, verify and load a model",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(
            "pixelrpc_batch_size", "Requests decoded together by dynamic batching",
            ["service"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.golden_failures = Counter(
            "pixelrpc_golden_failures", "Model versions that failed their golden examples after loading "
            "(not swapped in; the previous default keeps serving)", ["model"], registry=self.registry)
        self.registry_up = Gauge(
            "pixelrpc_registry_up", "1 while the registry folder is readable, 0 when it is gone, empty "
            "after holding models, or unreadable", registry=self.registry)
        self.service_ready = Gauge(
            "pixelrpc_service_ready", "1 when the service's required models are loaded and warmed",
            ["service"], registry=self.registry)

    def serve_http(self, port: int, host: str = "127.0.0.1"):
        """Expose /metrics on ``port`` (0 picks a free port). Returns (server, bound_port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_address[1]
