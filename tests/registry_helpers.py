"""Helpers for the registry fault, golden and readiness tests: a tiny real captioner, raw stubs."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixelrpc.models.registry import GOLDEN_FILE, golden_files
from pixelrpc.v1 import (
    captioning_pb2,
    captioning_pb2_grpc,
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
)

WORDS = ["<NULL>", "<START>", "<END>", "a", "red", "blue", "circle", "square", "big", "small"]
DIM = 8
FEATURES = [np.linspace(-1.0, 1.0, DIM) * (k + 1) for k in range(3)]


def tiny_captioner(seed: int = 0):
    from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN

    return CaptioningRNN({w: i for i, w in enumerate(WORDS)}, input_dim=DIM, wordvec_dim=8, hidden_dim=16,
                         cell_type="rnn", seed=seed)


def captioner_golden(model) -> dict[str, bytes]:
    examples = [{"name": f"vector {k}", "kind": "captioning",
                 "inputs": {"features": [float(x) for x in f], "max_length": 6},
                 "tolerance": {"logprobs": 1e-6}} for k, f in enumerate(FEATURES)]
    return golden_files(model, examples)


def publish_captioner(registry, name: str = "tiny-captioner", *, seed: int = 0, golden_seed: int | None = 0,
                      version: int | None = None):
    """A real (tiny, random) captioner; its golden examples are computed with the weights of
    ``golden_seed`` (None: none). A ``golden_seed`` other than ``seed`` gives a version that fails them,
    like a model whose weights or loader went wrong."""
    from pixelrpc.models.captioning.captioning_rnn import save_to_registry

    extra = captioner_golden(tiny_captioner(golden_seed)) if golden_seed is not None else {}
    if version is not None:  # save_to_registry takes the next version; publish it ourselves
        from pixelrpc.models.registry.serialization import numpy_to_bytes

        model = tiny_captioner(seed)
        return registry.publish(name, {"params.safetensors": numpy_to_bytes(model.params), **extra},
                                tasks=("captioning",), framework="numpy",
                                metadata={**model.config(), "encoder": None}, version=version)
    return save_to_registry(tiny_captioner(seed), registry, name, extra_files=extra)


def golden_json(registry, manifest) -> dict:
    return json.loads(registry.read_file(manifest, GOLDEN_FILE))


def caption_request(name: str = "", version: int = 0, k: int = 0) -> captioning_pb2.CaptionRequest:
    f = np.asarray(FEATURES[k], dtype=np.float32)
    return captioning_pb2.CaptionRequest(job=captioning_pb2.CaptionJob(
        model=common_pb2.ModelRef(name=name, version=version),
        features=common_pb2.Tensor(shape=[DIM], dtype="float32", data=f.tobytes()),
        options=captioning_pb2.CaptionOptions(strategy=captioning_pb2.DECODING_STRATEGY_GREEDY, max_length=6)))


class Stubs:
    """Raw gRPC stubs of one server (the tests look at status codes and new fields directly)."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.registry = registry_pb2_grpc.ModelRegistryStub(self.channel)
        self.info = server_pb2_grpc.ServerInfoStub(self.channel)
        self.captioning = captioning_pb2_grpc.CaptioningServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def status(self, service: str = "") -> str:
        resp = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_status(self, service: str, want: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while (got := self.status(service)) != want:
            assert time.monotonic() < deadline, f"{service or 'server'} still {got}, expected {want}"
            time.sleep(0.05)

    def code(self, rpc, request) -> grpc.StatusCode:
        try:
            rpc(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def list_models(self, **kw) -> registry_pb2.ListModelsResponse:
        return self.registry.ListModels(registry_pb2.ListModelsRequest(**kw), timeout=10)

    def get_model(self, name: str, version: int = 0) -> registry_pb2.ModelInfo:
        return self.registry.GetModel(registry_pb2.GetModelRequest(
            model=common_pb2.ModelRef(name=name, version=version)), timeout=10).model

    def server_info(self) -> server_pb2.GetServerInfoResponse:
        return self.info.GetServerInfo(server_pb2.GetServerInfoRequest(), timeout=10)

    def caption(self, name: str = "", version: int = 0, k: int = 0) -> captioning_pb2.CaptionResult:
        return self.captioning.Caption(caption_request(name, version, k), timeout=10).result


def publish_tiny_encoder(tmp_path_factory):
    """A fresh registry holding ``tiny-encoder``: SqueezeNet features at 32 px, random weights (seed 0).
    Returns ``(registry, encoder manifest)``."""
    import torch

    from pixelrpc.models import zoo
    from pixelrpc.models.registry import Registry

    registry = Registry(tmp_path_factory.mktemp("registry"))
    torch.manual_seed(0)
    encoder = zoo.publish_squeezenet(registry, "tiny-encoder", zoo.build_squeezenet_features().eval(),
                                     class_names=[], tasks=("feature-extraction",), input_size=32)
    return registry, encoder
