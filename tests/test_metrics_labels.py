"""Metrics for dashboards: model and version labels, batch size once per batch, inferences vs
executions, the pending-queue gauge, process metrics and no ``_created`` series."""

from __future__ import annotations

import asyncio

import numpy as np
from prometheus_client import generate_latest
from registry_helpers import FEATURES, caption_request, publish_captioner, tiny_captioner

from pixelrpc.models.captioning.decoding import DecodeOptions
from pixelrpc.models.errors import CancelToken
from pixelrpc.services.captioning_batcher import BatchPolicy, ModelBatcher
from pixelrpc.services.decode_worker import ThreadEngine
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server
from pixelrpc.v1 import captioning_pb2_grpc

FAST = Settings(shutdown_delay=0.0, torch_threads=1, device="cpu", queue_depth=7)


def _decode_all(batcher: ModelBatcher, features: list[np.ndarray], options: DecodeOptions):
    async def main():
        return await asyncio.gather(*(batcher.decode(f, options, CancelToken()) for f in features))

    return asyncio.run(main())


def test_batch_size_is_observed_once_per_batch_not_per_step():
    batches, inferences = [], []
    engine = ThreadEngine()
    try:
        batcher = ModelBatcher(tiny_captioner(), policy=BatchPolicy(max_batch_size=8, max_delay_s=0.0),
                               engine=engine, observe_batch=batches.append, count_inferences=inferences.append)
        options = DecodeOptions(strategy="greedy", max_length=6)
        _decode_all(batcher, [FEATURES[0]], options)
        assert batcher.stats.steps > 1  # several decoding steps ...
        assert batches == [1] and sum(inferences) == 1  # ... one batch of one, one inference
        batches.clear()
        inferences.clear()
        steps_before = batcher.stats.steps
        _decode_all(batcher, FEATURES, options)  # three requests arriving together
    finally:
        engine.close()
    assert sum(inferences) == 3
    assert 1 <= len(batches) <= 3 and batches[0] == 3, batches  # a new batch only when its requests change
    assert len(batches) < batcher.stats.steps - steps_before


def test_model_labels_queue_gauge_process_metrics_and_no_created_series(registry):
    publish_captioner(registry, "tiny-captioner")
    with running_server(["captioning"], FAST, registry=registry) as srv:
        import grpc

        with grpc.insecure_channel(srv.address) as channel:
            stub = captioning_pb2_grpc.CaptioningServiceStub(channel)
            for k in range(3):
                stub.Caption(caption_request("tiny-captioner", k=k), timeout=30)
        reg = srv.ctx.metrics.registry
        labels = {"service": "captioning", "method": "Caption", "model": "tiny-captioner", "version": "1"}
        assert reg.get_sample_value("pixelrpc_requests_total", {**labels, "code": "OK"}) == 3
        assert reg.get_sample_value("pixelrpc_request_latency_seconds_count", labels) == 3
        assert reg.get_sample_value("pixelrpc_compute_seconds_count", labels) == 3
        model = {"service": "captioning", "model": "tiny-captioner", "version": "1"}
        assert reg.get_sample_value("pixelrpc_inference_total", model) == 3
        executions = reg.get_sample_value("pixelrpc_inference_exec_total", model)
        assert 1 <= executions <= 3
        assert reg.get_sample_value("pixelrpc_batch_size_count", model) == executions
        assert reg.get_sample_value("pixelrpc_queue_pending", {"service": "captioning"}) == 0
        assert reg.get_sample_value("pixelrpc_queue_capacity", {"service": "captioning"}) == 7
        assert reg.get_sample_value("process_resident_memory_bytes") > 0
        assert reg.get_sample_value("process_open_fds") > 0
        text = generate_latest(reg).decode()
        assert "_created" not in text
