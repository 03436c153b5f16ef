"""Open Inference Protocol over gRPC vs the native gRPC API, for Classify and Caption (issue 14).

One ``pixelrpc serve all`` subprocess (CPU, one torch thread unless --threads); this process is the
client. Each workload runs the native call (``pixelrpc.v1`` stubs, grpc.aio) and the same work
through ``inference.GRPCInferenceService`` (tritonclient's asyncio gRPC client), interleaved
(native, OIP, native, ...), medians of --repeats:

- p50 latency with 1 client (sequential calls): OIP / native, target <= 1.2;
- throughput with 4 and with 64 concurrent clients: OIP / native, target >= 0.83 (within 1.2x);
- the server's CPU time per call at 64 clients (from /proc): OIP / native, target <= 1.2.

Classify: one 64 x 64 PNG, the registry's classifier (default shapes-squeezenet). Caption: one
feature vector, greedy, the registry's captioner (default shapes-captioner); both APIs go through
the same dynamic batcher.

    flock /tmp/bench.lock .venv/bin/python bench/oip.py --registry /work/quick-registry
    .venv/bin/python bench/oip.py --smoke --registry REG
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as tca
from PIL import Image, ImageDraw
from results import record
from tritonclient.grpc import service_pb2 as oip_pb
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from pixelrpc.services.convert import numpy_to_tensor
from pixelrpc.v1 import (
    captioning_pb2,
    captioning_pb2_grpc,
    common_pb2,
    visualization_pb2,
    visualization_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png() -> bytes:
    img = Image.new("RGB", (64, 64), (230, 230, 230))
    ImageDraw.Draw(img).ellipse((12, 12, 52, 52), fill=(200, 40, 40))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def start_server(registry: str, threads: int) -> tuple[subprocess.Popen, dict[str, int]]:
    ports = {s: free_port() for s in ("captioning", "visualization", "style")}
    env = {**os.environ, "PIXELRPC_REGISTRY": registry, "PIXELRPC_HOST": "127.0.0.1", "PIXELRPC_DEVICE": "cpu",
           "PIXELRPC_TORCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "PIXELRPC_SHUTDOWN_DELAY": "0",
           "PIXELRPC_QUEUE_DEPTH": "256", "PIXELRPC_LOG_LEVEL": "WARNING"}
    for s, p in ports.items():
        env[f"PIXELRPC_{s.upper()}_PORT"] = str(p)
        env[f"PIXELRPC_{s.upper()}_METRICS_PORT"] = "0"
    proc = subprocess.Popen([sys.executable, "-m", "pixelrpc.cli", "serve", "all"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, ports


async def wait_ready(client: tca.InferenceServerClient, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if await client.is_server_ready():
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit("server not ready in time")
        await asyncio.sleep(0.2)


class Workload:
    """``native()`` and ``oip()`` coroutines doing one call each."""

    def __init__(self, name: str, native, oip, client: str):
        self.name, self.native, self.oip, self.client = name, native, oip, client


async def p50(call, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(call, clients: int, per_client: int, pid: int) -> tuple[float, float]:
    """(calls/s, server CPU ms per call) with ``clients`` concurrent clients."""
    async def client():
        for _ in range(per_client):
            await call()

    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    calls = clients * per_client
    return calls / seconds, (cpu_seconds(pid) - cpu) * 1000.0 / calls


async def run(args) -> None:
    proc, ports = start_server(args.registry, args.threads)
    vis_addr, cap_addr = f"127.0.0.1:{ports['visualization']}", f"127.0.0.1:{ports['captioning']}"
    oip_vis, oip_cap = tca.InferenceServerClient(vis_addr), tca.InferenceServerClient(cap_addr)
    try:
        await wait_ready(oip_vis, proc)
        await wait_ready(oip_cap, proc)
        vis_channel, cap_channel = grpc.aio.insecure_channel(vis_addr), grpc.aio.insecure_channel(cap_addr)
        vis_stub = visualization_pb2_grpc.VisualizationServiceStub(vis_channel)
        cap_stub = captioning_pb2_grpc.CaptioningServiceStub(cap_channel)
        image = png()
        features = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
        classify_request = visualization_pb2.ClassifyRequest(
            images=[common_pb2.Image(data=image)], model=common_pb2.ModelRef(name=args.classifier), top_k=5)
        caption_request = captioning_pb2.CaptionRequest(job=captioning_pb2.CaptionJob(
            model=common_pb2.ModelRef(name=args.captioner), features=numpy_to_tensor(features[0])))

        async def native_classify():
            await vis_stub.Classify(classify_request, timeout=60)

        async def oip_classify():
            tensor = tca.InferInput("IMAGE", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([image], dtype=object))
            result = await oip_vis.infer(args.classifier, [tensor], client_timeout=60)
            result.as_numpy("PROBABILITIES")

        # The OIP messages built with Triton's own generated code, sent through a plain grpc.aio stub:
        # the same kind of client as the native rows, so the rows compare the protocols, not clients.
        vis_oip_stub = oip_grpc.GRPCInferenceServiceStub(vis_channel)
        cap_oip_stub = oip_grpc.GRPCInferenceServiceStub(cap_channel)
        classify_oip = oip_pb.ModelInferRequest(model_name=args.classifier, raw_input_contents=[
            len(image).to_bytes(4, "little") + image])
        classify_oip.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
        caption_oip = oip_pb.ModelInferRequest(model_name=args.captioner, raw_input_contents=[features.tobytes()])
        caption_oip.inputs.add(name="FEATURES", datatype="FP32", shape=list(features.shape))

        async def stub_classify():
            response = await vis_oip_stub.ModelInfer(classify_oip, timeout=60)
            np.frombuffer(response.raw_output_contents[0], dtype="<f4")

        async def stub_caption():
            await cap_oip_stub.ModelInfer(caption_oip, timeout=60)

        async def native_caption():
            await cap_stub.Caption(caption_request, timeout=60)

        async def oip_caption():
            tensor = tca.InferInput("FEATURES", [1, features.shape[1]], "FP32")
            tensor.set_data_from_numpy(features)
            result = await oip_cap.infer(args.captioner, [tensor], client_timeout=60)
            result.as_numpy("CAPTION")

        workloads = [Workload("Classify", native_classify, stub_classify, "grpc.aio stub"),
                     Workload("Caption", native_caption, stub_caption, "grpc.aio stub"),
                     Workload("Classify", native_classify, oip_classify, "tritonclient"),
                     Workload("Caption", native_caption, oip_caption, "tritonclient")]
        for w in workloads:  # warm both paths (model loads, first-call costs)
            for _ in range(3):
                await w.native()
                await w.oip()
        for w in workloads:
            native, oip = [], []
            for _ in range(args.repeats):
                native.append(await p50(w.native, args.calls))
                oip.append(await p50(w.oip, args.calls))
            n, o = statistics.median(native), statistics.median(oip)
            record(f"{w.name} p50, 1 client, OIP gRPC ({w.client})", "native gRPC", n, o, "ms", o / n, "<= 1.2")
            for clients, per_client in ((4, args.calls), (64, max(1, args.calls // 4))):
                native, oip = [], []
                for _ in range(args.repeats):
                    native.append(await throughput(w.native, clients, per_client, proc.pid))
                    oip.append(await throughput(w.oip, clients, per_client, proc.pid))
                n, o = statistics.median(r[0] for r in native), statistics.median(r[0] for r in oip)
                record(f"{w.name} throughput, {clients} clients, OIP gRPC ({w.client})", "native gRPC", n, o,
                       "calls/s", o / n, ">= 0.83")
                if clients == 64:  # server CPU per call: the protocol's cost, least disturbed by the box's load
                    n, o = statistics.median(r[1] for r in native), statistics.median(r[1] for r in oip)
                    record(f"{w.name} server CPU per call, {clients} clients, OIP gRPC ({w.client})", "native gRPC",
                           n, o, "ms", o / n, "<= 1.2")
        await vis_channel.close()
        await cap_channel.close()
    finally:
        await oip_vis.close()
        await oip_cap.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=os.environ.get("PIXELRPC_REGISTRY",
                                                             str(Path.home() / ".cache" / "pixelrpc" / "registry")))
    parser.add_argument("--classifier", default="shapes-squeezenet")
    parser.add_argument("--captioner", default="shapes-captioner")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=80, help="sequential calls per p50; throughput scales with it")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every row runs")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.calls = 1, 8
    print(f"== bench/oip.py: registry {args.registry}, torch threads {args.threads}", flush=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
