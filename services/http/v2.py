"""KServe V2 (Open Inference Protocol) REST: health, metadata, readiness and inference.

Routes (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/):
``GET /v2/health/live``, ``GET /v2/health/ready`` (no token needed), ``GET /v2``,
``GET /v2/models/{name}[/versions/{v}]``, ``GET .../ready``, ``POST .../infer``.

Inference bodies are JSON tensors, or Triton's binary tensor data extension (what tritonclient's HTTP
client sends by default): the ``Inference-Header-Content-Length`` header gives the JSON header's
length, the raw tensors follow it in input order, each input naming its size in the
``binary_data_size`` parameter; a BYTES tensor's elements are 4-byte little-endian lengths each
followed by the bytes. Outputs come back binary when requested (``binary_data`` output parameter, or
``binary_data_output`` request parameter), the same way.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import grpc
import numpy as np

from pixelrpc.models.errors import InvalidInput, ModelNotFound, clip
from pixelrpc.services.http.infer import InferRequest

HEADER_LENGTH = "inference-header-content-length"
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}
NAMES = {np.dtype(v).name: k for k, v in DTYPES.items() if k != "BYTES"}
MAX_ELEMENTS = 1 << 28


def parse_version(version: str | None) -> int:
    if version in (None, ""):
        return 0
    try:
        value = int(version)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidInput(f"model version {clip(str(version))!r} is not a whole number >= 1", field="version")
    return value


# ---------------------------------------------------------------------------- request
def decode_request(body: bytes, header_length: str | None, model_name: str, version: int) -> tuple[InferRequest, dict]:
    """(InferRequest, how to answer) from an infer body; INVALID_ARGUMENT naming what is wrong."""
    binary = b""
    if header_length:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {clip(header_length)!r} does not fit a body of "
                               f"{len(body)} bytes", field="Inference-Header-Content-Length")
        body, binary = body[:length], body[length:]
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {clip(str(exc))}", field="body") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InvalidInput("the inference request must be a JSON object with an 'inputs' list", field="inputs")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object", field="parameters")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in doc["inputs"]:
        name, arr, used = _decode_input(item, binary, offset)
        if name in inputs:
            raise InvalidInput(f"input {clip(name)} is given twice", field=f"inputs[{clip(name)}]")
        inputs[name], offset = arr, offset + used
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} bytes of binary data that no input claims "
                           "(binary_data_size)", field="inputs")
    outputs: dict[str, dict] = {}
    binary_all = bool(parameters.pop("binary_data_output", False))
    binary_out: dict[str, bool] = {}
    for item in doc.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output needs a 'name'", field="outputs")
        params = item.get("parameters") or {}
        outputs[item["name"]] = params
        binary_out[item["name"]] = bool(params.get("binary_data", binary_all))
    request = InferRequest(model_name=model_name, version=version, inputs=inputs, outputs=outputs,
                           parameters=parameters, id=str(doc.get("id") or ""))
    return request, {"binary_all": binary_all, "binary": binary_out}


def _decode_input(item: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput("each input needs a 'name', a 'shape' and a 'datatype'", field="inputs")
    name = item["name"]
    where = f"inputs[{clip(name)}]"
    datatype, shape = item.get("datatype"), item.get("shape")
    if datatype not in DTYPES:
        raise InvalidInput(f"input {clip(name)}: datatype {clip(str(datatype))!r} is not one of "
                           f"{', '.join(DTYPES)}", field=f"{where}.datatype")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape) or len(shape) > 8:
        raise InvalidInput(f"input {clip(name)}: shape must be a list of at most 8 whole numbers >= 0",
                           field=f"{where}.shape")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"input {clip(name)}: {count:,} elements is over the limit of {MAX_ELEMENTS:,}",
                           field=f"{where}.shape")
    size = (item.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input {clip(name)}: binary_data_size {clip(str(size))} is beyond the body",
                               field=f"{where}.parameters.binary_data_size")
        raw = binary[offset:offset + size]
        if datatype == "BYTES":
            arr = _unpack_bytes(raw, name, count)
        else:
            dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
            if len(raw) != count * dtype.itemsize:
                raise InvalidInput(f"input {clip(name)}: {len(raw)} bytes of binary data, but shape {shape} of "
                                   f"{datatype} needs {count * dtype.itemsize}", field=f"{where}.parameters")
            arr = np.frombuffer(raw, dtype=dtype).astype(DTYPES[datatype])
        return name, arr.reshape(shape), size
    data = item.get("data")
    if data is None:
        raise InvalidInput(f"input {clip(name)} has neither 'data' nor binary_data_size", field=f"{where}.data")
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(f"input {clip(name)}: {len(flat)} data elements, but shape {shape} needs {count}",
                           field=f"{where}.data")
    try:
        if datatype == "BYTES":
            arr = np.empty(count, dtype=object)
            arr[:] = [v if isinstance(v, str) else str(v) for v in flat]
        else:
            arr = np.asarray(flat, dtype=DTYPES[datatype])
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"input {clip(name)}: data are not all {datatype} values", field=f"{where}.data") from None
    return name, arr.reshape(shape), 0


def _flatten(data) -> list:
    if not isinstance(data, list):
        return [data]
    out: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _unpack_bytes(raw: bytes, name: str, count: int) -> np.ndarray:
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            break
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            break
        out.append(raw[pos:pos + length])
        pos += length
    if pos != len(raw) or len(out) != count:
        raise InvalidInput(f"input {clip(name)}: the binary BYTES data do not hold {count} length-prefixed "
                           "elements", field=f"inputs[{clip(name)}].parameters.binary_data_size")
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr


# ---------------------------------------------------------------------------- response
def datatype_of(arr: np.ndarray) -> str:
    return "BYTES" if arr.dtype.kind in "OSU" else NAMES[arr.dtype.name]


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def encode_response(request: InferRequest, how: dict, outputs: dict[str, np.ndarray], model_name: str,
                    version: int) -> tuple[bytes, dict[str, str]]:
    """(body, headers): the JSON answer, with the binary outputs after it when any were asked so."""
    out_docs, chunks = [], []
    for name, arr in outputs.items():
        arr = np.asarray(arr)
        doc: dict[str, Any] = {"name": name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        if how["binary"].get(name, how["binary_all"]):
            if doc["datatype"] == "BYTES":
                raw = b"".join(struct.pack("<I", len(b)) + b for b in map(_as_bytes, arr.ravel()))
            else:
                raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            doc["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif doc["datatype"] == "BYTES":
            doc["data"] = [_as_bytes(v).decode("utf-8", "replace") for v in arr.ravel()]
        else:
            doc["data"] = arr.ravel().tolist()
        out_docs.append(doc)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": str(version) if version else "",
                              "outputs": out_docs}
    if request.id:
        answer["id"] = request.id
    header = json.dumps(answer).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}


def model_not_served(name: str, service: str) -> ModelNotFound:
    return ModelNotFound(f"model {clip(name)!r} is not served over the Open Inference Protocol by the "
                         f"{service} service (see GET /v2/models/<name> on each service)")


UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
