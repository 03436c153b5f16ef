"""Drive PixelRPC's Open Inference Protocol with tritonclient, in its own process; print JSON.

Run by ``tests/test_oip_grpc.py``. tritonclient's generated ``grpc_service.proto`` and PixelRPC's
``pixelrpc/inference/grpc_service.proto`` define the same ``inference.*`` symbols, and one process's
protobuf descriptor pool refuses the second file; the test process runs servers in-process, so
Triton's client runs here, as any foreign client would: over the wire only.

Usage: oip_client.py VIS_CAPTION_ADDRESS STYLE_ADDRESS INPUT_DIR AUTH_ADDRESS TOKEN
(INPUT_DIR: a.png, b.png, features.npy; AUTH_ADDRESS: a visualization server requiring TOKEN)
"""

from __future__ import annotations

import io
import json
import queue
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc
from PIL import Image
from tritonclient.utils import InferenceServerException


def bytes_input(name: str, elements: list[bytes]) -> tc.InferInput:
    tensor = tc.InferInput(name, [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=object))
    return tensor


def array_input(name: str, array: np.ndarray, datatype: str) -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def error_of(fn) -> dict:
    try:
        fn()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "OK", "message": ""}


def collect(client: tc.InferenceServerClient, requests: list[tuple], timeout: float = 120.0) -> list[dict]:
    """Send ``requests`` (model, inputs, kwargs) on one stream; responses until each request's final one."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    out, finals = [], 0
    try:
        for model, inputs, kwargs in requests:
            client.async_stream_infer(model, inputs, **kwargs)
        while finals < len(requests):
            result, error = answers.get(timeout=timeout)
            if error is not None:
                out.append({"error": error.message()})
                finals += 1
                continue
            response = result.get_response()
            params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in response.parameters.items()}
            outputs = {}
            for o in response.outputs:
                value = result.as_numpy(o.name)
                if o.datatype == "BYTES":
                    outputs[o.name] = [len(v) if o.name in ("IMAGE", "PREVIEW") else v.decode()
                                       for v in value.reshape(-1)]
                else:
                    outputs[o.name] = value.tolist()
            final = bool(params.get("triton_final_response"))
            finals += final
            out.append({"id": response.id, "params": params, "outputs": outputs, "final": final,
                        "image_size": (Image.open(io.BytesIO(result.as_numpy("IMAGE")[0])).size
                                       if "IMAGE" in outputs else None)})
    finally:
        client.stop_stream()
    return out


def main(vis_address: str, style_address: str, folder: str, auth_address: str, token: str) -> dict:
    inputs = Path(folder)
    a, b = (inputs / "a.png").read_bytes(), (inputs / "b.png").read_bytes()
    features = np.load(inputs / "features.npy").astype(np.float32)
    vis = tc.InferenceServerClient(vis_address)
    style = tc.InferenceServerClient(style_address)
    report: dict = {}

    report["health"] = {
        "live": vis.is_server_live(), "ready": vis.is_server_ready(), "style_ready": style.is_server_ready(),
        "classifier_ready": vis.is_model_ready("shapes-squeezenet"),
        "classifier_v1_ready": vis.is_model_ready("shapes-squeezenet", "1"),
        "captioner_ready": vis.is_model_ready("shapes-captioner"),
        "style_trunk_ready": style.is_model_ready("shapes-squeezenet"),
        "unknown_ready": vis.is_model_ready("no-such-model"),
        "captioner_on_style_ready": style.is_model_ready("shapes-captioner"),
    }
    server = vis.get_server_metadata()
    report["server"] = {"name": server.name, "version": server.version, "extensions": list(server.extensions)}
    report["metadata"] = {}
    for client, name in ((vis, "shapes-squeezenet"), (vis, "shapes-captioner"), (style, "shapes-squeezenet")):
        meta = client.get_model_metadata(name, as_json=True)
        config = client.get_model_config(name, as_json=True)["config"]
        key = f"{client is style and 'style:' or ''}{name}"
        report["metadata"][key] = {
            "versions": meta["versions"], "platform": meta["platform"],
            "inputs": [[t["name"], t["datatype"], [int(s) for s in t["shape"]]] for t in meta["inputs"]],
            "outputs": [[t["name"], t["datatype"], [int(s) for s in t["shape"]]] for t in meta["outputs"]],
            "config_inputs": [i["name"] for i in config["input"]],
            "decoupled": config.get("model_transaction_policy", {}).get("decoupled", False)}
    report["index"] = [[m["name"], m["version"], m["state"]]
                       for m in vis.get_model_repository_index(as_json=True).get("models", [])]

    # classification: IMAGE (two PNGs), PIXELS (the same pictures decoded), the classification extension
    result = vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a, b])])
    report["classify_image"] = result.as_numpy("PROBABILITIES").tolist()
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(x)).convert("RGB")) for x in (a, b)])
    result = vis.infer("shapes-squeezenet", [array_input("PIXELS", pixels, "UINT8")])
    report["classify_pixels"] = result.as_numpy("PROBABILITIES").tolist()
    result = vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a, b])],
                       outputs=[tc.InferRequestedOutput("PROBABILITIES", class_count=3)])
    report["classification"] = [[v.decode() for v in row] for row in result.as_numpy("PROBABILITIES")]
    result = vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a]), array_input("TARGET_CLASS",
                       np.array([3], np.int32), "INT32")], outputs=[tc.InferRequestedOutput("SALIENCY")])
    report["saliency"] = result.as_numpy("SALIENCY").tolist()
    report["saliency_outputs"] = [o.name for o in result.get_response().outputs]
    result = vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a, b])],
                       outputs=[tc.InferRequestedOutput("SALIENCY"), tc.InferRequestedOutput("PROBABILITIES")])
    report["saliency_predicted"] = result.as_numpy("SALIENCY").tolist()

    # captions: FEATURES rows and an IMAGE; a beam-search request
    result = vis.infer("shapes-captioner", [array_input("FEATURES", features, "FP32")])
    report["caption_features"] = {"CAPTION": [c.decode() for c in result.as_numpy("CAPTION")],
                                  "TOKENS": result.as_numpy("TOKENS").tolist(),
                                  "LOG_PROB": result.as_numpy("LOG_PROB").tolist()}
    result = vis.infer("shapes-captioner", [bytes_input("IMAGE", [a])], parameters={"beam_width": 3})
    report["caption_image_beam"] = [c.decode() for c in result.as_numpy("CAPTION")]

    # streams: caption tokens, then a style job with progress and previews, then an error and a recovery
    report["caption_stream"] = collect(vis, [("shapes-captioner", [array_input("FEATURES", features[:1], "FP32")],
                                              {"request_id": "cap-1"})])
    report["style_stream"] = collect(style, [(
        "shapes-squeezenet", [bytes_input("CONTENT", [a]), bytes_input("STYLE", [b])],
        {"request_id": "style-1", "parameters": {"iterations": 4, "image_size": 32, "style_size": 32,
                                                 "show_every": 2, "seed": 7}})])
    report["stream_error_then_ok"] = collect(vis, [
        ("shapes-captioner", [array_input("FEATURES", features[:1].astype(np.int32), "INT32")], {"request_id": "bad"}),
        ("shapes-squeezenet", [bytes_input("IMAGE", [a])], {"request_id": "good"})])
    # Triton's timeout parameter bounds each request of a stream alone: the long job fails, the next runs
    report["stream_timeout_then_ok"] = collect(style, [
        ("shapes-squeezenet", [bytes_input("CONTENT", [a]), bytes_input("STYLE", [b])],
         {"request_id": "slow", "timeout": 300_000, "parameters": {"iterations": 1000, "image_size": 128,
                                                                     "style_size": 128}}),
        ("shapes-squeezenet", [bytes_input("CONTENT", [a]), bytes_input("STYLE", [b])],
         {"request_id": "quick", "parameters": {"iterations": 2, "image_size": 32, "style_size": 32}})])

    # errors: status code and message of each refusal
    bad_dim = np.zeros((2, 5), np.float32)
    report["errors"] = {
        "features_int32": error_of(lambda: vis.infer("shapes-captioner", [array_input(
            "FEATURES", features.astype(np.int32), "INT32")])),
        "features_dim": error_of(lambda: vis.infer("shapes-captioner", [array_input("FEATURES", bad_dim, "FP32")])),
        "features_rank": error_of(lambda: vis.infer("shapes-captioner", [array_input(
            "FEATURES", features.reshape(-1), "FP32")])),
        "unknown_model": error_of(lambda: vis.infer("no-such-model", [bytes_input("IMAGE", [a])])),
        "unknown_input": error_of(lambda: vis.infer("shapes-squeezenet", [bytes_input("PICTURE", [a])])),
        "unknown_output": error_of(lambda: vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a])],
                                                     outputs=[tc.InferRequestedOutput("LOGITS")])),
        "unknown_parameter": error_of(lambda: vis.infer("shapes-captioner", [array_input("FEATURES", features,
                                                        "FP32")], parameters={"beam_widht": 3})),
        "not_an_image": error_of(lambda: vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [b"not a png"])])),
        "both_inputs": error_of(lambda: vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a]),
                                                  array_input("PIXELS", pixels, "UINT8")])),
        "target_out_of_range": error_of(lambda: vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a]),
                                        array_input("TARGET_CLASS", np.array([999], np.int32), "INT32")],
                                        outputs=[tc.InferRequestedOutput("SALIENCY")])),
        "pixels_channels": error_of(lambda: vis.infer("shapes-squeezenet", [array_input(
            "PIXELS", pixels[..., :2].copy(), "UINT8")])),
        "bad_version": error_of(lambda: vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a])],
                                                  model_version="x1")),
        "missing_version": error_of(lambda: vis.infer("shapes-squeezenet", [bytes_input("IMAGE", [a])],
                                                      model_version="99")),
        "style_iterations": error_of(lambda: style.infer("shapes-squeezenet", [
            bytes_input("CONTENT", [a]), bytes_input("STYLE", [b])], parameters={"iterations": 10 ** 9})),
        # Triton's timeout parameter (microseconds) on a job far longer than it
        "style_timeout": error_of(lambda: style.infer("shapes-squeezenet", [
            bytes_input("CONTENT", [a]), bytes_input("STYLE", [b])], timeout=300_000,
            parameters={"iterations": 1000, "image_size": 128, "style_size": 128})),
    }

    # a server with a bearer token: liveness and readiness are open, inference needs the token
    guarded = tc.InferenceServerClient(auth_address)
    report["auth"] = {
        "live": guarded.is_server_live(), "ready": guarded.is_server_ready(),
        "no_token": error_of(lambda: guarded.infer("shapes-squeezenet", [bytes_input("IMAGE", [a])])),
        "wrong_token": error_of(lambda: guarded.infer("shapes-squeezenet", [bytes_input("IMAGE", [a])],
                                                      headers={"authorization": "Bearer nope"})),
        "token": error_of(lambda: guarded.infer("shapes-squeezenet", [bytes_input("IMAGE", [a])],
                                                headers={"authorization": f"Bearer {token}"})),
    }
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])))
