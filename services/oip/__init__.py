"""The Open Inference Protocol (KServe V2) for PixelRPC: tensors (``tensors``), per-task adapters
(``models``) and the gRPC ``inference.GRPCInferenceService`` (``server``). See docs/oip.md."""

from __future__ import annotations

SERVICE_NAME = "inference.GRPCInferenceService"


def add_to_server(server, contexts) -> None:
    """Serve ``inference.GRPCInferenceService`` for ``contexts`` (service name -> ServiceContext)."""
    from pixelrpc.services.oip.server import add_to_server as add

    add(server, contexts)
