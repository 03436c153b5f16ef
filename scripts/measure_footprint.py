"""Per-replica footprint of each service, for the Kubernetes resources and docs/scaling.md.

For each service: start ``pixelrpc serve <service>`` alone (one torch thread), time it from exec to
its health name turning SERVING (model load, golden check and warm-up, ``PIXELRPC_REQUIRE_MODELS``),
sample RSS idle, then drive it with ``--clients`` closed-loop clients for ``--seconds`` and report
requests/s, server CPU seconds per request (from /proc) and peak RSS under load, both with the
server's child processes (the captioning decoding process; ``bench/procfs.py``).

    flock /tmp/bench.lock .venv/bin/python scripts/measure_footprint.py --registry /work/quick-registry
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from procfs import cpu_seconds, rss_mib  # noqa: E402 - a server's CPU and RSS with its child processes

FULL = {"captioning": "pixelrpc.v1.CaptioningService", "visualization": "pixelrpc.v1.VisualizationService",
        "style": "pixelrpc.v1.StyleTransferService"}
PRELOAD = {"captioning": "shapes-captioner", "visualization": "shapes-squeezenet", "style": "shapes-squeezenet"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def one_call(service: str, addr: str):
    from pixelrpc.clients.captioning import CaptioningClient
    from pixelrpc.clients.style import StyleClient
    from pixelrpc.clients.visualization import VisualizationClient

    image = png(64, 1)
    if service == "captioning":
        c = CaptioningClient(addr)
        return c, lambda: c.caption(image)
    if service == "visualization":
        c = VisualizationClient(addr)
        return c, lambda: c.saliency(image)
    c = StyleClient(addr)
    return c, lambda: c.stylize_unary(image, [png(64, 2)], image_size=64, style_size=64, iterations=20)


def measure(service: str, registry: str, clients: int, seconds: float, threads: int) -> dict:
    port = free_port()
    env = {**os.environ, "PIXELRPC_REGISTRY": registry, "PIXELRPC_HOST": "127.0.0.1", "PIXELRPC_PORT": str(port),
           "PIXELRPC_METRICS_PORT": "0", "PIXELRPC_DEVICE": "cpu", "PIXELRPC_TORCH_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads), "PIXELRPC_PRELOAD": PRELOAD[service],
           "PIXELRPC_REQUIRE_MODELS": "1", "PIXELRPC_SHUTDOWN_DELAY": "0"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pixelrpc.cli", "serve", service], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service=FULL[service]), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if proc.poll() is not None or time.monotonic() - t0 > 300:
                    raise RuntimeError(f"{service} did not turn ready")
                time.sleep(0.05)
        ready_s = time.monotonic() - t0
        time.sleep(1.0)
        idle = rss_mib(proc.pid)
        done, errors, peak, stop = [0], [0], [idle], threading.Event()

        def worker():
            c, call = one_call(service, addr)
            with c:
                while not stop.is_set():
                    try:
                        call()
                        done[0] += 1
                    except Exception:  # noqa: BLE001 - counted
                        errors[0] += 1

        cpu0, w0 = cpu_seconds(proc.pid), time.monotonic()
        ts = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
        for t in ts:
            t.start()
        while time.monotonic() - w0 < seconds:
            time.sleep(0.25)
            peak[0] = max(peak[0], rss_mib(proc.pid))
        stop.set()
        for t in ts:
            t.join(120)
        wall, cpu = time.monotonic() - w0, cpu_seconds(proc.pid) - cpu0
        return {"service": service, "ready_s": round(ready_s, 2), "idle_rss_mib": round(idle, 1),
                "loaded_peak_rss_mib": round(peak[0], 1), "requests": done[0], "errors": errors[0],
                "rps": round(done[0] / wall, 2), "cpu_ms_per_request": round(1000 * cpu / max(1, done[0]), 2),
                "cpu_cores_busy": round(cpu / wall, 2), "clients": clients, "torch_threads": threads}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", default=os.environ.get("PIXELRPC_REGISTRY", ""))
    p.add_argument("--services", default="captioning,visualization,style")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    for s in a.services.split(","):
        print(json.dumps(measure(s, a.registry, a.clients, a.seconds, a.threads)), flush=True)


if __name__ == "__main__":
    main()
