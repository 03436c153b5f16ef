"""The HTTP doors against native gRPC: p50 of one Classify and one Caption, sequential, same run.

    flock /tmp/bench.lock python bench/http_doors.py --registry /work/quick-registry

Native gRPC (stub), KServe V2 REST through tritonclient's HTTP client with binary tensors, and the
native API as JSON over HTTP (urllib), against one in-process server (visualization + captioning)
on this process's event loop thread. Needs ``tritonclient[http]`` (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import threading
import time
import urllib.request

import grpc
import numpy as np
import tritonclient.http as http
from PIL import Image, ImageDraw

from pixelrpc.services.server import create_server
from pixelrpc.services.settings import Settings
from pixelrpc.v1 import (
    captioning_pb2,
    captioning_pb2_grpc,
    common_pb2,
    visualization_pb2,
    visualization_pb2_grpc,
)


def p50(fn, n: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True)
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--classifier", default="shapes-squeezenet")
    parser.add_argument("--captioner", default="shapes-captioner")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    settings = Settings(registry=args.registry, http_port=0, device="cpu", torch_threads=1, shutdown_delay=0)

    async def boot():
        server, _ = await create_server(["visualization", "captioning"], settings)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(boot(), loop).result(120)
    base = f"127.0.0.1:{server.http_port}"
    channel = grpc.insecure_channel(server.address)
    client = http.InferenceServerClient(base)
    img = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(img).ellipse((12, 12, 52, 52), fill=(230, 40, 40))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    png = buf.getvalue()
    dim = client.get_model_metadata(args.captioner)["inputs"][0]["shape"][1]
    features = np.random.default_rng(0).normal(size=(1, dim)).astype(np.float32)

    def post(path: str, body: bytes) -> bytes:
        request = urllib.request.Request(f"http://{base}{path}", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            return response.read()

    vis = visualization_pb2_grpc.VisualizationServiceStub(channel)
    cap = captioning_pb2_grpc.CaptioningServiceStub(channel)
    classify = visualization_pb2.ClassifyRequest(model=common_pb2.ModelRef(name=args.classifier),
                                                 images=[common_pb2.Image(data=png)], top_k=1)
    caption = captioning_pb2.CaptionRequest(job=captioning_pb2.CaptionJob(
        model=common_pb2.ModelRef(name=args.captioner),
        features=common_pb2.Tensor(shape=[dim], dtype="float32", data=features[0].tobytes())))
    image_in = http.InferInput("IMAGE", [1], "BYTES")
    image_in.set_data_from_numpy(np.array([png], dtype=object))
    features_in = http.InferInput("FEATURES", [1, dim], "FP32")
    features_in.set_data_from_numpy(features)
    classify_json = json.dumps({"model": {"name": args.classifier}, "topK": 1,
                                "images": [{"data": base64.b64encode(png).decode()}]}).encode()
    caption_json = json.dumps({"job": {"model": {"name": args.captioner}, "features": {
        "shape": [dim], "dtype": "float32", "data": base64.b64encode(features[0].tobytes()).decode()}}}).encode()
    try:
        rows = {
            "Classify": (lambda: vis.Classify(classify),
                         lambda: client.infer(args.classifier, [image_in],
                                              outputs=[http.InferRequestedOutput("PROBABILITIES")]),
                         lambda: post("/pixelrpc.v1.VisualizationService/Classify", classify_json)),
            "Caption": (lambda: cap.Caption(caption), lambda: client.infer(args.captioner, [features_in]),
                        lambda: post("/pixelrpc.v1.CaptioningService/Caption", caption_json)),
        }
        print(f"{'p50 ms':10} {'native gRPC':>12} {'V2 HTTP bin':>12} {'JSON/HTTP':>12} {'V2/native':>10}")
        for name, (native, v2, native_json) in rows.items():
            a, b, c = (p50(fn, args.calls) for fn in (native, v2, native_json))
            print(f"{name:10} {a:12.2f} {b:12.2f} {c:12.2f} {b / a:10.2f}")
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(60)


if __name__ == "__main__":
    main()
