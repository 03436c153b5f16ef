"""The HTTP front (services/http/, docs/http.md): KServe V2 REST driven by tritonclient's HTTP client,
the native API as JSON driven by curl (every example of docs/http.md is run here), auth, error JSON,
streaming, deadlines and TLS. One server (visualization + captioning, quick-bootstrapped models) runs
in-process on a background event loop; the token tests use a second one, style a third (a style-only
server: shapes-squeezenet is a style model there, a classifier beside the visualization service)."""

from __future__ import annotations

import asyncio
import base64
import http.client as httplib
import io
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pixelrpc.common.suite import SERVICES
from pixelrpc.services.server import create_server
from pixelrpc.services.settings import Settings
from pixelrpc.v1 import (
    captioning_pb2,
    captioning_pb2_grpc,
    common_pb2,
    style_transfer_pb2,
    style_transfer_pb2_grpc,
    visualization_pb2,
    visualization_pb2_grpc,
)

http = pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.timeout(240)
DOC = Path(__file__).resolve().parents[1] / "docs" / "http.md"
README = DOC.parents[1] / "README.md"
TOKEN = "s3cret-token"
CLASSIFIER, CAPTIONER = "shapes-squeezenet", "shapes-captioner"


class Running:
    """A PixelServer on its own event loop thread, for synchronous clients."""

    def __init__(self, registry_root: str, services=("visualization", "captioning"), **settings):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        s = Settings(registry=registry_root, http_port=0, device="cpu", torch_threads=1, shutdown_delay=0,
                     **settings)

        async def boot():
            server, _ = await create_server(list(services), s)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(boot(), self.loop).result(120)
        self.http = f"127.0.0.1:{self.server.http_port}"
        self.channel = grpc.insecure_channel(self.server.address)

    def close(self):
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def served(quick_bootstrap):
    running = Running(str(quick_bootstrap.registry.root))
    yield running
    running.close()


@pytest.fixture(scope="module")
def styled(quick_bootstrap):
    running = Running(str(quick_bootstrap.registry.root), services=("style",))
    yield running
    running.close()


@pytest.fixture(scope="module")
def guarded(quick_bootstrap):
    running = Running(str(quick_bootstrap.registry.root), auth_token=TOKEN)
    yield running
    running.close()


def shapes_png(fill=(230, 40, 40)) -> bytes:
    img = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(img).ellipse((12, 12, 52, 52), fill=fill)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def post(url: str, body: bytes, content_type: str = "application/json", headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# ---------------------------------------------------------------------------- settings
def test_http_port_settings_defaults_and_off():
    assert Settings().http_port == -1  # built in code: off
    for service, port in ((name, spec.http_port) for name, spec in SERVICES.items()):
        assert Settings.from_env({}, service=service).http_port == port
    assert Settings.from_env({"PIXELRPC_HTTP_PORT": "-1"}, service="style").http_port == -1
    assert Settings.from_env({"PIXELRPC_CAPTIONING_HTTP_PORT": "9999"}, service="captioning").http_port == 9999
    assert Settings.from_env({}, service="captioning", http_port=0).http_port == 0


# ---------------------------------------------------------------------------- tritonclient
def test_tritonclient_health_and_metadata(served):
    client = http.InferenceServerClient(served.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(CLASSIFIER) and client.is_model_ready(CAPTIONER)
    assert not client.is_model_ready("no-such-model")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(CLASSIFIER)
    assert {t["name"] for t in meta["inputs"]} == {"IMAGE", "PIXELS", "TARGET_CLASS"}
    assert meta["outputs"][0]["name"] == "PROBABILITIES" and meta["versions"] == ["1"]
    meta = client.get_model_metadata(CAPTIONER, model_version="1")
    assert [t["name"] for t in meta["outputs"]] == ["CAPTION", "TOKENS", "LOG_PROB"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_classify_matches_native(served, binary):
    png = shapes_png()
    native = visualization_pb2_grpc.VisualizationServiceStub(served.channel).Classify(
        visualization_pb2.ClassifyRequest(model=common_pb2.ModelRef(name=CLASSIFIER),
                                          images=[common_pb2.Image(data=png)], top_k=3))
    top1 = native.results[0].predictions[0]
    client = http.InferenceServerClient(served.http)
    image = http.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=object), binary_data=True)  # raw bytes need binary
    result = client.infer(CLASSIFIER, [image], outputs=[
        http.InferRequestedOutput("PROBABILITIES", binary_data=binary)])
    probs = result.as_numpy("PROBABILITIES")
    assert probs.shape[0] == 1 and int(probs.argmax(1)[0]) == top1.class_index
    np.testing.assert_allclose(probs[0, top1.class_index], top1.probability, rtol=1e-5)
    ranked = client.infer(CLASSIFIER, [image], outputs=[
        http.InferRequestedOutput("PROBABILITIES", binary_data=binary, class_count=2)]).as_numpy("PROBABILITIES")
    first = ranked[0][0].decode() if isinstance(ranked[0][0], bytes) else ranked[0][0]
    assert first.split(":", 2)[1:] == [str(top1.class_index), top1.label]
    # PIXELS (UINT8 [N, H, W, 3]) as JSON or binary, with saliency for the predicted class
    pixels = http.InferInput("PIXELS", [1, 64, 64, 3], "UINT8")
    pixels.set_data_from_numpy(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[None], binary_data=binary)
    result = client.infer(CLASSIFIER, [pixels], outputs=[http.InferRequestedOutput("PROBABILITIES", binary_data=binary),
                                                         http.InferRequestedOutput("SALIENCY", binary_data=binary)])
    assert int(result.as_numpy("PROBABILITIES").argmax(1)[0]) == top1.class_index
    assert result.as_numpy("SALIENCY").shape == (1, native.input_size, native.input_size)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_caption_matches_native(served, binary):
    stub = captioning_pb2_grpc.CaptioningServiceStub(served.channel)
    client = http.InferenceServerClient(served.http)
    dim = client.get_model_metadata(CAPTIONER)["inputs"][0]["shape"][1]
    features = np.random.default_rng(3).normal(size=(2, dim)).astype(np.float32)
    want = [stub.Caption(captioning_pb2.CaptionRequest(job=captioning_pb2.CaptionJob(
        model=common_pb2.ModelRef(name=CAPTIONER),
        features=common_pb2.Tensor(shape=[dim], dtype="float32", data=row.tobytes())))).result.captions[0]
        for row in features]
    tensor = http.InferInput("FEATURES", [2, dim], "FP32")
    tensor.set_data_from_numpy(features, binary_data=binary)
    result = client.infer(CAPTIONER, [tensor], outputs=[http.InferRequestedOutput(n, binary_data=binary)
                                                        for n in ("CAPTION", "TOKENS", "LOG_PROB")])
    captions = [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("CAPTION")]
    assert captions == [c.text for c in want]
    np.testing.assert_allclose(result.as_numpy("LOG_PROB"), [c.logprob for c in want], rtol=1e-5)
    tokens = result.as_numpy("TOKENS")
    assert list(tokens[0][:len(want[0].tokens)]) == [t.id for t in want[0].tokens]
    # an image through the captioner's encoder, the same caption as native Caption
    png = shapes_png()
    native = stub.Caption(captioning_pb2.CaptionRequest(job=captioning_pb2.CaptionJob(
        model=common_pb2.ModelRef(name=CAPTIONER), image=common_pb2.Image(data=png)))).result.captions[0]
    image = http.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=object), binary_data=True)
    got = client.infer(CAPTIONER, [image]).as_numpy("CAPTION")[0]
    assert got.decode() == native.text


def counted(metrics, name: str, **labels) -> float:
    """A metric's samples summed over the labels not given."""
    return sum(sample.value for family in metrics.registry.collect() for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def image_tensor(name: str, data: bytes):
    tensor = http.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object), binary_data=True)
    return tensor


def test_tritonclient_style_job_matches_native(styled):
    """Style over V2 REST (the shared StyleAdapter): CONTENT and STYLE in, IMAGE (PNG) out, the picture
    the native StylizeUnary paints for the same job and seed; one inference in one execution per job."""
    content, style = shapes_png(), shapes_png((40, 60, 200))
    metrics = styled.server.contexts["style"].metrics
    model = {"service": "style", "model": CLASSIFIER, "version": "1"}
    before = [counted(metrics, n, **model) for n in ("pixelrpc_inference_total", "pixelrpc_inference_exec_total")]
    client = http.InferenceServerClient(styled.http)
    params = {"iterations": 2, "image_size": 32, "style_size": 32, "seed": 7}
    inputs = [image_tensor("CONTENT", content), image_tensor("STYLE", style)]
    result = client.infer(CLASSIFIER, inputs, parameters=params,
                          outputs=[http.InferRequestedOutput("IMAGE", binary_data=True)])
    assert result.as_numpy("IMAGE").shape == (1,)
    painted = Image.open(io.BytesIO(result.as_numpy("IMAGE")[0]))
    assert painted.format == "PNG" and painted.size == (32, 32)
    assert result.get_response()["parameters"] == {"iteration": 2, "iterations": 2, "seed": 7}
    native = style_transfer_pb2_grpc.StyleTransferServiceStub(styled.channel).StylizeUnary(
        style_transfer_pb2.StylizeUnaryRequest(job=style_transfer_pb2.StyleJob(
            content=common_pb2.Image(data=content), model=common_pb2.ModelRef(name=CLASSIFIER), seed=7,
            styles=[style_transfer_pb2.StyleImage(image=common_pb2.Image(data=style))],
            parameters=style_transfer_pb2.StyleParameters(iterations=2, image_size=32, style_size=32))),
        timeout=60).result
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(native.image.data))), np.asarray(painted))
    # as JSON, the PNG is base64 text
    text = client.infer(CLASSIFIER, inputs, parameters=params,
                        outputs=[http.InferRequestedOutput("IMAGE", binary_data=False)]).as_numpy("IMAGE")[0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(text)))), np.asarray(painted))
    after = [counted(metrics, n, **model) for n in ("pixelrpc_inference_total", "pixelrpc_inference_exec_total")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]  # two REST jobs, one native
    with pytest.raises(Exception, match=r"\[400\] input CONTENT must be \[1\], got \[2\]"):
        two = http.InferInput("CONTENT", [2], "BYTES")
        two.set_data_from_numpy(np.array([content, content], dtype=object), binary_data=True)
        client.infer(CLASSIFIER, [two, image_tensor("STYLE", style)], parameters=params)


def test_v2_infer_deadline_answers_504_and_stops_the_job(styled):
    """Triton's timeout parameter (microseconds) and Connect-Timeout-Ms bound a V2 REST infer: 504
    deadline_exceeded at the deadline, the job cancelled (never counted as done), its slot freed."""
    ctx = styled.server.contexts["style"]
    url = f"http://{styled.http}/v2/models/{CLASSIFIER}/infer"
    data = base64.b64encode(shapes_png()).decode()

    def body(**params) -> bytes:
        return json.dumps({"parameters": {"iterations": 1000, "image_size": 128, "style_size": 128, **params},
                           "inputs": [{"name": n, "datatype": "BYTES", "shape": [1], "data": [data]}
                                      for n in ("CONTENT", "STYLE")]}).encode()

    labels = {"service": "style", "method": "ModelInfer", "code": "DEADLINE_EXCEEDED"}
    expired = requests_counted(ctx.metrics, **labels)
    executions = counted(ctx.metrics, "pixelrpc_inference_exec_total", service="style")
    for params, headers in (({"timeout": 300_000}, {}), ({}, {"Connect-Timeout-Ms": "300"})):
        started = time.monotonic()
        status, _, raw = post(url, body(**params), headers=headers)
        doc = json.loads(raw)
        assert (status, doc["code"]) == (504, "deadline_exceeded"), doc
        assert "deadline" in doc["error"] and time.monotonic() - started < 10
        deadline = time.monotonic() + 30
        while ctx.jobs.running:  # the step running in the worker finishes, then the slot is freed
            assert time.monotonic() < deadline, "the expired job still holds its slot"
            time.sleep(0.02)
    assert requests_counted(ctx.metrics, **labels) == expired + 2
    assert counted(ctx.metrics, "pixelrpc_inference_exec_total", service="style") == executions  # none finished
    status, _, raw = post(url, body(timeout=-5))
    assert status == 400 and "parameter timeout must be a whole number of microseconds" in json.loads(raw)["error"]


def test_native_json_deadline_interrupts_a_queued_call(styled):
    """Connect-Timeout-Ms on the native JSON API ends a call at its deadline, as grpc-timeout does,
    even while the call waits for a job slot: 504 deadline_exceeded, for a unary call and for a stream
    that had sent nothing yet, long before a slot would free."""
    ctx = styled.server.contexts["style"]
    data = base64.b64encode(shapes_png()).decode()
    busy = json.dumps({"parameters": {"iterations": 1000, "image_size": 128, "style_size": 128,
                                      "timeout": 4_000_000},  # each holds a slot for 4 s
                       "inputs": [{"name": n, "datatype": "BYTES", "shape": [1], "data": [data]}
                                  for n in ("CONTENT", "STYLE")]}).encode()
    holders = [threading.Thread(target=post, args=(f"http://{styled.http}/v2/models/{CLASSIFIER}/infer", busy))
               for _ in range(styled.server.settings.max_concurrency)]
    for t in holders:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while ctx.jobs.running < len(holders):
            assert time.monotonic() < deadline, "the slot holders did not start"
            time.sleep(0.02)
        job = {"job": {"content": {"data": data}, "styles": [{"image": {"data": data}}], "model": {"name": CLASSIFIER},
                       "parameters": {"iterations": 2, "imageSize": 32, "styleSize": 32}}}
        labels = {"service": "style", "code": "DEADLINE_EXCEEDED"}
        for method in ("StylizeUnary", "Stylize"):
            expired = requests_counted(ctx.metrics, method=method, **labels)
            started = time.monotonic()
            status, _, raw = post(f"http://{styled.http}/pixelrpc.v1.StyleTransferService/{method}",
                                  json.dumps(job).encode(), headers={"Connect-Timeout-Ms": "300"})
            elapsed = time.monotonic() - started
            assert (status, json.loads(raw)["code"]) == (504, "deadline_exceeded"), raw
            assert 0.25 < elapsed < 2.5, f"{method} answered after {elapsed:.2f} s, its deadline was 0.3 s"
            assert ctx.jobs.running == len(holders)  # still full: it was answered while waiting
            while requests_counted(ctx.metrics, method=method, **labels) <= expired:
                assert time.monotonic() < deadline, "the expired call was not counted"
                time.sleep(0.02)
    finally:
        for t in holders:
            t.join(60)


def test_v2_errors_name_the_tensor_and_carry_the_request_id(served):
    client = http.InferenceServerClient(served.http)
    tensor = http.InferInput("FEATURES", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 5), np.float32))
    with pytest.raises(Exception, match=r"\[400\] input FEATURES must be \[N, 512\] for shapes-captioner:1, got \[1, 5\]"):
        client.infer(CAPTIONER, [tensor])
    status, headers, body = post(f"http://{served.http}/v2/models/{CLASSIFIER}/infer",
                                 json.dumps({"inputs": [{"name": "PIXELS", "datatype": "FP32", "shape": [1, 2, 2, 3],
                                                         "data": [0.0] * 12}]}).encode(),
                                 headers={"X-Request-Id": "req-v2-1"})
    doc = json.loads(body)
    assert status == 400 and doc["code"] == "invalid_argument" and "PIXELS" in doc["error"]
    assert headers["x-request-id"] == "req-v2-1"
    status, _, body = post(f"http://{served.http}/v2/models/nope/infer", b'{"inputs": []}')
    assert status == 404 and json.loads(body)["code"] == "not_found"


# ---------------------------------------------------------------------------- native JSON
def test_native_json_error_has_code_details_and_status(served):
    status, headers, body = post(f"http://{served.http}/pixelrpc.v1.VisualizationService/Classify",
                                 b'{"images": [], "topK": 1}')
    doc = json.loads(body)
    assert status == 400 and doc["code"] == "invalid_argument"
    types = [d["type"] for d in doc["details"]]
    assert types == ["google.rpc.BadRequest", "google.rpc.RequestInfo"]
    assert doc["details"][1]["debug"]["requestId"] == headers["x-request-id"]
    status, _, body = post(f"http://{served.http}/pixelrpc.v1.VisualizationService/Classify", b'{"imagez": 1}')
    assert status == 400 and "pixelrpc.v1.ClassifyRequest" in json.loads(body)["message"]
    status, _, body = post(f"http://{served.http}/pixelrpc.v1.VisualizationService/Nope", b"{}")
    assert status == 404 and json.loads(body)["code"] == "unimplemented"


def test_connect_streaming_envelopes(served):
    request = json.dumps({"targetClass": 1, "numIterations": 3, "size": 32, "showEvery": 1, "seed": 5}).encode()
    status, headers, body = post(f"http://{served.http}/pixelrpc.v1.VisualizationService/ClassVisualization",
                                 struct.pack(">BI", 0, len(request)) + request, "application/connect+json")
    assert status == 200 and headers["content-type"].startswith("application/connect+json")
    frames, pos = [], 0
    while pos < len(body):
        flags, length = struct.unpack_from(">BI", body, pos)
        frames.append((flags, json.loads(body[pos + 5:pos + 5 + length])))
        pos += 5 + length
    assert [f for f, _ in frames] == [0, 0, 0, 0, 2]  # three progress messages, the result, the end
    assert "result" in frames[3][1] and frames[-1][1]["metadata"]["x-request-id"] == [headers["x-request-id"]]
    assert "error" not in frames[-1][1]
    bad = json.dumps({"targetClass": 999}).encode()  # out of range: the end message carries the error
    status, _, body = post(f"http://{served.http}/pixelrpc.v1.VisualizationService/ClassVisualization",
                           struct.pack(">BI", 0, len(bad)) + bad, "application/connect+json")
    assert status == 200 and body[0] == 2 and json.loads(body[5:])["error"]["code"] == "invalid_argument"
    status, _, body = post(f"http://{served.http}/pixelrpc.v1.VisualizationService/ClassVisualization", bad)
    assert status == 400 and json.loads(body)["code"] == "invalid_argument"  # NDJSON: failed before streaming


def requests_counted(metrics, **labels) -> float:
    """``pixelrpc_requests_total`` summed over the labels not given (e.g. model and version)."""
    return sum(sample.value for family in metrics.registry.collect() for sample in family.samples
               if sample.name == "pixelrpc_requests_total"
               and all(sample.labels.get(k) == v for k, v in labels.items()))


def test_a_client_that_hangs_up_cancels_the_streaming_job(served):
    """An NDJSON stream whose client disconnects is cancelled like a gRPC cancel: CANCELLED, slot freed."""
    metrics = served.server.contexts["visualization"].metrics
    labels = {"service": "visualization", "method": "ClassVisualization", "code": "CANCELLED"}
    before = requests_counted(metrics, **labels)
    body = json.dumps({"targetClass": 1, "numIterations": 1000, "size": 64, "showEvery": 1}).encode()
    with socket.create_connection(("127.0.0.1", served.server.http_port), timeout=60) as conn:
        conn.sendall(b"POST /pixelrpc.v1.VisualizationService/ClassVisualization HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")  # streaming has begun
    deadline = time.monotonic() + 30
    while requests_counted(metrics, **labels) <= before:
        assert time.monotonic() < deadline, "the job was not cancelled after the client hung up"
        time.sleep(0.05)
    jobs = served.server.contexts["visualization"].jobs
    while jobs.running:  # the step already running in the worker finishes, then the slot is freed
        assert time.monotonic() < deadline, "the cancelled job still holds its slot"
        time.sleep(0.05)


def test_requests_are_counted_in_the_metrics(served):
    post(f"http://{served.http}/pixelrpc.v1.VisualizationService/Classify", b'{"images": []}')
    metrics = served.server.contexts["visualization"].metrics
    value = requests_counted(metrics, service="visualization", method="Classify", code="INVALID_ARGUMENT")
    assert value and value >= 1


def test_token_guards_everything_but_health(guarded):
    client = http.InferenceServerClient(guarded.http)
    assert client.is_server_live() and client.is_server_ready()
    with pytest.raises(Exception, match="missing bearer token"):
        client.get_model_metadata(CLASSIFIER)
    authed = http.InferenceServerClient(guarded.http)
    meta = authed.get_model_metadata(CLASSIFIER, headers={"Authorization": f"Bearer {TOKEN}"})
    assert meta["name"] == CLASSIFIER
    status, _, body = post(f"http://{guarded.http}/pixelrpc.v1.ModelRegistry/ListModels", b"{}",
                           headers={"Authorization": "Bearer wrong"})
    assert status == 401 and json.loads(body)["code"] == "unauthenticated"


# ---------------------------------------------------------------------------- docs/http.md examples
def doc_blocks(doc: Path = DOC) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(0)) for m in re.finditer(r"```sh\n(.*?)```", doc.read_text(), re.S)]


def test_docs_have_runnable_examples():
    blocks = doc_blocks()
    assert len(blocks) >= 8 and all("# expect:" in b for b, _ in blocks)
    readme = doc_blocks(README)  # the README's HTTP section: the same runner below
    assert len(readme) >= 2 and all("# expect:" in b for b, _ in readme)


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_curl_examples_in_docs(served, guarded, styled, tmp_path):
    (tmp_path / "shapes.png").write_bytes(shapes_png())
    for block, _ in doc_blocks() + doc_blocks(README):
        # 8083 is the style service's port (docs/http.md); 8081 and 8082 are both served by `served`
        target = guarded if "# server: token" in block else styled if "localhost:8083" in block else served
        script = re.sub(r"localhost:808[123]", target.http, block)
        env = {**os.environ, "PIXELRPC_AUTH_TOKEN": TOKEN}
        run = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{block}\n--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}"
        for expected in re.findall(r"# expect: (.*)", block):
            assert expected in run.stdout, f"{block}\n--- expected {expected!r} in\n{run.stdout}"


# ---------------------------------------------------------------------------- TLS
def test_https_with_the_grpc_certificate(quick_bootstrap, tmp_path):
    """PIXELRPC_TLS_CERT/KEY turn the HTTP port into HTTPS: health and an inference over TLS with the
    test's self-signed certificate; plain HTTP and a client that does not trust it get nothing."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    running = Running(str(quick_bootstrap.registry.root), tls_cert=str(cert), tls_key=str(key))
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://{running.http}/v2/health/ready", context=trusted, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read()) == {"ready": True}
        body = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                                       "data": [base64.b64encode(shapes_png()).decode()]}],
                           "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 2}}]}).encode()
        request = urllib.request.Request(f"https://{running.http}/v2/models/{CLASSIFIER}/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, context=trusted, timeout=60) as r:
            output = json.loads(r.read())["outputs"][0]
        assert output["name"] == "PROBABILITIES" and output["shape"] == [1, 2]
        assert all(len(entry.split(":", 2)) == 3 for entry in output["data"])  # "score:index:label"
        with pytest.raises((OSError, httplib.HTTPException)):  # plain HTTP on the TLS port
            urllib.request.urlopen(f"http://{running.http}/v2/health/ready", timeout=10).read()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://{running.http}/v2/health/ready", context=ssl.create_default_context(),
                                   timeout=10)
    finally:
        running.close()
