"""Captioning speed: training steps, greedy decoding throughput, and gRPC throughput with batching.

Prints:
1. one training step (loss forward + backward) for N=50, T=16, D=512, W=256, H=512, V=1004, for the
   RNN and the LSTM (float32, median of repeats);
2. greedy decoding throughput (captions/s, 16 tokens each: <END> is suppressed so every caption has
   full length) at batch 1, 32 and 256, in process, in the float64 the service decodes in (batch
   invariance) and, for comparison, in float32;
3. gRPC throughput with 64 concurrent single-caption clients (asyncio, one Caption call at a time
   each), against a server subprocess with dynamic batching (max batch 64) and without it
   (max_batch_size 1: each request decoded alone in the executor), as ratios to in-process batched
   decoding of 64 captions at once.

    python bench/captioning.py [--cell lstm] [--seconds 4] [--threads 1]
"""

from __future__ import annotations

import os
import sys


def _threads_argument() -> str:
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


# BLAS reads its thread count when numpy loads, so set it before the imports below.
os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads_argument())

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

N, T, D, W, H, V = 50, 16, 512, 256, 512, 1004
LENGTH = 16


def vocab() -> dict[str, int]:
    return {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3} | {f"w{i}": i for i in range(4, V)}


def make_model(cell: str, seed: int = 0, full_length: bool = True):
    from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN

    model = CaptioningRNN(vocab(), input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell, seed=seed)
    if full_length:
        model.params["b_vocab"][2] = -1e4  # never <END>: every caption has LENGTH tokens
    return model


def training_step_ms(cell: str, repeats: int) -> float:
    model = make_model(cell, full_length=False)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((N, D)).astype(np.float32)
    captions = rng.integers(3, V, size=(N, T + 1))
    captions[:, 0] = 1
    model.loss(features, captions)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.loss(features, captions)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def decode_throughput(model, batch: int, min_seconds: float = 1.0, dtype=np.float64) -> float:
    from pixelrpc.models.captioning.decoding import DecodeOptions, decode_batch

    rng = np.random.default_rng(1)
    features = rng.standard_normal((batch, D)).astype(np.float32)
    options = [DecodeOptions(max_length=LENGTH)] * batch
    decode_batch(model, features[:1], options[:1], dtype=dtype)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        decode_batch(model, features, options, dtype=dtype)
        done += batch
    return done / (time.perf_counter() - start)


SERVER = textwrap.dedent("""
    import asyncio, sys
    from pixelrpc.services.server import create_server, serve_until_signal
    from pixelrpc.services.settings import Settings

    async def main():
        settings = Settings.from_env(port=0, registry=sys.argv[1], metrics_port=0, shutdown_delay=0.0,
                                     max_batch_size=int(sys.argv[2]), max_batch_delay_ms=2.0,
                                     queue_depth=64, max_concurrency=2, worker_threads=2, log_level="WARNING")
        server, port = await create_server(["captioning"], settings)
        await server.start()
        print(f"PORT {port}", flush=True)
        return await serve_until_signal([server])

    sys.exit(asyncio.run(main()))
""")


async def _load(address: str, clients: int, seconds: float) -> float:
    from pixelrpc.clients.captioning import AsyncCaptioningClient

    rng = np.random.default_rng(2)
    inputs = rng.standard_normal((clients, D)).astype(np.float32)
    async with AsyncCaptioningClient(address, timeout=60) as client:
        await client.caption(inputs[0], model="bench", max_length=LENGTH)  # load the model
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(i):
            nonlocal done
            while time.perf_counter() < stop:
                await client.caption(inputs[i], model="bench", max_length=LENGTH)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        return done / (time.perf_counter() - start)


def grpc_throughput(registry_dir: str, max_batch_size: int, clients: int, seconds: float, threads: int) -> float:
    env = {**os.environ, "PIXELRPC_DEVICE": "cpu", "OPENBLAS_NUM_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, registry_dir, str(max_batch_size)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(line + proc.stderr.read())
        return asyncio.run(_load(f"127.0.0.1:{int(line.split()[1])}", clients, seconds))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=["rnn", "lstm"], default="lstm", help="cell of the decoding benchmarks")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each gRPC load run")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (set before numpy loads)")
    args = parser.parse_args()

    print(f"captioning benchmark: numpy, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
          f"{os.cpu_count()} CPUs")
    print(f"\n1. training step (loss + gradients), N={N} T={T} D={D} W={W} H={H} V={V}, float32")
    for cell in ("rnn", "lstm"):
        print(f"   {cell:4s}  {training_step_ms(cell, args.repeats):8.1f} ms/step")

    model = make_model(args.cell)
    print(f"\n2. greedy decoding in process ({args.cell}, {LENGTH} tokens per caption)")
    inproc = {}
    for batch in (1, 32, 64, 256):
        inproc[batch] = decode_throughput(model, batch)
        if batch != 64:
            f32 = decode_throughput(model, batch, dtype=np.float32)
            print(f"   batch {batch:4d}  {inproc[batch]:9.1f} captions/s   (float32 compute, not batch-invariant: "
                  f"{f32:9.1f})")

    from pixelrpc.models.captioning.captioning_rnn import save_to_registry
    from pixelrpc.models.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        save_to_registry(model, Registry(tmp), "bench")
        print(f"\n3. gRPC, {args.clients} concurrent single-caption clients, {args.seconds:.0f} s each "
              f"(in-process batch-64 decoding: {inproc[64]:.1f} captions/s)")
        for label, size in (("dynamic batching (max 64)", 64), ("no batching", 1)):
            rate = grpc_throughput(tmp, size, args.clients, args.seconds, args.threads)
            print(f"   {label:26s} {rate:9.1f} captions/s  = {rate / inproc[64]:.2f} x in-process batched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
