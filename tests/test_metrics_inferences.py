"""Inferences vs executions for every service and door, and the ``service`` label of Open Inference
Protocol calls in a process that runs several services.

One in-process server runs captioning, visualization and style (captioning FIRST: OIP calls begin under
the process's first service, and must be counted under the service that runs their model). Each call
is checked against ``pixelrpc_inference_total`` / ``pixelrpc_inference_exec_total``: N images
classified in one call are N inferences in one execution, whatever carried them (native gRPC, OIP
gRPC, V2 REST, the native API as JSON); a style job is one and one.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import grpc
import pytest
from PIL import Image, ImageDraw

from pixelrpc.inference import grpc_service_pb2 as ipb
from pixelrpc.inference import grpc_service_pb2_grpc as ipb_grpc
from pixelrpc.services.oip.tensors import join_bytes
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server
from pixelrpc.v1 import (
    common_pb2,
    style_transfer_pb2,
    style_transfer_pb2_grpc,
    visualization_pb2,
    visualization_pb2_grpc,
)

SETTINGS = Settings(shutdown_delay=0.0, torch_threads=1, device="cpu", http_port=0)
CLASSIFIER = "shapes-squeezenet"
VIS = {"service": "visualization", "model": CLASSIFIER, "version": "1"}
STYLE = {"service": "style", "model": CLASSIFIER, "version": "1"}


def png(fill) -> bytes:
    img = Image.new("RGB", (48, 48), (235, 235, 235))
    ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=fill)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


A, B, C = png((210, 40, 40)), png((40, 60, 200)), png((40, 200, 60))


@pytest.fixture(scope="module")
def srv(quick_bootstrap):
    with running_server(["captioning", "visualization", "style"], SETTINGS, registry=quick_bootstrap.registry) as s:
        yield s


def value(srv, name: str, **labels) -> float:
    """A sample of the server's metrics summed over the labels not given (0 when absent)."""
    return sum(sample.value for family in srv.ctx.metrics.registry.collect() for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def counts(srv, labels: dict) -> tuple[float, float]:
    return value(srv, "pixelrpc_inference_total", **labels), value(srv, "pixelrpc_inference_exec_total", **labels)


def delta(srv, labels: dict, action) -> tuple[float, float]:
    before = counts(srv, labels)
    action()
    after = counts(srv, labels)
    return after[0] - before[0], after[1] - before[1]


def post_json(srv, path: str, doc: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{srv.server.http_port}{path}", data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_native_classify_and_saliency_count_images_in_one_execution(srv):
    with grpc.insecure_channel(srv.address) as channel:
        stub = visualization_pb2_grpc.VisualizationServiceStub(channel)
        ref = common_pb2.ModelRef(name=CLASSIFIER)
        classify = visualization_pb2.ClassifyRequest(model=ref, images=[common_pb2.Image(data=x) for x in (A, B, C)])
        assert delta(srv, VIS, lambda: stub.Classify(classify, timeout=60)) == (3, 1)
        saliency = visualization_pb2.SaliencyRequest(model=ref, image=common_pb2.Image(data=A))
        assert delta(srv, VIS, lambda: stub.Saliency(saliency, timeout=60)) == (1, 1)
    # the native API as JSON runs the same handler
    images = [{"data": base64.b64encode(x).decode()} for x in (A, B)]
    assert delta(srv, VIS, lambda: post_json(srv, "/pixelrpc.v1.VisualizationService/Classify",
                                             {"model": {"name": CLASSIFIER}, "images": images})) == (2, 1)


def test_oip_grpc_and_v2_rest_count_under_the_service_that_runs_the_model(srv):
    labels = {"method": "ModelInfer", "code": "OK", "model": CLASSIFIER}
    requests_before = {s: value(srv, "pixelrpc_requests_total", service=s, **labels) for s in srv.contexts}
    request = ipb.ModelInferRequest(model_name=CLASSIFIER, inputs=[ipb.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[2])], raw_input_contents=[join_bytes([A, B])])
    with grpc.insecure_channel(srv.address) as channel:
        infer = ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        assert delta(srv, VIS, lambda: infer(request, timeout=60)) == (2, 1)
    rest = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [3],
                        "data": [base64.b64encode(x).decode() for x in (A, B, C)]}]}
    assert delta(srv, VIS, lambda: post_json(srv, f"/v2/models/{CLASSIFIER}/infer", rest)) == (3, 1)
    after = {s: value(srv, "pixelrpc_requests_total", service=s, **labels) for s in srv.contexts}
    assert after["visualization"] - requests_before["visualization"] == 2  # one gRPC, one REST
    assert after["captioning"] == requests_before["captioning"]  # not the process's first service
    for service in srv.contexts:  # the in-flight gauge moved with the call and came back to 0
        assert value(srv, "pixelrpc_in_flight_requests", service=service) == 0


def test_a_style_job_is_one_inference_in_one_execution(srv):
    job = style_transfer_pb2.StyleJob(
        content=common_pb2.Image(data=A), styles=[style_transfer_pb2.StyleImage(image=common_pb2.Image(data=B))],
        model=common_pb2.ModelRef(name=CLASSIFIER), seed=3,
        parameters=style_transfer_pb2.StyleParameters(iterations=2, image_size=32, style_size=32))
    with grpc.insecure_channel(srv.address) as channel:
        stub = style_transfer_pb2_grpc.StyleTransferServiceStub(channel)
        assert delta(srv, STYLE, lambda: stub.StylizeUnary(style_transfer_pb2.StylizeUnaryRequest(job=job),
                                                           timeout=60)) == (1, 1)
        streamed = style_transfer_pb2.StylizeRequest(job=job, preview_every=1)
        assert delta(srv, STYLE, lambda: list(stub.Stylize(streamed, timeout=60))) == (1, 1)
