"""Throughput of the visualization service: saliency maps and class-visualization steps.

Prints images/s of vanilla saliency at batch 1 and 16 on 224 x 224 inputs, and class-visualization
iterations/s, both in process (the domain functions) and through gRPC (a real server on loopback).
The model is SqueezeNet 1.1 with random weights (speed does not depend on the weights; nothing is
downloaded), unless --registry and --model name one to use.

    .venv/bin/python bench/visualization.py [--device cuda] [--repeats 3] [--iterations 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from pixelrpc.clients.visualization import VisualizationClient
from pixelrpc.models import visualization as vis
from pixelrpc.models import zoo
from pixelrpc.models.registry import ModelCache, Registry
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn, repeats: int, device: str) -> float:
    """Best wall time of ``repeats`` runs after one warm-up run, in seconds."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _png(seed: int, side: int = 224) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def in_process(model: zoo.ImageModel, args) -> dict:
    device = str(model.device)
    out = {}
    for batch in (1, 16):
        x = torch.randn(batch, 3, 224, 224, device=model.device)
        y = [0] * batch
        seconds = _best(lambda x=x, y=y, b=batch: vis.compute_saliency_maps(x, y, model, batch_size=b),
                        args.repeats, device)
        out[f"saliency images/s, batch {batch}"] = batch / seconds
    n = args.iterations

    def dream():
        vis.create_class_visualization(0, model, num_iterations=n, show_every=0, seed=0)

    out["class visualization iterations/s"] = n / _best(dream, args.repeats, device)
    return out


def through_grpc(registry: Registry, name: str, args) -> dict:
    settings = Settings(shutdown_delay=0.0, device=args.device, max_concurrency=args.concurrency,
                        worker_threads=args.concurrency, queue_depth=64, metrics_port=0)
    images = [_png(i) for i in range(16)]
    out = {}
    with running_server(["visualization"], settings, registry=registry) as srv, \
            VisualizationClient(srv.address, timeout=600) as client:
        client.saliency(images[0], target_class=0, model=name)  # load and warm the model
        seconds = _best(lambda: client.saliency(images[0], target_class=0, model=name), args.repeats, "cpu")
        out["saliency images/s, 1 call at a time"] = 1 / seconds
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            def burst():
                list(pool.map(lambda img: client.saliency(img, target_class=0, model=name), images))
            seconds = _best(burst, args.repeats, "cpu")
        out[f"saliency images/s, 16 concurrent calls (server concurrency {args.concurrency})"] = 16 / seconds
        n = args.iterations

        def dream():
            client.class_visualization(0, model=name, num_iterations=n, show_every=n, seed=0)

        out["class visualization iterations/s (streamed)"] = n / _best(dream, args.repeats, "cpu")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20, help="class-visualization steps per run")
    parser.add_argument("--concurrency", type=int, default=2, help="server max_concurrency for the gRPC run")
    parser.add_argument("--registry", default=None, help="use a model from this registry")
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.registry:
            registry = Registry(args.registry)
        else:
            registry = Registry(tmp)
            torch.manual_seed(0)
            zoo.publish_squeezenet(registry, args.model, zoo.build_squeezenet(1000).eval(),
                                   class_names=[f"class {i}" for i in range(1000)])
        model = ModelCache(registry, device=args.device).get(args.model).model
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(f"model {args.model}, device {args.device} ({device_name}), torch threads {torch.get_num_threads()}, "
              f"best of {args.repeats}")
        results = {"in process": in_process(model, args), "through gRPC": through_grpc(registry, args.model, args)}
    for where, numbers in results.items():
        print(f"== {where}")
        for label, value in numbers.items():
            print(f"  {label:<66} {value:10.2f}")


if __name__ == "__main__":
    main()
