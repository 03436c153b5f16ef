"""The Open Inference Protocol (KServe V2 / Triton gRPC) on PixelRPC's gRPC ports, driven by tritonclient.

The servers run in this process on the quick registry; tritonclient runs in a subprocess
(``tests/oip_client.py``: Triton's and PixelRPC's generated ``inference.*`` protos cannot share one
process's descriptor pool). Its answers are checked against the native API called here: the same
top-1 and probabilities as Classify, the same map as Saliency, the same captions as Caption.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, torch_threads
from PIL import Image, ImageDraw

from pixelrpc.services.oip.tensors import decode_raw, from_list, join_bytes, split_bytes
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server

# Looked up, not imported: importing it here would break every in-process server of the session.
if importlib.util.find_spec("tritonclient") is None:
    pytest.skip("tritonclient is a test dependency (pyproject dev extra)", allow_module_level=True)

SETTINGS = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.5, torch_threads=1)
TOKEN = "oip-test-token"


def png(fill, shape: str = "circle") -> bytes:
    img = Image.new("RGB", (48, 48), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "circle" else draw.rectangle)((8, 8, 40, 40), fill=fill)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def oip(quick_bootstrap, tmp_path_factory):
    """Both servers, the inputs, and tritonclient's report (one client process for the module)."""
    folder = tmp_path_factory.mktemp("oip")
    images = {"a": png((210, 40, 40)), "b": png((40, 60, 200), "square")}
    for name, data in images.items():
        (folder / f"{name}.png").write_bytes(data)
    features = np.random.default_rng(3).standard_normal((2, 512)).astype(np.float32)
    np.save(folder / "features.npy", features)
    registry = quick_bootstrap.registry
    with torch_threads(1), running_server(["visualization", "captioning"], SETTINGS, registry=registry) as vis, \
            running_server(["style"], SETTINGS, registry=registry) as style, \
            running_server(["visualization"], SETTINGS.replace(auth_token=TOKEN), registry=registry) as guarded:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "oip_client.py"), vis.address, style.address,
                               str(folder), guarded.address, TOKEN], capture_output=True, text=True, timeout=240,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        yield {"report": json.loads(proc.stdout), "vis": vis, "images": images, "features": features}


def native(address: str):
    import grpc

    from pixelrpc.v1 import captioning_pb2_grpc, visualization_pb2_grpc

    channel = grpc.insecure_channel(address)
    return (visualization_pb2_grpc.VisualizationServiceStub(channel),
            captioning_pb2_grpc.CaptioningServiceStub(channel), channel)


def test_readiness_and_server_metadata(oip):
    health = oip["report"]["health"]
    assert health["live"] and health["ready"] and health["style_ready"]
    assert health["classifier_ready"] and health["classifier_v1_ready"] and health["style_trunk_ready"]
    assert health["captioner_ready"]  # the captioning service shares the port
    assert not health["unknown_ready"] and not health["captioner_on_style_ready"]
    server = oip["report"]["server"]
    assert server["name"] == "pixelrpc" and "classification" in server["extensions"]


def test_model_metadata_config_and_repository_index(oip):
    meta = oip["report"]["metadata"]
    classifier = meta["shapes-squeezenet"]
    assert classifier["versions"] == ["1"]
    assert classifier["inputs"] == [["IMAGE", "BYTES", [-1]], ["PIXELS", "UINT8", [-1, -1, -1, 3]],
                                    ["TARGET_CLASS", "INT32", [-1]]]
    assert classifier["outputs"] == [["PROBABILITIES", "FP32", [-1, 18]], ["SALIENCY", "FP32", [-1, 32, 32]]]
    assert not classifier["decoupled"]
    captioner = meta["shapes-captioner"]
    assert captioner["inputs"][0] == ["FEATURES", "FP32", [-1, 512]]
    assert [o[0] for o in captioner["outputs"]] == ["CAPTION", "TOKENS", "LOG_PROB"] and captioner["decoupled"]
    style = meta["style:shapes-squeezenet"]
    assert style["config_inputs"] == ["CONTENT", "STYLE"] and style["outputs"] == [["IMAGE", "BYTES", [1]]]
    assert ["shapes-squeezenet", "1", "READY"] in oip["report"]["index"]
    assert ["shapes-captioner", "1", "READY"] in oip["report"]["index"]


def test_classify_matches_native_classify(oip):
    from pixelrpc.v1 import common_pb2, visualization_pb2

    stub, _, channel = native(oip["vis"].address)
    with channel:
        response = stub.Classify(visualization_pb2.ClassifyRequest(
            images=[common_pb2.Image(data=oip["images"][k]) for k in "ab"], top_k=18,
            model=common_pb2.ModelRef(name="shapes-squeezenet")), timeout=60)
    probs = np.array(oip["report"]["classify_image"])
    assert probs.shape == (2, 18)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    for n, result in enumerate(response.results):
        top = result.predictions[0]
        assert int(probs[n].argmax()) == top.class_index
        for p in result.predictions:
            assert probs[n, p.class_index] == pytest.approx(p.probability, abs=1e-6)
        score, index, label = oip["report"]["classification"][n][0].split(":", 2)
        assert (int(index), label) == (top.class_index, top.label) and float(score) == pytest.approx(top.probability, abs=1e-5)
    assert len(oip["report"]["classification"][0]) == 3
    # the same pictures sent decoded (PIXELS) are resized and classified alike
    np.testing.assert_allclose(np.array(oip["report"]["classify_pixels"]), probs, atol=1e-5)


def test_saliency_matches_native_saliency(oip):
    from pixelrpc.services.convert import tensor_to_numpy
    from pixelrpc.v1 import common_pb2, visualization_pb2

    stub, _, channel = native(oip["vis"].address)
    ref = common_pb2.ModelRef(name="shapes-squeezenet")
    with channel:
        maps = {}
        for key, image, target in (("target 3", "a", 3), ("predicted a", "a", None), ("predicted b", "b", None)):
            request = visualization_pb2.SaliencyRequest(image=common_pb2.Image(data=oip["images"][image]), model=ref)
            if target is not None:
                request.target_class = target
            maps[key] = tensor_to_numpy(stub.Saliency(request, timeout=60).saliency)
    assert oip["report"]["saliency_outputs"] == ["SALIENCY"]  # only what was requested
    ours = np.array(oip["report"]["saliency"])
    assert ours.shape == (1, 32, 32)
    np.testing.assert_allclose(ours[0], maps["target 3"], rtol=1e-4, atol=1e-6)
    # without TARGET_CLASS each map explains the image's predicted class (a positive score: not all zero)
    predicted = np.array(oip["report"]["saliency_predicted"])
    assert predicted.shape == (2, 32, 32) and (predicted.reshape(2, -1).max(1) > 0).all()
    np.testing.assert_allclose(predicted[0], maps["predicted a"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(predicted[1], maps["predicted b"], rtol=1e-4, atol=1e-6)


def test_caption_matches_native_caption(oip):
    from pixelrpc.services.convert import numpy_to_tensor
    from pixelrpc.v1 import captioning_pb2, common_pb2

    _, stub, channel = native(oip["vis"].address)
    ref = common_pb2.ModelRef(name="shapes-captioner")
    report = oip["report"]["caption_features"]
    with channel:
        for n, row in enumerate(oip["features"]):
            result = stub.Caption(captioning_pb2.CaptionRequest(job=captioning_pb2.CaptionJob(
                model=ref, features=numpy_to_tensor(row))), timeout=60).result
            caption = result.captions[0]
            assert report["CAPTION"][n] == caption.text
            tokens = [t.id for t in caption.tokens]
            assert report["TOKENS"][n][:len(tokens)] == tokens and not any(report["TOKENS"][n][len(tokens):])
            assert report["LOG_PROB"][n] == pytest.approx(caption.logprob, abs=1e-4)
        beam = stub.Caption(captioning_pb2.CaptionRequest(job=captioning_pb2.CaptionJob(
            model=ref, image=common_pb2.Image(data=oip["images"]["a"]),
            options=captioning_pb2.CaptionOptions(strategy=captioning_pb2.DECODING_STRATEGY_BEAM, beam_width=3))),
            timeout=60).result
    assert oip["report"]["caption_image_beam"] == [beam.captions[0].text]


def test_caption_tokens_stream_then_the_caption(oip):
    responses = oip["report"]["caption_stream"]
    *tokens, final = responses
    assert tokens and all(not r["final"] and r["id"] == "cap-1" for r in tokens)
    assert [r["params"]["position"] for r in tokens] == list(range(len(tokens)))
    words = [r["outputs"]["WORD"][0] for r in tokens if r["outputs"]["WORD"][0] != "<END>"]
    assert final["final"] and final["outputs"]["CAPTION"][0] == " ".join(words)
    assert final["outputs"]["CAPTION"][0] == oip["report"]["caption_features"]["CAPTION"][0]


def test_style_job_streams_progress_and_previews(oip):
    responses = oip["report"]["style_stream"]
    *progress, final = responses
    assert [r["params"]["iteration"] for r in progress] == [1, 2, 3, 4]
    assert all(len(r["outputs"]["LOSS"]) == 4 and r["outputs"]["LOSS"][3] > 0 for r in progress)
    assert [("PREVIEW" in r["outputs"]) for r in progress] == [False, True, False, True]
    assert final["final"] and final["params"]["seed"] == 7 and final["image_size"] == [32, 32]


def test_stream_answers_a_failed_request_and_goes_on(oip):
    bad, good = oip["report"]["stream_error_then_ok"]
    assert bad["error"].startswith("INVALID_ARGUMENT: input FEATURES must be FP32 or FP64")
    assert good["final"] and len(good["outputs"]["PROBABILITIES"][0]) == 18


def test_a_stream_request_timeout_bounds_that_request_alone(oip):
    answers = oip["report"]["stream_timeout_then_ok"]
    errors = [a for a in answers if "error" in a]
    assert len(errors) == 1 and errors[0]["error"].startswith("DEADLINE_EXCEEDED: ")
    final = answers[-1]
    assert final.get("final") and final["id"] == "quick" and final["image_size"] == [32, 32]


@pytest.mark.parametrize(("case", "status", "words"), [
    ("features_int32", "INVALID_ARGUMENT", "input FEATURES must be FP32 or FP64, got INT32"),
    ("features_dim", "INVALID_ARGUMENT", "input FEATURES must be [N, 512]"),
    ("features_rank", "INVALID_ARGUMENT", "input FEATURES must have 2 dimensions"),
    ("unknown_model", "NOT_FOUND", "no-such-model"),
    ("unknown_input", "INVALID_ARGUMENT", "unknown input 'PICTURE'"),
    ("unknown_output", "INVALID_ARGUMENT", "unknown output 'LOGITS'"),
    ("unknown_parameter", "INVALID_ARGUMENT", "unknown parameter 'beam_widht'"),
    ("not_an_image", "INVALID_ARGUMENT", "IMAGE"),
    ("both_inputs", "INVALID_ARGUMENT", "exactly one of the inputs IMAGE"),
    ("target_out_of_range", "INVALID_ARGUMENT", "TARGET_CLASS"),
    ("pixels_channels", "INVALID_ARGUMENT", "input PIXELS must be [N, H, W, 3]"),
    ("bad_version", "INVALID_ARGUMENT", "model_version"),
    ("missing_version", "NOT_FOUND", "shapes-squeezenet"),
    ("style_iterations", "INVALID_ARGUMENT", "iterations"),
    ("style_timeout", "DEADLINE_EXCEEDED", "deadline passed"),
])
def test_errors_map_to_the_native_status_codes(oip, case, status, words):
    error = oip["report"]["errors"][case]
    assert error["status"] == f"StatusCode.{status}", error
    assert words in error["message"], error


def test_bearer_token_guards_inference_not_liveness(oip):
    auth = oip["report"]["auth"]
    assert auth["live"] and auth["ready"]
    assert auth["no_token"]["status"] == "StatusCode.UNAUTHENTICATED" and "missing bearer token" in \
        auth["no_token"]["message"]
    assert auth["wrong_token"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert auth["token"]["status"] == "OK"


def test_malformed_request_bytes_are_invalid_argument(oip):
    import grpc

    with grpc.insecure_channel(oip["vis"].address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            infer(b"\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest message" in info.value.details()


def test_oip_calls_share_the_native_metrics(oip):
    samples: dict[tuple[str, str], float] = {}  # summed over the other labels (model, version, ...)
    for metric in oip["vis"].ctx.metrics.requests.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                key = (s.labels["method"], s.labels["code"])
                samples[key] = samples.get(key, 0.0) + s.value
    assert samples[("ModelInfer", "OK")] >= 7 and samples[("ModelInfer", "INVALID_ARGUMENT")] >= 8
    assert samples[("ModelStreamInfer", "OK")] >= 2 and samples[("Classify", "OK")] >= 1


# ---------------------------------------------------------------------- tensors (no server)
def test_raw_tensors_are_checked_against_their_shape():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(decode_raw("X", "FP32", [2, 3], arr.tobytes()).data, arr)
    with pytest.raises(Exception, match="input 'X': 20 bytes sent, but shape \\[2, 3\\] of FP32 needs 24"):
        decode_raw("X", "FP32", [2, 3], arr.tobytes()[:20])
    with pytest.raises(Exception, match="over the limit"):
        decode_raw("X", "FP32", [2**40, 2**40], b"")
    with pytest.raises(Exception, match="datatype 'FP8'"):
        decode_raw("X", "FP8", [1], b"\0")
    with pytest.raises(Exception, match="3 elements sent, but shape \\[2\\] has 2"):
        from_list("X", "INT32", [2], [1, 2, 3])


def test_bytes_tensors_are_length_prefixed():
    raw = join_bytes([b"ab", b"", b"xyz"])
    assert raw == b"\x02\0\0\0ab\0\0\0\0\x03\0\0\0xyz"
    assert split_bytes("S", raw, 3).tolist() == [b"ab", b"", b"xyz"]
    with pytest.raises(Exception, match="element 0 claims 4,294,967,295 bytes"):
        split_bytes("S", b"\xff\xff\xff\xffab", 1)
    with pytest.raises(Exception, match="left over"):
        split_bytes("S", raw + b"!", 3)
