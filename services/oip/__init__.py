"""The Open Inference Protocol (KServe V2) for PixelRPC: tensors (``tensors``), per-task adapters
(``models``) and the gRPC ``inference.GRPCInferenceService`` (``server``). See docs/oip.md."""

from __future__ import annotations

SERVICE_NAME = "inference.GRPCInferenceService"


def add_to_server(server, contexts):
    """Serve ``inference.GRPCInferenceService`` for ``contexts`` (service name -> ServiceContext);
    returns its ``InferenceServicer`` (V2 REST, ``services/http/v2.py``, calls the same one)."""
    from pixelrpc.services.oip.server import add_to_server as add

    return add(server, contexts)
