"""gRPC status -> HTTP: the Connect protocol's error JSON and status codes.

Connect (https://connectrpc.com/docs/protocol) spells an error ``{"code": "invalid_argument",
"message": ..., "details": [{"type": "google.rpc.BadRequest", "value": <base64>, "debug": {...}}]}``
and maps each gRPC code to one HTTP status; the V2 REST routes answer ``{"error": message}`` (what
KServe clients read) with the same fields beside it.
"""

from __future__ import annotations

import base64
import json

import grpc
from google.protobuf import json_format, symbol_database
from google.rpc import error_details_pb2, status_pb2  # noqa: F401 - registers the detail types

from pixelrpc.services.http.handlers import HttpAbort

HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def connect_code(code: grpc.StatusCode) -> str:
    """``INVALID_ARGUMENT`` -> ``invalid_argument``; Connect spells CANCELLED ``canceled``."""
    return "canceled" if code == grpc.StatusCode.CANCELLED else code.name.lower()


def _detail(any_pb) -> dict:
    out = {"type": any_pb.TypeName(),
           "value": base64.b64encode(any_pb.value).decode().rstrip("=")}  # Connect: unpadded base64
    try:
        message = symbol_database.Default().GetSymbol(any_pb.TypeName())()
        any_pb.Unpack(message)
        out["debug"] = json_format.MessageToDict(message)
    except KeyError:  # a detail type this process does not know: value only
        pass
    return out


def error_body(exc: HttpAbort) -> dict:
    """The Connect error object of a failed call (code, message, details with their JSON ``debug``)."""
    body: dict = {"code": connect_code(exc.code), "message": exc.status.message or exc.message}
    if exc.status.details:
        body["details"] = [_detail(d) for d in exc.status.details]
    return body


def error_response_parts(exc: HttpAbort) -> tuple[int, bytes, dict[str, str]]:
    """(HTTP status, JSON body, headers) of a failed unary call."""
    headers = {"x-request-id": exc.request_id} if exc.request_id else {}
    return HTTP_STATUS.get(exc.code, 500), json.dumps(error_body(exc)).encode(), headers


def code_from_number(number: int) -> grpc.StatusCode:
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def plain_abort(code: grpc.StatusCode, message: str, request_id: str = "", exc=None) -> HttpAbort:
    """An HttpAbort for a request refused before any handler ran (auth, body, route), with rich details."""
    from pixelrpc.services.errors import rich_status

    return HttpAbort(code, message, rich_status(code, message, exc, request_id), request_id)


def status_of(exc: HttpAbort) -> status_pb2.Status:
    return exc.status
