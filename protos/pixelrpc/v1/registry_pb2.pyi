import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pixelrpc.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GoldenState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GOLDEN_STATE_UNSPECIFIED: _ClassVar[GoldenState]
    GOLDEN_STATE_NONE: _ClassVar[GoldenState]
    GOLDEN_STATE_PASSED: _ClassVar[GoldenState]
    GOLDEN_STATE_FAILED: _ClassVar[GoldenState]
GOLDEN_STATE_UNSPECIFIED: GoldenState
GOLDEN_STATE_NONE: GoldenState
GOLDEN_STATE_PASSED: GoldenState
GOLDEN_STATE_FAILED: GoldenState

class ListModelsRequest(_message.Message):
    __slots__ = ("task", "all_versions")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    task: str
    all_versions: bool
    def __init__(self, task: _Optional[str] = ..., all_versions: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "broken")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BROKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    broken: _containers.RepeatedCompositeFieldContainer[BrokenModel]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., broken: _Optional[_Iterable[_Union[BrokenModel, _Mapping]]] = ...) -> None: ...

class BrokenModel(_message.Message):
    __slots__ = ("name", "version", "code", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    code: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GoldenStatus(_message.Message):
    __slots__ = ("state", "examples", "failures", "checked")
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    state: GoldenState
    examples: int
    failures: _containers.RepeatedScalarFieldContainer[str]
    checked: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[GoldenState, str]] = ..., examples: _Optional[int] = ..., failures: _Optional[_Iterable[str]] = ..., checked: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ModelFile(_message.Message):
    __slots__ = ("name", "sha256", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "tasks", "framework", "files", "metadata", "created", "loaded", "sha256", "is_default", "golden", "serving")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    tasks: _containers.RepeatedScalarFieldContainer[str]
    framework: str
    files: _containers.RepeatedCompositeFieldContainer[ModelFile]
    metadata: _containers.ScalarMap[str, str]
    created: _timestamp_pb2.Timestamp
    loaded: bool
    sha256: str
    is_default: bool
    golden: GoldenStatus
    serving: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., tasks: _Optional[_Iterable[str]] = ..., framework: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ModelFile, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., loaded: _Optional[bool] = ..., sha256: _Optional[str] = ..., is_default: _Optional[bool] = ..., golden: _Optional[_Union[GoldenStatus, _Mapping]] = ..., serving: _Optional[bool] = ...) -> None: ...
