from pixelrpc.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_image_bytes", "max_image_pixels", "max_iterations", "max_image_side", "queue_depth", "max_concurrency", "max_image_aspect", "max_image_upscale", "max_request_pixels", "max_pixels_in_flight", "stream_stall_seconds", "mutual_tls")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIDE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_ASPECT_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_UPSCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    STREAM_STALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MUTUAL_TLS_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    max_iterations: int
    max_image_side: int
    queue_depth: int
    max_concurrency: int
    max_image_aspect: float
    max_image_upscale: float
    max_request_pixels: int
    max_pixels_in_flight: int
    stream_stall_seconds: float
    mutual_tls: bool
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_iterations: _Optional[int] = ..., max_image_side: _Optional[int] = ..., queue_depth: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., max_image_aspect: _Optional[float] = ..., max_image_upscale: _Optional[float] = ..., max_request_pixels: _Optional[int] = ..., max_pixels_in_flight: _Optional[int] = ..., stream_stall_seconds: _Optional[float] = ..., mutual_tls: _Optional[bool] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("version", "services", "device", "limits", "auth_required", "tls", "meta", "registry", "readiness")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    READINESS_FIELD_NUMBER: _ClassVar[int]
    version: str
    services: _containers.RepeatedScalarFieldContainer[str]
    device: str
    limits: Limits
    auth_required: bool
    tls: bool
    meta: _common_pb2.ResponseMeta
    registry: RegistryStatus
    readiness: _containers.RepeatedCompositeFieldContainer[ServiceReadiness]
    def __init__(self, version: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., auth_required: _Optional[bool] = ..., tls: _Optional[bool] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ..., registry: _Optional[_Union[RegistryStatus, _Mapping]] = ..., readiness: _Optional[_Iterable[_Union[ServiceReadiness, _Mapping]]] = ...) -> None: ...

class RegistryStatus(_message.Message):
    __slots__ = ("state", "healthy", "message")
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: str
    healthy: bool
    message: str
    def __init__(self, state: _Optional[str] = ..., healthy: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ServiceReadiness(_message.Message):
    __slots__ = ("service", "ready", "reason")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    service: str
    ready: bool
    reason: str
    def __init__(self, service: _Optional[str] = ..., ready: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class DescribeImageRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ...) -> None: ...

class DescribeImageResponse(_message.Message):
    __slots__ = ("format", "width", "height", "mode", "accepted", "reason", "meta")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    format: str
    width: int
    height: int
    mode: str
    accepted: bool
    reason: str
    meta: _common_pb2.ResponseMeta
    def __init__(self, format: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., mode: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...
