"""Bounded soak: 64 caption clients and 8 visualization clients against real services, for N seconds.

Starts the captioning and visualization services as ``pixelrpc serve`` subprocesses on loopback, then
runs, in this process (asyncio, grpc.aio), ``--caption-clients`` callers of ``Caption`` (feature
vectors of the captioner's input dimension; every ``--image-every``-th client sends PNG scenes
instead, which go through the pinned encoder) and ``--vis-clients`` callers alternating ``Classify``
and ``Saliency``. Each caller sends one request at a time, back to back.

Every ``--interval`` seconds it prints the requests of the interval per service, the errors so far by
status code, the interval's p50/p99 latency and each server's RSS (``/proc/<pid>/status``); at the end
a summary with totals, overall p50/p99 and peak RSS (VmHWM). It stops by itself and exits non-zero
when a server died or no request succeeded. Not part of ``make test`` (``tests/test_bench_smoke.py``
runs it for a few seconds).

    python bench/soak.py [--seconds 60] [--registry DIR] [--caption-clients 64] [--vis-clients 8]

Without ``--registry`` (or ``PIXELRPC_REGISTRY``) it bootstraps the quick default models into a
temporary folder first (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from procfs import status_kib

CAPTION, VISUALIZATION = "captioning", "visualization"
CALL_TIMEOUT = 30.0


@dataclass
class Tally:
    """Latencies and status codes of one service, for the current interval and the whole run."""

    interval_ms: list[float] = field(default_factory=list)
    all_ms: list[float] = field(default_factory=list)
    requests: int = 0
    interval_requests: int = 0
    codes: Counter = field(default_factory=Counter)

    def record(self, ms: float, code: grpc.StatusCode) -> None:
        self.requests += 1
        self.interval_requests += 1
        self.codes[code.name] += 1
        if code == grpc.StatusCode.OK:
            self.interval_ms.append(ms)
            self.all_ms.append(ms)

    def take_interval(self) -> tuple[int, list[float]]:
        n, ms = self.interval_requests, self.interval_ms
        self.interval_requests, self.interval_ms = 0, []
        return n, ms

    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.codes.items()) if k != "OK"}


def percentiles(ms: list[float]) -> str:
    if not ms:
        return "p50     -   p99     -"
    p50, p99 = np.percentile(ms, [50, 99])
    return f"p50 {p50:5.0f}   p99 {p99:5.0f}"


def scenes(n: int) -> list[bytes]:
    """PNG scenes of the generated shapes world (what the default models were trained on)."""
    from PIL import Image

    from pixelrpc.models.data import shapes

    out = []
    for scene in shapes.iter_scenes(2024, n, 64):
        buf = io.BytesIO()
        Image.fromarray(scene.image).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def quick_registry(folder: Path) -> Path:
    from pixelrpc.models.bootstrap import QUICK, Bootstrap
    from pixelrpc.models.registry import Registry

    root = folder / "registry"
    print(f"no --registry: bootstrapping the quick default models into {root} (a few minutes)", flush=True)
    start = time.perf_counter()
    for _event in Bootstrap(Registry(root), QUICK).run():
        pass
    print(f"bootstrapped in {time.perf_counter() - start:.0f} s", flush=True)
    return root


async def caption_client(i: int, channel, stop: float, tally: Tally, dim: int, images: list[bytes],
                         image_every: int) -> None:
    from pixelrpc.v1 import captioning_pb2 as cpb
    from pixelrpc.v1 import captioning_pb2_grpc as cgrpc
    from pixelrpc.v1 import common_pb2

    stub = cgrpc.CaptioningServiceStub(channel)
    rng = np.random.default_rng(i)
    with_images = image_every > 0 and i % image_every == 0
    n = 0
    while time.monotonic() < stop:
        if with_images:
            job = cpb.CaptionJob(image=common_pb2.Image(data=images[(i + n) % len(images)]))
        else:
            vector = np.abs(rng.standard_normal(dim)).astype(np.float32)
            job = cpb.CaptionJob(features=common_pb2.Tensor(shape=[dim], dtype="float32", data=vector.tobytes()))
        if n % 8 == 7:
            job.options.CopyFrom(cpb.CaptionOptions(strategy=cpb.DECODING_STRATEGY_BEAM, beam_width=3))
        await timed(tally, stub.Caption(cpb.CaptionRequest(job=job), timeout=CALL_TIMEOUT))
        n += 1


async def visualization_client(i: int, channel, stop: float, tally: Tally, images: list[bytes]) -> None:
    from pixelrpc.v1 import common_pb2
    from pixelrpc.v1 import visualization_pb2 as vpb
    from pixelrpc.v1 import visualization_pb2_grpc as vgrpc

    stub = vgrpc.VisualizationServiceStub(channel)
    n = 0
    while time.monotonic() < stop:
        image = common_pb2.Image(data=images[(i + n) % len(images)])
        if n % 2 == 0:
            call = stub.Classify(vpb.ClassifyRequest(images=[image], top_k=3), timeout=CALL_TIMEOUT)
        else:
            call = stub.Saliency(vpb.SaliencyRequest(image=image), timeout=CALL_TIMEOUT)
        await timed(tally, call)
        n += 1


async def timed(tally: Tally, call) -> None:
    start = time.perf_counter()
    try:
        await call
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    tally.record((time.perf_counter() - start) * 1000.0, code)


async def input_dim(channel, images: list[bytes], registry_root: Path) -> int:
    """The input dimension of the captioner the service picks for requests that name none."""
    from pixelrpc.models.registry import Registry
    from pixelrpc.v1 import captioning_pb2 as cpb
    from pixelrpc.v1 import captioning_pb2_grpc as cgrpc
    from pixelrpc.v1 import common_pb2

    stub = cgrpc.CaptioningServiceStub(channel)
    response = await stub.Caption(cpb.CaptionRequest(job=cpb.CaptionJob(image=common_pb2.Image(data=images[0]))),
                                  timeout=120)
    meta = response.result.meta
    return int(Registry(registry_root).resolve(meta.model_name, meta.model_version).metadata["input_dim"])


async def soak(args, suite, registry_root: Path) -> dict:
    from pixelrpc.clients.base import DEFAULT_MAX_MESSAGE_BYTES

    options = [("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES)]
    cap_channel = grpc.aio.insecure_channel(suite.address(CAPTION), options=options)
    vis_channel = grpc.aio.insecure_channel(suite.address(VISUALIZATION), options=options)
    images = scenes(16)
    dim = await input_dim(cap_channel, images, registry_root)
    pids = {name: svc.process.pid for name, svc in suite.services.items()}
    tallies = {CAPTION: Tally(), VISUALIZATION: Tally()}
    print(f"soak: {args.caption_clients} caption clients (1 in {args.image_every} with images, D={dim}), "
          f"{args.vis_clients} visualization clients (Classify/Saliency), {args.seconds:.0f} s, "
          f"report every {args.interval:.0f} s", flush=True)
    start = time.monotonic()
    stop = start + args.seconds
    workers = [asyncio.create_task(caption_client(i, cap_channel, stop, tallies[CAPTION], dim, images,
                                                  args.image_every)) for i in range(args.caption_clients)]
    workers += [asyncio.create_task(visualization_client(i, vis_channel, stop, tallies[VISUALIZATION], images))
                for i in range(args.vis_clients)]
    peak = {name: 0 for name in pids}
    last = start

    def report() -> None:
        nonlocal last
        now = time.monotonic()
        span = max(now - last, 1e-9)
        last = now
        parts = [f"t={now - start:5.1f}s"]
        for name, tally in tallies.items():
            n, ms = tally.take_interval()
            errors = tally.errors()
            parts.append(f"{name[:3]}: {n:5d} req ({n / span:6.1f}/s, total {tally.requests}) {percentiles(ms)} ms "
                         f"errors {dict(errors) if errors else 0}")
        for name, pid in pids.items():
            status = status_kib(pid)
            peak[name] = max(peak[name], status.get("VmHWM", 0), status.get("VmRSS", 0))
            parts.append(f"rss[{name[:3]}] {status.get('VmRSS', 0) / 1024:6.0f} MiB")
        print(" | ".join(parts), flush=True)

    while True:
        remaining = stop - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(args.interval, remaining))
        if time.monotonic() < stop - 0.05:
            report()
    done, pending = await asyncio.wait(workers, timeout=CALL_TIMEOUT + 5)
    for task in pending:
        task.cancel()
    report()
    elapsed = time.monotonic() - start
    await cap_channel.close()
    await vis_channel.close()
    for name, pid in pids.items():
        peak[name] = max(peak[name], status_kib(pid).get("VmHWM", 0))
    failures = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    return {"tallies": tallies, "elapsed": elapsed, "peak_kib": peak, "client_failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the clients run")
    parser.add_argument("--registry", default=os.environ.get("PIXELRPC_REGISTRY") or None,
                        help="registry with the default models (else a quick bootstrap in a temp folder)")
    parser.add_argument("--caption-clients", type=int, default=64)
    parser.add_argument("--vis-clients", type=int, default=8)
    parser.add_argument("--image-every", type=int, default=4, help="one caption client in N sends images (0: none)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between reports")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per server")
    parser.add_argument("--logs", default=None, help="folder for the servers' logs (default: a temp folder)")
    args = parser.parse_args()

    from pixelrpc.cli.launcher import start_suite

    with tempfile.TemporaryDirectory(prefix="pixelrpc-soak-") as tmp:
        registry_root = Path(args.registry) if args.registry else quick_registry(Path(tmp))
        logs = Path(args.logs) if args.logs else Path(tmp) / "logs"
        threads = str(args.threads)
        from pixelrpc.models.registry import Registry

        # Warm the default models before SERVING so that the numbers are not a cold start's.
        preload = [n for n in ("shapes-squeezenet", "shapes-captioner") if n in Registry(registry_root).names()]
        env = {"PIXELRPC_PRELOAD": ",".join(preload), "PIXELRPC_TORCH_THREADS": threads, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "PIXELRPC_DEVICE": os.environ.get("PIXELRPC_DEVICE", "cpu"), "PIXELRPC_LOG_LEVEL": "WARNING",
               "PIXELRPC_QUEUE_DEPTH": os.environ.get("PIXELRPC_QUEUE_DEPTH", "64")}
        suite = start_suite(registry_root, logs, services=(CAPTION, VISUALIZATION), extra_env=env)
        codes: dict[str, int] = {}
        try:
            suite.wait_healthy(timeout=180)
            result = asyncio.run(soak(args, suite, registry_root))
        finally:
            codes = suite.stop()
        return summarize(result, codes)


def summarize(result: dict, exit_codes: dict[str, int]) -> int:
    tallies: dict[str, Tally] = result["tallies"]
    print("\nsummary")
    print(f"  ran {result['elapsed']:.1f} s")
    ok_total = 0
    for name, tally in tallies.items():
        ok = tally.codes.get("OK", 0)
        ok_total += ok
        print(f"  {name:13s} requests {tally.requests:6d}  ok {ok:6d}  ({ok / result['elapsed']:.1f}/s)  "
              f"{percentiles(tally.all_ms)} ms  errors {tally.errors() or 0}")
    for name, kib in result["peak_kib"].items():
        print(f"  {name:13s} peak RSS {kib / 1024:.0f} MiB")
    print(f"  server exit codes {exit_codes}")
    for exc in result["client_failures"]:
        print(f"  client task failed: {exc!r}")
    healthy = all(code == 0 for code in exit_codes.values()) and not result["client_failures"]
    return 0 if healthy and ok_total > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
