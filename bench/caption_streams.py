"""Many captioning items against one server with the default settings (issue 10, point 3).

Starts ``pixelrpc serve captioning`` (default queue and slot settings) on a copy of a registry holding
the default captioner (``shapes-captioner`` and its encoder, e.g. from ``pixelrpc bootstrap --quick``),
then measures and prints:

1. ``pixelrpc caption`` with 40 image files (one CaptionStream): answered / failed;
2. 4 concurrent CaptionStreams of 300 images each (client library ``caption_many``): answered / failed;
3. 64 concurrent single-caption clients (unary ``Caption`` with an image, asyncio) for ``--seconds``:
   calls, errors by status code, and the server's RSS sampled every 5 s (first, last, max).

    python bench/caption_streams.py --registry /path/to/registry [--seconds 60] [--size 96]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from procfs import rss_mib
from results import record
from soak import quick_registry


def pngs(count: int, size: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img = Image.fromarray(rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)).resize((size, size))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(registry: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PIXELRPC_DEVICE": os.environ.get("PIXELRPC_DEVICE", "cpu"), "PIXELRPC_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "pixelrpc.cli", "serve", "captioning", "--port", str(port),
                             "--registry", registry, "--metrics-port", "0", "--http-port", "-1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    from pixelrpc.clients.captioning import CaptioningClient

    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + proc.stderr.read())
        try:
            with CaptioningClient(f"127.0.0.1:{port}", timeout=5) as c:
                if c.health() == "SERVING":
                    return proc
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def cli_case(address: str, images: list[bytes]) -> tuple[int, Counter]:
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, data in enumerate(images):
            path = Path(folder) / f"img{i:03d}.png"
            path.write_bytes(data)
            paths.append(str(path))
        out = subprocess.run([sys.executable, "-m", "pixelrpc.cli", "caption", *paths, "--addr", address,
                              "--json", "--timeout", "300"], capture_output=True, text=True)
    results = json.loads(out.stdout) if out.stdout.strip() else []
    errors = Counter(r["error"]["code"] for r in results if "error" in r)
    if not results:
        errors["CLI: " + out.stderr.strip()[-200:]] += 1
    return sum(1 for r in results if "error" not in r), errors


def streams_case(address: str, images: list[bytes], streams: int) -> tuple[int, Counter]:
    from pixelrpc.clients.captioning import CaptioningClient, CaptionOutput

    ok, errors, lock = [0], Counter(), threading.Lock()

    def one():
        with CaptioningClient(address, timeout=600) as client:
            for _, outcome in client.caption_many(images):
                with lock:
                    if isinstance(outcome, CaptionOutput):
                        ok[0] += 1
                    else:
                        errors[outcome.code.name] += 1

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0], errors


async def clients_case(address: str, images: list[bytes], clients: int, seconds: float, pid: int):
    from pixelrpc.clients.captioning import AsyncCaptioningClient
    from pixelrpc.clients.errors import RpcError

    calls, errors, rss = 0, Counter(), []
    stop = time.monotonic() + seconds

    async def sample():
        while time.monotonic() < stop:
            rss.append(rss_mib(pid))
            await asyncio.sleep(5)

    async with AsyncCaptioningClient(address, timeout=120) as client:
        async def worker(i):
            nonlocal calls
            while time.monotonic() < stop:
                try:
                    await client.caption(images[(i * 7 + calls) % len(images)])
                    calls += 1
                except RpcError as exc:
                    errors[exc.code.name] += 1

        await asyncio.gather(sample(), *(worker(i) for i in range(clients)))
    rss.append(rss_mib(pid))
    return calls, errors, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=os.environ.get("PIXELRPC_REGISTRY") or None,
                        help="a registry with shapes-captioner, copied (else a quick bootstrap in a temp folder)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", type=int, default=96, help="side of the test images in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        registry = (shutil.copytree(args.registry, Path(folder) / "registry") if args.registry
                    else quick_registry(Path(folder)))
        port = free_port()
        address = f"127.0.0.1:{port}"
        proc = start_server(str(registry), port)
        try:
            images = pngs(300, args.size)
            print(f"server pid {proc.pid}, default settings, images {args.size}x{args.size} PNG, "
                  f"RSS at start {rss_mib(proc.pid):.0f} MiB", flush=True)
            start = time.perf_counter()
            ok, errors = cli_case(address, images[:40])
            print(f"1. pixelrpc caption, 40 files: {ok}/40 answered, errors {dict(errors)} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
            record("pixelrpc caption, 40 image files", "items sent", 40, ok, "answered", ok / 40, ">= 1")
            start = time.perf_counter()
            ok, errors = streams_case(address, images, 4)
            print(f"2. 4 streams x 300 images: {ok}/1200 answered, errors {dict(errors)} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
            record("CaptionStream, 4 streams x 300 images", "items sent", 1200, ok, "answered", ok / 1200, ">= 1")
            calls, errors, rss = asyncio.run(clients_case(address, images, 64, args.seconds, proc.pid))
            print(f"3. 64 unary clients for {args.seconds:g} s: {calls} captions "
                  f"({calls / args.seconds:.1f}/s), errors {dict(errors)}; server RSS MiB every 5 s: "
                  f"{' '.join(f'{r:.0f}' for r in rss)} (first {rss[0]:.0f}, last {rss[-1]:.0f}, "
                  f"max {max(rss):.0f})", flush=True)
            failed = sum(errors.values())
            record(f"64 unary Caption clients, {args.seconds:g} s", "calls made", calls + failed, calls,
                   "answered", calls / max(1, calls + failed), ">= 1")
            record(f"server RSS during {args.seconds:g} s of 64 clients", "RSS at the start of the load",
                   rss[0], max(rss), "MiB", max(rss) / rss[0], "<= 1.1")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
