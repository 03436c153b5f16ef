"""Open Inference Protocol tensors <-> numpy, checked before anything is allocated.

KServe V2 (the Open Inference Protocol) sends a tensor as ``name``, ``datatype`` (``BOOL``, ``UINT8``
... ``FP64``, ``BYTES``), ``shape`` and its data, either in typed fields (gRPC ``InferTensorContents``,
JSON ``data``) or as raw little-endian bytes (gRPC ``raw_input_contents``, HTTP's binary tensor
extension). A ``BYTES`` tensor in raw form is each element as a 4-byte little-endian length followed
by its bytes (Triton's convention, which tritonclient writes).

This module knows no protobuf class (it reads the messages by their field names only), so the gRPC
servicer (``services/oip/server.py``) and an HTTP front end share it: ``decode_raw`` / ``from_list``
/ ``encode_raw`` are transport-free; ``inputs_of`` and ``write_outputs`` speak the gRPC messages.

Every refusal is ``InvalidInput`` (INVALID_ARGUMENT) naming the tensor. Shapes are checked with
Python integers (``math.prod`` never wraps) and bounded by ``MAX_TENSOR_ELEMENTS`` before any array is
made; the bytes sent must match the shape exactly.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelrpc.models.errors import InvalidInput, clip
from pixelrpc.services.convert import MAX_TENSOR_ELEMENTS, MAX_TENSOR_RANK

# OIP datatype -> little-endian numpy dtype (BYTES is special: an object array of ``bytes``).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
DATATYPES = (*DTYPES, BYTES)
# The InferTensorContents field that carries each datatype (gRPC typed form).
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents", BYTES: "bytes_contents"}
_LENGTH = struct.Struct("<I")


@dataclass
class Tensor:
    """One input or output tensor: ``data`` is a numpy array of ``shape`` (BYTES: dtype object, bytes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


def check_shape(name: str, datatype: str, shape: Iterable[int]) -> tuple[int, ...]:
    """The tensor's shape as Python ints, its datatype known; refused before anything is allocated."""
    if datatype not in DATATYPES:
        raise InvalidInput(f"input {clip(name)!r}: datatype {clip(datatype)!r} is not one of "
                           f"{', '.join(DATATYPES)}", field=f"inputs[{clip(name)}].datatype")
    shape = tuple(int(s) for s in shape)
    where = f"inputs[{clip(name)}].shape"
    if len(shape) > MAX_TENSOR_RANK:
        raise InvalidInput(f"input {clip(name)!r}: shape has {len(shape)} dimensions, over the limit of "
                           f"{MAX_TENSOR_RANK}", field=where)
    if any(s < 0 for s in shape):
        raise InvalidInput(f"input {clip(name)!r}: shape {list(shape)} has a negative dimension", field=where)
    count = math.prod(shape)
    if count > MAX_TENSOR_ELEMENTS or any(s > MAX_TENSOR_ELEMENTS for s in shape):
        raise InvalidInput(f"input {clip(name)!r}: shape {list(shape)} is over the limit of "
                           f"{MAX_TENSOR_ELEMENTS:,} elements", field=where)
    return shape


def decode_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A tensor from its raw little-endian bytes (BYTES: length-prefixed elements)."""
    shape = check_shape(name, datatype, shape)
    count = math.prod(shape)
    if datatype == BYTES:
        return Tensor(name, datatype, shape, split_bytes(name, raw, count).reshape(shape))
    dtype = DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(f"input {clip(name)!r}: {len(raw)} bytes sent, but shape {list(shape)} of {datatype} "
                           f"needs {expected}", field=f"inputs[{clip(name)}]")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def from_list(name: str, datatype: str, shape: Sequence[int], values: Sequence) -> Tensor:
    """A tensor from its elements in row-major order (gRPC typed contents; JSON ``data`` flattened).
    BYTES elements may be ``bytes`` or ``str`` (UTF-8)."""
    shape = check_shape(name, datatype, shape)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input {clip(name)!r}: {len(values)} elements sent, but shape {list(shape)} has "
                           f"{count}", field=f"inputs[{clip(name)}]")
    if datatype == BYTES:
        arr = np.empty(count, dtype=object)
        for i, v in enumerate(values):
            arr[i] = v.encode() if isinstance(v, str) else bytes(v)
        return Tensor(name, datatype, shape, arr.reshape(shape))
    try:
        arr = np.asarray(values, dtype=DTYPES[datatype])
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"input {clip(name)!r}: elements are not {datatype} values ({clip(str(exc))})",
                           field=f"inputs[{clip(name)}]") from None
    return Tensor(name, datatype, shape, arr.reshape(shape))


def split_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """``count`` length-prefixed elements of a raw BYTES tensor, as an object array of bytes."""
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidInput(f"input {clip(name)!r}: the raw BYTES data ends after {i} of {count} elements "
                               "(each element is a 4-byte little-endian length, then its bytes)",
                               field=f"inputs[{clip(name)}]")
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise InvalidInput(f"input {clip(name)!r}: element {i} claims {length:,} bytes but only "
                               f"{len(raw) - pos:,} remain", field=f"inputs[{clip(name)}]")
        out[i] = bytes(view[pos:pos + length])
        pos += length
    if pos != len(raw):
        raise InvalidInput(f"input {clip(name)!r}: {len(raw) - pos:,} bytes left over after {count} BYTES "
                           "elements", field=f"inputs[{clip(name)}]")
    return out


def join_bytes(elements: Iterable[bytes]) -> bytes:
    """Raw form of a BYTES tensor: each element as a 4-byte little-endian length and its bytes."""
    parts = []
    for e in elements:
        parts.append(_LENGTH.pack(len(e)))
        parts.append(e)
    return b"".join(parts)


def encode_raw(tensor: Tensor) -> bytes:
    """The raw little-endian bytes of an output tensor (BYTES: length-prefixed)."""
    if tensor.datatype == BYTES:
        return join_bytes(tensor.data.reshape(-1).tolist())
    return np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype]).tobytes()


def bytes_tensor(name: str, elements: Sequence[bytes | str], shape: Sequence[int] | None = None) -> Tensor:
    arr = np.empty(len(elements), dtype=object)
    for i, e in enumerate(elements):
        arr[i] = e.encode() if isinstance(e, str) else bytes(e)
    shape = tuple(shape) if shape is not None else (len(elements),)
    return Tensor(name, BYTES, shape, arr.reshape(shape))


def numeric_tensor(name: str, datatype: str, array) -> Tensor:
    arr = np.ascontiguousarray(np.asarray(array), dtype=DTYPES[datatype])
    return Tensor(name, datatype, tuple(arr.shape), arr)


# ---------------------------------------------------------------------- parameters
def parameter_value(param) -> Any:
    """The Python value of an ``InferParameter`` message (bool, int, str or float)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def parameters_of(params) -> dict[str, Any]:
    """A map<string, InferParameter> as a dict of Python values."""
    return {key: parameter_value(value) for key, value in params.items()}


def set_parameter(params, key: str, value: Any) -> None:
    """Set ``params[key]`` (a map<string, InferParameter>) from a Python value."""
    slot = params[key]
    if isinstance(value, bool):
        slot.bool_param = value
    elif isinstance(value, int):
        slot.int64_param = value
    elif isinstance(value, float):
        slot.double_param = value
    else:
        slot.string_param = str(value)


# ---------------------------------------------------------------------- gRPC messages
def inputs_of(request) -> dict[str, Tensor]:
    """The input tensors of a ``ModelInferRequest``, by name (raw or typed contents)."""
    raw = request.raw_input_contents
    if len(raw) and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send "
                           "one per input, in order, or none", field="raw_input_contents")
    out: dict[str, Tensor] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in out:
            raise InvalidInput(f"input {clip(name)!r} is sent twice", field=f"inputs[{clip(name)}]")
        if len(raw):
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {clip(name)!r} has contents although raw_input_contents is used: "
                                   "send every input one way", field=f"inputs[{clip(name)}].contents")
            decoded = decode_raw(name, tensor.datatype, tensor.shape, raw[i])
        else:
            datatype = tensor.datatype
            check_shape(name, datatype, tensor.shape)
            values = getattr(tensor.contents, CONTENTS_FIELD.get(datatype, "bytes_contents"), ())
            if datatype == "FP16":
                raise InvalidInput(f"input {clip(name)!r}: FP16 has no typed contents field; send it in "
                                   "raw_input_contents", field=f"inputs[{clip(name)}].datatype")
            decoded = from_list(name, datatype, tensor.shape, values)
        decoded.parameters = parameters_of(tensor.parameters)
        out[name] = decoded
    return out


def write_outputs(response, outputs: Sequence[Tensor]) -> None:
    """Append ``outputs`` to a ``ModelInferResponse`` in raw form (``raw_output_contents``), as Triton does."""
    for tensor in outputs:
        out = response.outputs.add()
        out.name = tensor.name
        out.datatype = tensor.datatype
        out.shape.extend(tensor.shape)
        for key, value in tensor.parameters.items():
            set_parameter(out.parameters, key, value)
        response.raw_output_contents.append(encode_raw(tensor))
