"""Conversions between protobuf messages and domain values (numpy arrays, PIL images, manifests)."""

from __future__ import annotations

import json
import math

import numpy as np
from google.protobuf import timestamp_pb2

from pixelrpc.models.errors import InvalidInput, clip
from pixelrpc.models.imaging import encode_png
from pixelrpc.models.registry import Manifest
from pixelrpc.v1 import common_pb2, registry_pb2

DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32,
          "uint8": np.uint8}
# Little-endian wire dtypes, built once: a dtype made per call (``newbyteorder``) is a new object, and
# numpy looks its cast up again each time (about 0.2 ms a tensor).
_WIRE = {name: np.dtype(t).newbyteorder("<") for name, t in DTYPES.items()}
MAX_TENSOR_ELEMENTS = 1 << 26
MAX_TENSOR_RANK = 32


def tensor_to_numpy(pb: common_pb2.Tensor, field: str = "tensor") -> np.ndarray:
    """A Tensor message as a numpy array, its shape checked with Python integers before anything else.

    ``np.prod`` would overflow int64 silently (``[2**32, 2**32]`` multiplies to 0), so the element
    count is ``math.prod`` of Python ints; a dimension, the rank and the count are each bounded.
    """
    if pb.dtype not in DTYPES:
        raise InvalidInput(f"{field}.dtype {clip(pb.dtype)!r} is not one of {', '.join(DTYPES)}", field=f"{field}.dtype")
    shape = tuple(int(s) for s in pb.shape)
    if len(shape) > MAX_TENSOR_RANK:
        raise InvalidInput(f"{field}.shape has {len(shape)} dimensions, over the limit of {MAX_TENSOR_RANK}",
                           field=f"{field}.shape")
    if any(s < 0 for s in shape):
        raise InvalidInput(f"{field}.shape {list(shape)} has a negative dimension", field=f"{field}.shape")
    count = math.prod(shape)  # Python ints: exact, never wraps
    if count > MAX_TENSOR_ELEMENTS or any(s > MAX_TENSOR_ELEMENTS for s in shape):
        what = f"{count:,} elements" if count else f"a dimension of {max(shape):,}"
        raise InvalidInput(f"{field}.shape {list(shape)} has {what}, over the limit of "
                           f"{MAX_TENSOR_ELEMENTS:,} elements", field=f"{field}.shape")
    dtype = _WIRE[pb.dtype]
    expected = count * dtype.itemsize
    if len(pb.data) != expected:
        raise InvalidInput(
            f"{field}.data has {len(pb.data)} bytes but shape {list(shape)} of {pb.dtype} needs {expected}",
            field=f"{field}.data")
    return np.frombuffer(pb.data, dtype=dtype).reshape(shape).astype(DTYPES[pb.dtype])


def numpy_to_tensor(arr: np.ndarray) -> common_pb2.Tensor:
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name not in DTYPES:
        arr, name = arr.astype(np.float32), "float32"
    data = np.ascontiguousarray(arr, dtype=_WIRE[name]).tobytes()
    return common_pb2.Tensor(shape=list(arr.shape), dtype=name, data=data)


# PNGs a service renders for a response are encoded fast: zlib level 1 takes a fraction of the
# default level's time for a 224 x 224 picture and makes it only a little larger.
FAST_PNG = 1


def image_pb_from_pil(img, compress_level: int = FAST_PNG) -> common_pb2.Image:
    return common_pb2.Image(data=encode_png(img, compress_level), format_hint="png")


GOLDEN_STATES = {"none": registry_pb2.GOLDEN_STATE_NONE, "passed": registry_pb2.GOLDEN_STATE_PASSED,
                 "failed": registry_pb2.GOLDEN_STATE_FAILED}


def golden_pb(report) -> registry_pb2.GoldenStatus:
    """A GoldenReport (None: not run in this process) as a GoldenStatus."""
    if report is None:
        return registry_pb2.GoldenStatus()
    checked = timestamp_pb2.Timestamp()
    checked.FromNanoseconds(int(report.checked_at * 1e9))
    return registry_pb2.GoldenStatus(state=GOLDEN_STATES[report.state], examples=report.examples,
                                     failures=[f[:500] for f in report.failures], checked=checked)


def model_info(manifest: Manifest, *, loaded: bool, is_default: bool, golden=None,
               serving: bool = False) -> registry_pb2.ModelInfo:
    created = timestamp_pb2.Timestamp()
    if manifest.created:
        try:
            created.FromJsonString(manifest.created.replace("+00:00", "Z"))
        except ValueError:
            pass
    metadata = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                for k, v in manifest.metadata.items()}
    return registry_pb2.ModelInfo(
        name=manifest.name, version=manifest.version, tasks=list(manifest.tasks),
        framework=manifest.framework,
        files=[registry_pb2.ModelFile(name=f.name, sha256=f.sha256, size=f.size) for f in manifest.files],
        metadata=metadata, created=created, loaded=loaded, sha256=manifest.sha256, is_default=is_default,
        golden=golden_pb(golden), serving=serving)
