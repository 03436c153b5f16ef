"""The one table that maps domain errors to gRPC status codes, rich error details, and the one way a
call is failed (``abort``): status code, message, ``google.rpc.Status`` details and ``x-request-id``
all in the trailers.

Messages and details are bounded here whatever raised them: a status travels in trailers twice (the
``grpc-message`` text and the base64 ``grpc-status-details-bin``), and trailers over the channel's
metadata limit reach the client as RESOURCE_EXHAUSTED instead of the real error. Call sites clip what
they echo of the caller's input with ``clip`` (``pixelrpc.models.errors``); these caps are the net.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from pixelrpc.models import errors as E
from pixelrpc.models.errors import clip

REQUEST_ID_KEY = "x-request-id"
DETAILS_KEY = "grpc-status-details-bin"
MAX_MESSAGE_CHARS = 1000  # a status message, and each field violation's description
MAX_FIELD_CHARS = 200  # a field violation's field path
MAX_VIOLATIONS = 16

STATUS_FOR_ERROR: dict[type[E.PixelRPCError], grpc.StatusCode] = {
    E.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    E.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    E.ModelCorrupt: grpc.StatusCode.DATA_LOSS,
    E.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    E.RegistryUnavailable: grpc.StatusCode.UNAVAILABLE,
    E.WorkerLost: grpc.StatusCode.UNAVAILABLE,
    E.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    E.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    E.RegistryConflict: grpc.StatusCode.ALREADY_EXISTS,
    E.Cancelled: grpc.StatusCode.CANCELLED,
    E.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    E.StreamStalled: grpc.StatusCode.ABORTED,
}


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_FOR_ERROR.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(code: grpc.StatusCode, message: str, exc: BaseException | None = None,
                request_id: str = "") -> status_pb2.Status:
    """A google.rpc.Status with BadRequest field violations and the request id as RequestInfo.

    Also the shape of a CaptionStream item's error, so a client reads both the same way.
    """
    message = clip(message, MAX_MESSAGE_CHARS)
    details = []
    violations = getattr(exc, "violations", None) or []
    if violations:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=clip(v.field, MAX_FIELD_CHARS),
                                                        description=clip(v.description, MAX_MESSAGE_CHARS))
            for v in violations[:MAX_VIOLATIONS]
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


def status_trailers(status: status_pb2.Status, request_id: str = "") -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata of a failed call: ``x-request-id`` and the status with its details."""
    trailers: list[tuple[str, str | bytes]] = [(DETAILS_KEY, status.SerializeToString())]
    if request_id:
        trailers.insert(0, (REQUEST_ID_KEY, request_id))
    return tuple(trailers)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, *,
                exc: BaseException | None = None, request_id: str = ""):
    """Fail the call with ``code``, the (bounded) message, rich details and the request id.

    grpc's ``abort_with_status`` replaces the trailing metadata a handler set earlier, which lost
    ``x-request-id`` on every failed call; here it is part of the status's own trailers.
    Raises grpc's AbortError, like ``context.abort``.
    """
    status = rich_status(code, message, exc, request_id)
    await context.abort(code, status.message, trailing_metadata=status_trailers(status, request_id))
