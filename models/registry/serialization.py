"""Safe (de)serialisation of weights: safetensors for numpy and torch, never pickle."""

from __future__ import annotations

import io

import numpy as np

from pixelrpc.models.errors import ModelCorrupt


def numpy_to_bytes(params: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in params.items()})


def numpy_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return dict(load(data))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelCorrupt(f"not a valid safetensors file: {exc}") from exc


def torch_to_bytes(state_dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in state_dict.items()})


def torch_from_bytes(data: bytes) -> dict:
    from safetensors.torch import load

    try:
        return dict(load(data))
    except Exception as exc:
        raise ModelCorrupt(f"not a valid safetensors file: {exc}") from exc


def torch_state_from_pth(data: bytes) -> dict:
    """A ``.pth`` state dict, loaded with ``weights_only=True`` (no arbitrary code)."""
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelCorrupt(f"not a loadable weights-only torch file: {exc}") from exc
    if not isinstance(obj, dict):
        raise ModelCorrupt("the torch file does not hold a state dict")
    return obj


def npz_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as exc:
        raise ModelCorrupt(f"not a valid .npz file: {exc}") from exc
