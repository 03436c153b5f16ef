"""The visualization service against the in-process / notebook-style loops it serves (issue 11, targets 3-4).

A real ``pixelrpc serve visualization`` subprocess (CPU unless --device) and the references it is
compared with, run in a second process of their own (torch only, like the server; this process is the
gRPC client), interleaved (reference, served, reference, ...), median of --repeats:

- Classify, 1 client: p50 over gRPC vs the in-process forward of the same model as the notebook
  holds it (NCHW) (target <= 1.3); and, reported, vs the in-process forward in the layout the server
  keeps (channels-last on CPU, ``zoo.memory_format_for``): the serving overhead alone.
  The notebook-style references (every loop here) run the NCHW network.
- Saliency, one image (tensor only, the default): p50 over gRPC vs the CS231n notebook loop
  (forward, gather, backward, |grad| max over channels) (target <= 1.3); with PNGs requested it is
  printed, not targeted.
- FoolingImage and ClassVisualization, per step: the steady interval between streamed progress
  messages vs the notebook's step loop (target <= 1.15).
- Classify with 4 concurrent clients: p99 / p50 (target <= 3: no stalls).

The model is SqueezeNet 1.1 at 224 px with random weights published into a temporary registry (speed
does not depend on the weights; nothing is downloaded) unless --registry and --model name one.
Torch threads: --threads, default ``pixelrpc.services.settings.default_torch_threads()`` (the CPUs
this process may use, at most 4), the same number for the server and the references. --server-env
passes settings to the server, e.g. ``PIXELRPC_WORKER_THREADS=2`` for the executor before issue 11.

    flock /tmp/bench.lock .venv/bin/python bench/visualization.py [--repeats 3] [--calls 30]
    .venv/bin/python bench/visualization.py --smoke --registry REG --model shapes-squeezenet
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results import REPORT, record

from pixelrpc.clients.visualization import VisualizationClient
from pixelrpc.models import zoo
from pixelrpc.models.registry import ModelCache, Registry
from pixelrpc.models.visualization.class_visualization import gaussian_blur, jitter
from pixelrpc.models.visualization.options import ClassVisualizationOptions
from pixelrpc.services.settings import default_torch_threads

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _png(seed: int, side: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---------------------------------------------------------------------- references (in process)
def ref_forward(model, x, calls: int, device: str) -> float:
    """Median ms of one no-grad forward of x (1, 3, S, S)."""
    times = []
    with torch.no_grad():
        for _ in range(calls):
            start = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def ref_saliency(model, x, y: int, calls: int, device: str) -> float:
    """Median ms of the CS231n compute_saliency_maps loop for one image."""
    net = model.net
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        xi = x.clone().requires_grad_(True)
        scores = net(xi)
        scores.gather(1, torch.tensor([[y]], device=x.device)).squeeze().sum().backward()
        xi.grad.abs().max(dim=1)[0].cpu()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def ref_fooling(model, x, target: int, steps: int, device: str, lr: float) -> float:
    """ms per step of the notebook's fooling loop (forward, argmax check, backward, normalised step)."""
    net = model.net
    xf = x.clone()
    start = time.perf_counter()
    for _ in range(steps):
        xf.requires_grad_(True)
        scores = net(xf)
        if int(scores.argmax(1)) == target:
            pass  # the notebook stops here; the benchmark's learning rate keeps both running
        scores[0, target].backward()
        g = xf.grad
        with torch.no_grad():
            xf = (xf + lr * g / g.norm()).detach()
    _sync(device)
    return (time.perf_counter() - start) * 1000 / steps


def ref_class_vis(model, side: int, target: int, steps: int, device: str, seed: int = 0) -> float:
    """ms per step of the notebook's class-visualization loop (jitter, ascent, unjitter, clamp, blur)."""
    net = model.net
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn((1, 3, side, side), generator=gen).to(model.device)
    lo, hi = model.pixel_bounds()
    o = ClassVisualizationOptions()  # the service's defaults
    max_jitter, lr, l2_reg = o.jitter(side), o.learning_rate, o.l2_reg
    start = time.perf_counter()
    for t in range(steps):
        ox, oy = (int(v) for v in torch.randint(0, max_jitter + 1, (2,), generator=gen))
        moved = jitter(img, ox, oy).requires_grad_(True)
        score = net(moved)[0, target] - l2_reg * (moved ** 2).sum()
        score.backward()
        with torch.no_grad():
            moved = moved + lr * moved.grad / moved.grad.norm()
            img = torch.maximum(torch.minimum(jitter(moved, -ox, -oy), hi), lo)
            if t % o.blur_every == 0:
                img = gaussian_blur(img, o.blur_sigma)
    _sync(device)
    return (time.perf_counter() - start) * 1000 / steps


def _reference_worker(conn, registry: str, name: str, device: str, threads: int, png: bytes) -> None:
    """A process of its own for the references (torch only: no gRPC threads beside it, as in the server)."""
    torch.set_num_threads(threads)
    model = ModelCache(Registry(registry), device=device).get(name).model
    served = model.net  # in the layout the server keeps (channels-last on CPU: zoo.memory_format_for)
    model.net = copy.deepcopy(served).to(memory_format=torch.contiguous_format)  # the notebook's NCHW network
    x = model.preprocess([Image.open(io.BytesIO(png)).convert("RGB")]).to(model.device)
    funcs = {"forward": lambda calls: ref_forward(model, x, calls, device),
             "forward_served_layout": lambda calls: ref_forward(dataclasses.replace(model, net=served), x, calls,
                                                                device),
             "saliency": lambda target, calls: ref_saliency(model, x, target, calls, device),
             "fooling": lambda target, steps, lr: ref_fooling(model, x, target, steps, device, lr),
             "class_vis": lambda target, steps: ref_class_vis(model, model.input_size, target, steps, device)}
    conn.send(model.input_size)
    while True:
        request = conn.recv()
        if request is None:
            return
        fn, args = request
        conn.send(funcs[fn](*args))


class References:
    """The notebook-style loops, run in a separate process: ``refs.forward(calls)`` etc. return ms."""

    def __init__(self, registry: str, name: str, device: str, threads: int, png: bytes):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_reference_worker, args=(child, registry, name, device, threads, png),
                                daemon=True)
        self.proc.start()
        self.input_size = self.conn.recv()

    def __getattr__(self, fn):
        def call(*args):
            self.conn.send((fn, args))
            return self.conn.recv()
        return call

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(30)


# ---------------------------------------------------------------------- served
def timed_calls(fn, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def step_interval(messages) -> float:
    """ms per step from a stream's progress messages: (last - second) / steps between (skips warm-up)."""
    stamps = []
    for message in messages:
        stamps.append(time.perf_counter())
        if message.HasField("result"):
            stamps.pop()
    if len(stamps) < 3:
        raise RuntimeError(f"only {len(stamps)} progress messages")
    return (stamps[-1] - stamps[1]) * 1000 / (len(stamps) - 2)


class Server:
    """``pixelrpc serve visualization`` on a free loopback port, torch threads as the references."""

    def __init__(self, registry: str, threads: int, device: str, extra_env: dict[str, str]):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "PIXELRPC_REGISTRY": registry, "PIXELRPC_HOST": "127.0.0.1",
               "PIXELRPC_PORT": str(self.port), "PIXELRPC_METRICS_PORT": "0", "PIXELRPC_HTTP_PORT": "-1", "PIXELRPC_DEVICE": device,
               "PIXELRPC_TORCH_THREADS": str(threads), "PIXELRPC_LOG_LEVEL": "WARNING",
               "PIXELRPC_SHUTDOWN_DELAY": "0", "PIXELRPC_MAX_ITERATIONS": "10000", **extra_env}
        self.proc = subprocess.Popen([sys.executable, "-m", "pixelrpc.cli", "serve", "visualization"],
                                     env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.address = f"127.0.0.1:{self.port}"

    def wait(self, client: VisualizationClient, model: str, png: bytes) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                client.classify(png, model=model, timeout=30)
                return
            except Exception:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {self.proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30, help="calls per repeat (classify, saliency)")
    parser.add_argument("--steps", type=int, default=20, help="fooling / class-visualization steps per repeat")
    parser.add_argument("--load-calls", type=int, default=40, help="calls per client at load 4")
    parser.add_argument("--registry", default=None, help="use a model from this registry")
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default_torch_threads())")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the server, e.g. PIXELRPC_WORKER_THREADS=2 (the old executor)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (make test); numbers meaningless")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.calls, args.steps, args.load_calls = 1, 3, 4, 3
    threads = args.threads or default_torch_threads()
    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.registry:
            registry = Registry(args.registry)
        else:
            registry = Registry(tmp)
            torch.manual_seed(0)
            zoo.publish_squeezenet(registry, args.model, zoo.build_squeezenet(1000).eval(),
                                   class_names=[f"class {i}" for i in range(1000)])
        png = _png(0, zoo_side(registry, args.model))
        print(f"model {args.model} ({'random weights' if not args.registry else args.registry}), "
              f"device {args.device}, torch threads {threads} (server and references, each in its own process), "
              f"median of {args.repeats} interleaved repeats", flush=True)
        refs = References(str(registry.root), args.model, args.device, threads, png)
        extra_env = dict(item.split("=", 1) for item in args.server_env)
        if extra_env:
            print(f"server environment: {extra_env}", flush=True)
        server = Server(str(registry.root), threads, args.device, extra_env)
        try:
            with VisualizationClient(server.address, timeout=600) as client:
                server.wait(client, args.model, png)
                run(client, refs, png, threads, args)
        finally:
            server.stop()
            refs.close()


def zoo_side(registry: Registry, name: str) -> int:
    """The model's input size (this process runs no model)."""
    return int(ModelCache(registry, device="cpu").get(name).model.input_size)


def run(client: VisualizationClient, refs: References, png: bytes, threads: int, args) -> None:
    device, name, n, side = args.device, args.model, args.steps, refs.input_size
    target = 1
    lr = 1e-4  # small enough that the fooling run takes every step on any weights
    # warm both sides
    refs.forward(3)
    refs.saliency(target, 3)
    for _ in range(3):
        client.classify(png, model=name)
        client.saliency(png, target_class=target, model=name)
    cls_ref, cls_srv, sal_ref, sal_srv, sal_png, fool_ref, fool_srv, dream_ref, dream_srv = ([] for _ in range(9))
    cls_layout = []
    for _ in range(args.repeats):
        cls_ref.append(refs.forward(args.calls))
        cls_layout.append(refs.forward_served_layout(args.calls))
        cls_srv.append(_pct(timed_calls(lambda: client.classify(png, model=name), args.calls), 50))
        sal_ref.append(refs.saliency(target, args.calls))
        sal_srv.append(_pct(timed_calls(lambda: client.saliency(png, target_class=target, model=name),
                                        args.calls), 50))
        sal_png.append(_pct(timed_calls(lambda: client.saliency(png, target_class=target, model=name,
                                                                render_images=True), args.calls), 50))
        fool_ref.append(refs.fooling(target, n, lr))
        fool_srv.append(step_interval(client.fooling_image_stream(png, target, model=name, learning_rate=lr,
                                                                  max_iterations=n)))
        dream_ref.append(refs.class_vis(target, n))
        dream_srv.append(step_interval(client.class_visualization_stream(
            target, model=name, num_iterations=n, show_every=n, seed=0)))
    med = statistics.median
    tag = f"{name} {side}px, {device}, torch threads {threads}"
    record(f"Classify p50, 1 client ({tag})", "in-process forward (median)", med(cls_ref), med(cls_srv), "ms",
           med(cls_srv) / med(cls_ref), "<= 1.3")
    record(f"Classify p50, 1 client ({tag})", "in-process forward in the served layout (median)", med(cls_layout),
           med(cls_srv), "ms", med(cls_srv) / med(cls_layout), REPORT)
    record(f"Saliency p50, tensor only ({tag})", "notebook saliency loop (median)", med(sal_ref), med(sal_srv),
           "ms", med(sal_srv) / med(sal_ref), "<= 1.3")
    print(f"  (saliency with the three PNGs requested: p50 {med(sal_png):.1f} ms, "
          f"{med(sal_png) / med(sal_ref):.2f}x the notebook loop)", flush=True)
    record(f"FoolingImage per step ({tag})", "notebook fooling loop", med(fool_ref), med(fool_srv), "ms/step",
           med(fool_srv) / med(fool_ref), "<= 1.15")
    record(f"ClassVisualization per step ({tag})", "notebook class-visualization loop", med(dream_ref),
           med(dream_srv), "ms/step", med(dream_srv) / med(dream_ref), "<= 1.15")

    def one_client(_):
        return timed_calls(lambda: client.classify(png, model=name), args.load_calls)

    ratios, p50s, p99s = [], [], []
    for _ in range(args.repeats):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            latencies = [t for ts in pool.map(one_client, range(4)) for t in ts]
        p50s.append(_pct(latencies, 50))
        p99s.append(_pct(latencies, 99))
        ratios.append(p99s[-1] / p50s[-1])
    record(f"Classify at 4 concurrent clients, p99/p50 ({tag})", "p50 of the same run", med(p50s), med(p99s),
           "ms", med(ratios), "<= 3")


if __name__ == "__main__":
    main()
