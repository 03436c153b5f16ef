"""The one table that maps domain errors to gRPC status codes, and rich error details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from pixelrpc.models import errors as E

STATUS_FOR_ERROR: dict[type[E.PixelRPCError], grpc.StatusCode] = {
    E.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    E.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    E.ModelCorrupt: grpc.StatusCode.DATA_LOSS,
    E.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    E.RegistryUnavailable: grpc.StatusCode.UNAVAILABLE,
    E.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    E.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    E.RegistryConflict: grpc.StatusCode.ALREADY_EXISTS,
    E.Cancelled: grpc.StatusCode.CANCELLED,
    E.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_FOR_ERROR.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(code: grpc.StatusCode, message: str, exc: BaseException | None = None,
                request_id: str = "") -> status_pb2.Status:
    """A google.rpc.Status with BadRequest field violations and the request id as RequestInfo."""
    details = []
    violations = getattr(exc, "violations", None) or []
    if violations:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ])
        details.append(bad)
    if isinstance(exc, E.Overloaded | E.LimitExceeded):
        details.append(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject="server", description=message)
        ]))
    if isinstance(exc, E.Overloaded):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(200)
        details.append(retry)
    if request_id:
        details.append(error_details_pb2.RequestInfo(request_id=request_id))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
