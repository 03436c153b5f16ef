"""Client-side exceptions: one per gRPC status, each naming the status and the server's message."""

from __future__ import annotations

import grpc


class RpcError(Exception):
    """A failed call. ``code`` is the grpc.StatusCode, ``details`` the server's message,
    ``request_id`` the server's request id (for finding the call in the server log),
    ``violations`` the BadRequest field violations as (field, description) pairs."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, details: str, *, request_id: str = "",
                 violations: list[tuple[str, str]] | None = None):
        self.code = code
        self.details = details
        self.request_id = request_id
        self.violations = list(violations or [])
        super().__init__(f"{code.name}: {details}")


class InvalidArgument(RpcError): ...
class NotFound(RpcError): ...
class Unauthenticated(RpcError): ...
class PermissionDenied(RpcError): ...
class ResourceExhausted(RpcError): ...
class DeadlineExceeded(RpcError): ...
class Unavailable(RpcError): ...
class FailedPrecondition(RpcError): ...
class Cancelled(RpcError): ...
class Internal(RpcError): ...
class DataLoss(RpcError): ...


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


def error_class(code: grpc.StatusCode | str) -> type[RpcError]:
    """The RpcError subclass for a status code (a grpc.StatusCode or its name, e.g. "NOT_FOUND")."""
    if isinstance(code, str):
        code = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, RpcError)


def _code_from_number(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def _status_details(status) -> tuple[str, list[tuple[str, str]]]:
    """(request id, field violations) from a google.rpc.Status's BadRequest and RequestInfo details."""
    from google.rpc import error_details_pb2

    request_id, violations = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR) and not request_id:
            info = error_details_pb2.RequestInfo()
            detail.Unpack(info)
            request_id = info.request_id
    return request_id, violations


def from_status(status) -> RpcError:
    """The RpcError subclass for a ``google.rpc.Status`` (e.g. a failed CaptionStream item)."""
    code = _code_from_number(status.code)
    request_id, violations = _status_details(status)
    return _BY_CODE.get(code, RpcError)(code, status.message or code.name, request_id=request_id,
                                        violations=violations)


def from_grpc(exc: grpc.RpcError) -> RpcError:
    """Convert a grpc error (sync or aio) into the matching RpcError subclass."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    request_id = ""
    violations: list[tuple[str, str]] = []
    try:
        trailing = exc.trailing_metadata() or ()
    except Exception:  # noqa: BLE001
        trailing = ()
    for key, value in trailing:
        if key == "x-request-id":
            request_id = value
    try:
        from grpc_status import rpc_status

        status = rpc_status.from_call(exc) if hasattr(exc, "trailing_metadata") else None
        if status is not None:
            detail_id, violations = _status_details(status)
            request_id = request_id or detail_id
    except Exception:  # noqa: BLE001 - rich details are a bonus, never a reason to fail
        pass
    cls = _BY_CODE.get(code, RpcError)
    return cls(code, details or code.name, request_id=request_id, violations=violations)
