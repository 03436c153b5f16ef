"""KServe V2 (Open Inference Protocol) REST inference: JSON and binary tensors <-> the OIP request.

Routes (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/) are in
``app.py``; this module turns an infer body into the transport-free ``InferRequest`` of
``services/oip/models.py`` and an ``InferResult`` back into a body. The request itself is served by
the Open Inference Protocol's own servicer (``services/oip/server.py``, ``InferenceServicer.infer``):
the same routing, per-task adapters, ``timeout`` parameter and error messages as gRPC ModelInfer.

Inference bodies are JSON tensors, or Triton's binary tensor data extension (what tritonclient's HTTP
client sends by default): the ``Inference-Header-Content-Length`` header gives the JSON header's
length, the raw tensors follow it in input order, each input naming its size in the
``binary_data_size`` parameter; a BYTES tensor's elements are 4-byte little-endian lengths each
followed by the bytes (``tensors.decode_raw``). Outputs come back binary when requested
(``binary_data`` output parameter, or ``binary_data_output`` request parameter), the same way.
JSON has no bytes: encoded images (``models.IMAGE_TENSORS``) are base64 text in JSON, other BYTES
elements (captions, classification labels) UTF-8 text.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from pixelrpc.models.errors import InvalidInput, clip
from pixelrpc.services.oip import SERVICE_NAME  # noqa: F401 - the span name of ModelInfer (tracing)
from pixelrpc.services.oip.models import IMAGE_TENSORS, InferRequest, InferResult, parse_version
from pixelrpc.services.oip.tensors import (
    BYTES,
    DATATYPES,
    Tensor,
    check_shape,
    decode_raw,
    encode_raw,
    from_list,
)
from pixelrpc.services.runtime import Call, rpc

HEADER_LENGTH = "inference-header-content-length"


@dataclass
class Answer:
    """How to answer: outputs in binary (by name, else ``binary_all``) or as JSON."""

    binary_all: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_all)


# ---------------------------------------------------------------------------- request
def decode_request(body: bytes, header_length: str | None, model: str, version: int) -> tuple[InferRequest, Answer]:
    """(InferRequest, how to answer) from an infer body; INVALID_ARGUMENT naming what is wrong."""
    binary = b""
    if header_length is not None:
        length = int(header_length) if header_length.isascii() and header_length.isdigit() else -1
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
    parameters = _object(doc.get("parameters"), "parameters")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for item in doc["inputs"]:
        tensor, used = _decode_input(item, binary, offset)
        if tensor.name in inputs:
            raise InvalidInput(f"input {clip(tensor.name)!r} is sent twice", field=f"inputs[{clip(tensor.name)}]")
        inputs[tensor.name], offset = tensor, offset + used
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset:,} bytes of binary data that no input claims "
                           "(binary_data_size)", field="inputs")
    # Transport parameters (binary_data_output, binary_data) are this module's; the rest go to the adapter.
    answer = Answer(binary_all=bool(parameters.pop("binary_data_output", False)))
    outputs: dict[str, dict[str, Any]] = {}
    requested = doc.get("outputs") or []
    if not isinstance(requested, list):
        raise InvalidInput("'outputs' must be a list of {name, parameters}", field="outputs")
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output needs a 'name'", field="outputs")
        params = _object(item.get("parameters"), f"outputs[{clip(item['name'])}].parameters")
        if "binary_data" in params:
            answer.binary[item["name"]] = bool(params.pop("binary_data"))
        outputs[item["name"]] = params
    request_id = doc.get("id") or ""
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string", field="id")
    return InferRequest(model, version, request_id, inputs, outputs, parameters), answer


def _object(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{where}' must be a JSON object", field=where)
    return dict(value)


def _decode_input(item: Any, binary: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor (checked by ``tensors``: datatype, shape, sizes) and the binary bytes it used."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput("each input needs a 'name', a 'shape' and a 'datatype'", field="inputs")
    name = item["name"]
    where = f"inputs[{clip(name)}]"
    datatype, shape = item.get("datatype"), item.get("shape")
    if not isinstance(datatype, str):
        raise InvalidInput(f"input {clip(name)!r}: 'datatype' must be one of {', '.join(DATATYPES)}",
                           field=f"{where}.datatype")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise InvalidInput(f"input {clip(name)!r}: 'shape' must be a list of whole numbers", field=f"{where}.shape")
    shape = check_shape(name, datatype, shape)
    params = _object(item.get("parameters"), f"{where}.parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise InvalidInput(f"input {clip(name)!r} has both 'data' and binary_data_size: send it one way",
                               field=f"{where}.data")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input {clip(name)!r}: binary_data_size {clip(str(size))} is beyond the "
                               f"{len(binary) - offset:,} bytes of binary data left", field=f"{where}.parameters")
        return decode_raw(name, datatype, shape, binary[offset:offset + size]), size
    if "data" not in item:
        raise InvalidInput(f"input {clip(name)!r} has neither 'data' nor binary_data_size", field=f"{where}.data")
    values = _flatten(item["data"])
    if datatype == BYTES:
        values = [_bytes_element(v, name, i) for i, v in enumerate(values)]
    return from_list(name, datatype, shape, values), 0


def _flatten(data) -> list:
    """JSON tensor data, nested by dimension or flat, in row-major order."""
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


def _bytes_element(value, name: str, index: int) -> bytes:
    """A BYTES element sent as JSON: base64 text for an encoded image, else UTF-8 text."""
    if not isinstance(value, str):
        raise InvalidInput(f"input {clip(name)}[{index}]: BYTES elements sent as JSON must be strings",
                           field=f"inputs[{clip(name)}]")
    if name not in IMAGE_TENSORS:
        return value.encode()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"input {clip(name)}[{index}]: images sent as JSON must be base64 text (or use the "
                           "binary tensor extension)", field=f"inputs[{clip(name)}]") from None


# ---------------------------------------------------------------------------- response
def encode_response(request: InferRequest, answer: Answer, result: InferResult) -> tuple[bytes, dict[str, str]]:
    """(body, headers): the JSON answer, with the binary outputs after it when any were asked so."""
    docs, chunks = [], []
    for tensor in result.outputs:
        doc: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if answer.is_binary(tensor.name):
            raw = encode_raw(tensor)
            doc["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif tensor.datatype == BYTES:
            elements = tensor.data.reshape(-1).tolist()
            doc["data"] = ([base64.b64encode(e).decode() for e in elements] if tensor.name in IMAGE_TENSORS
                           else [e.decode("utf-8", "replace") for e in elements])
        else:
            doc["data"] = tensor.data.reshape(-1).tolist()
        docs.append(doc)
    out: dict[str, Any] = {"model_name": result.model, "model_version": str(result.version), "outputs": docs}
    if request.id:
        out["id"] = request.id
    if result.parameters:
        out["parameters"] = result.parameters
    header = json.dumps(out).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


class RestInference:
    """``ModelInfer`` for V2 REST under ``@rpc`` (request id, access log, metrics and errors as any RPC;
    method label ``ModelInfer``): the body is decoded inside the call, so a malformed one is counted
    and answered with the request id; ``InferenceServicer.infer`` does the rest."""

    def __init__(self, servicer):
        self.servicer = servicer  # services.oip.server.InferenceServicer, the one gRPC serves
        self.ctx = servicer.ctx  # the call begins here; InferenceServicer.locate routes it

    @rpc
    async def ModelInfer(self, raw: tuple[bytes, str | None, str, str | None], call: Call):  # noqa: N802
        body, header_length, model, version = raw
        request, answer = decode_request(body, header_length, model, parse_version(version or ""))
        return encode_response(request, answer, await self.servicer.infer(request, call))
