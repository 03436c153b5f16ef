from pixelrpc.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StyleInit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STYLE_INIT_UNSPECIFIED: _ClassVar[StyleInit]
    STYLE_INIT_CONTENT: _ClassVar[StyleInit]
    STYLE_INIT_RANDOM: _ClassVar[StyleInit]

class StyleOptimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STYLE_OPTIMIZER_UNSPECIFIED: _ClassVar[StyleOptimizer]
    STYLE_OPTIMIZER_ADAM: _ClassVar[StyleOptimizer]
    STYLE_OPTIMIZER_LBFGS: _ClassVar[StyleOptimizer]
STYLE_INIT_UNSPECIFIED: StyleInit
STYLE_INIT_CONTENT: StyleInit
STYLE_INIT_RANDOM: StyleInit
STYLE_OPTIMIZER_UNSPECIFIED: StyleOptimizer
STYLE_OPTIMIZER_ADAM: StyleOptimizer
STYLE_OPTIMIZER_LBFGS: StyleOptimizer

class StyleImage(_message.Message):
    __slots__ = ("image", "weight")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    weight: float
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., weight: _Optional[float] = ...) -> None: ...

class StyleParameters(_message.Message):
    __slots__ = ("image_size", "style_size", "content_layer", "content_weight", "style_layers", "style_weights", "tv_weight", "iterations", "learning_rate", "decayed_learning_rate", "decay_at", "init", "preserve_color", "optimizer")
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    STYLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LAYER_FIELD_NUMBER: _ClassVar[int]
    CONTENT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STYLE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    DECAYED_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    DECAY_AT_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    PRESERVE_COLOR_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    image_size: int
    style_size: int
    content_layer: int
    content_weight: float
    style_layers: _containers.RepeatedScalarFieldContainer[int]
    style_weights: _containers.RepeatedScalarFieldContainer[float]
    tv_weight: float
    iterations: int
    learning_rate: float
    decayed_learning_rate: float
    decay_at: int
    init: StyleInit
    preserve_color: bool
    optimizer: StyleOptimizer
    def __init__(self, image_size: _Optional[int] = ..., style_size: _Optional[int] = ..., content_layer: _Optional[int] = ..., content_weight: _Optional[float] = ..., style_layers: _Optional[_Iterable[int]] = ..., style_weights: _Optional[_Iterable[float]] = ..., tv_weight: _Optional[float] = ..., iterations: _Optional[int] = ..., learning_rate: _Optional[float] = ..., decayed_learning_rate: _Optional[float] = ..., decay_at: _Optional[int] = ..., init: _Optional[_Union[StyleInit, str]] = ..., preserve_color: _Optional[bool] = ..., optimizer: _Optional[_Union[StyleOptimizer, str]] = ...) -> None: ...

class StyleJob(_message.Message):
    __slots__ = ("content", "styles", "preset", "parameters", "model", "seed")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    content: _common_pb2.Image
    styles: _containers.RepeatedCompositeFieldContainer[StyleImage]
    preset: str
    parameters: StyleParameters
    model: _common_pb2.ModelRef
    seed: int
    def __init__(self, content: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., styles: _Optional[_Iterable[_Union[StyleImage, _Mapping]]] = ..., preset: _Optional[str] = ..., parameters: _Optional[_Union[StyleParameters, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class StylizeRequest(_message.Message):
    __slots__ = ("job", "preview_every")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    job: StyleJob
    preview_every: int
    def __init__(self, job: _Optional[_Union[StyleJob, _Mapping]] = ..., preview_every: _Optional[int] = ...) -> None: ...

class StylizeUnaryRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: StyleJob
    def __init__(self, job: _Optional[_Union[StyleJob, _Mapping]] = ...) -> None: ...

class StyleLosses(_message.Message):
    __slots__ = ("content", "style", "tv", "total")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    TV_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    content: float
    style: float
    tv: float
    total: float
    def __init__(self, content: _Optional[float] = ..., style: _Optional[float] = ..., tv: _Optional[float] = ..., total: _Optional[float] = ...) -> None: ...

class StyleProgress(_message.Message):
    __slots__ = ("iteration", "iterations", "losses", "elapsed_ms", "learning_rate", "preview")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    iterations: int
    losses: StyleLosses
    elapsed_ms: float
    learning_rate: float
    preview: _common_pb2.Image
    def __init__(self, iteration: _Optional[int] = ..., iterations: _Optional[int] = ..., losses: _Optional[_Union[StyleLosses, _Mapping]] = ..., elapsed_ms: _Optional[float] = ..., learning_rate: _Optional[float] = ..., preview: _Optional[_Union[_common_pb2.Image, _Mapping]] = ...) -> None: ...

class StyleResult(_message.Message):
    __slots__ = ("image", "width", "height", "losses", "parameters", "meta")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    width: int
    height: int
    losses: StyleLosses
    parameters: StyleParameters
    meta: _common_pb2.ResponseMeta
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., losses: _Optional[_Union[StyleLosses, _Mapping]] = ..., parameters: _Optional[_Union[StyleParameters, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...

class StylizeResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: StyleProgress
    result: StyleResult
    def __init__(self, progress: _Optional[_Union[StyleProgress, _Mapping]] = ..., result: _Optional[_Union[StyleResult, _Mapping]] = ...) -> None: ...

class StylizeUnaryResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: StyleResult
    def __init__(self, result: _Optional[_Union[StyleResult, _Mapping]] = ...) -> None: ...

class ListStylePresetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StylePreset(_message.Message):
    __slots__ = ("name", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters: StyleParameters
    def __init__(self, name: _Optional[str] = ..., parameters: _Optional[_Union[StyleParameters, _Mapping]] = ...) -> None: ...

class ListStylePresetsResponse(_message.Message):
    __slots__ = ("presets", "meta")
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    presets: _containers.RepeatedCompositeFieldContainer[StylePreset]
    meta: _common_pb2.ResponseMeta
    def __init__(self, presets: _Optional[_Iterable[_Union[StylePreset, _Mapping]]] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...
