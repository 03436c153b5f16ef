"""All torch work of a server runs on its one torch thread (issue 11, target 3).

An OpenMP pool started by any other thread (a control thread loading a model, a warm-up) competes
with the torch thread's pool for the same cores: a SqueezeNet forward took 1.7x as long afterwards
(bench/visualization.py). So model loads, golden runs and warm-ups go through the torch executor.
"""

from __future__ import annotations

import threading

import numpy as np

from pixelrpc.clients.visualization import VisualizationClient
from pixelrpc.models.registry import cache as cache_module
from pixelrpc.services.runtime import compute_runner, torch_executor
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server


def test_compute_runner_runs_on_the_executor_and_inline_there():
    executor = torch_executor(1, "torch-test")
    run = compute_runner(executor)
    try:
        assert run(lambda: threading.current_thread().name).startswith("torch-test")
        # from the torch thread itself: at once (no deadlock waiting for its own executor)
        nested = executor.submit(lambda: run(lambda: threading.current_thread().name)).result(10)
        assert nested.startswith("torch-test")
    finally:
        executor.shutdown()


def test_model_loads_and_warmups_run_on_the_torch_thread(quick_bootstrap, monkeypatch):
    seen: list[tuple[str, str]] = []
    load_model = cache_module.load_model

    def recording_load(registry, manifest, device):
        seen.append(("load", threading.current_thread().name))
        return load_model(registry, manifest, device)

    monkeypatch.setattr(cache_module, "load_model", recording_load)
    from pixelrpc.services import visualization

    warmup = visualization.warmup

    def recording_warmup(ctx, loaded):
        seen.append(("warmup", threading.current_thread().name))
        return warmup(ctx, loaded)

    monkeypatch.setattr(visualization, "warmup", recording_warmup)
    settings = Settings(preload="shapes-squeezenet", require_models=True)
    with running_server(["visualization"], settings, registry=quick_bootstrap.registry) as server, \
            VisualizationClient(server.address, timeout=30) as client:
        img = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
        from PIL import Image

        assert client.classify(Image.fromarray(img), model="shapes-squeezenet").results
    kinds = {kind for kind, _ in seen}
    assert kinds == {"load", "warmup"}, seen
    assert all(name.startswith("torch") for _, name in seen), seen
