from google.rpc import status_pb2 as _status_pb2
from pixelrpc.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecodingStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECODING_STRATEGY_UNSPECIFIED: _ClassVar[DecodingStrategy]
    DECODING_STRATEGY_GREEDY: _ClassVar[DecodingStrategy]
    DECODING_STRATEGY_BEAM: _ClassVar[DecodingStrategy]
    DECODING_STRATEGY_SAMPLE: _ClassVar[DecodingStrategy]
DECODING_STRATEGY_UNSPECIFIED: DecodingStrategy
DECODING_STRATEGY_GREEDY: DecodingStrategy
DECODING_STRATEGY_BEAM: DecodingStrategy
DECODING_STRATEGY_SAMPLE: DecodingStrategy

class CaptionOptions(_message.Message):
    __slots__ = ("strategy", "max_length", "beam_width", "length_penalty", "temperature", "seed", "num_captions")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BEAM_WIDTH_FIELD_NUMBER: _ClassVar[int]
    LENGTH_PENALTY_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    strategy: DecodingStrategy
    max_length: int
    beam_width: int
    length_penalty: float
    temperature: float
    seed: int
    num_captions: int
    def __init__(self, strategy: _Optional[_Union[DecodingStrategy, str]] = ..., max_length: _Optional[int] = ..., beam_width: _Optional[int] = ..., length_penalty: _Optional[float] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., num_captions: _Optional[int] = ...) -> None: ...

class CaptionJob(_message.Message):
    __slots__ = ("model", "image", "features", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    image: _common_pb2.Image
    features: _common_pb2.Tensor
    options: CaptionOptions
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., options: _Optional[_Union[CaptionOptions, _Mapping]] = ...) -> None: ...

class CaptionToken(_message.Message):
    __slots__ = ("id", "word", "logprob")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    id: int
    word: str
    logprob: float
    def __init__(self, id: _Optional[int] = ..., word: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class Caption(_message.Message):
    __slots__ = ("text", "tokens", "score", "logprob", "finished")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: _containers.RepeatedCompositeFieldContainer[CaptionToken]
    score: float
    logprob: float
    finished: bool
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[CaptionToken, _Mapping]]] = ..., score: _Optional[float] = ..., logprob: _Optional[float] = ..., finished: _Optional[bool] = ...) -> None: ...

class CaptionResult(_message.Message):
    __slots__ = ("captions", "options", "encoder", "meta")
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    captions: _containers.RepeatedCompositeFieldContainer[Caption]
    options: CaptionOptions
    encoder: _common_pb2.ModelRef
    meta: _common_pb2.ResponseMeta
    def __init__(self, captions: _Optional[_Iterable[_Union[Caption, _Mapping]]] = ..., options: _Optional[_Union[CaptionOptions, _Mapping]] = ..., encoder: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...

class CaptionRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: CaptionJob
    def __init__(self, job: _Optional[_Union[CaptionJob, _Mapping]] = ...) -> None: ...

class CaptionResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: CaptionResult
    def __init__(self, result: _Optional[_Union[CaptionResult, _Mapping]] = ...) -> None: ...

class StreamCaptionRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: CaptionJob
    def __init__(self, job: _Optional[_Union[CaptionJob, _Mapping]] = ...) -> None: ...

class TokenUpdate(_message.Message):
    __slots__ = ("caption_index", "position", "token")
    CAPTION_INDEX_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    caption_index: int
    position: int
    token: CaptionToken
    def __init__(self, caption_index: _Optional[int] = ..., position: _Optional[int] = ..., token: _Optional[_Union[CaptionToken, _Mapping]] = ...) -> None: ...

class StreamCaptionResponse(_message.Message):
    __slots__ = ("token", "result")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    token: TokenUpdate
    result: CaptionResult
    def __init__(self, token: _Optional[_Union[TokenUpdate, _Mapping]] = ..., result: _Optional[_Union[CaptionResult, _Mapping]] = ...) -> None: ...

class CaptionStreamRequest(_message.Message):
    __slots__ = ("id", "job")
    ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    id: str
    job: CaptionJob
    def __init__(self, id: _Optional[str] = ..., job: _Optional[_Union[CaptionJob, _Mapping]] = ...) -> None: ...

class CaptionStreamResponse(_message.Message):
    __slots__ = ("id", "result", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    result: CaptionResult
    error: _status_pb2.Status
    def __init__(self, id: _Optional[str] = ..., result: _Optional[_Union[CaptionResult, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ExplainCaptionRequest(_message.Message):
    __slots__ = ("model", "image", "caption", "max_length", "render_overlays")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RENDER_OVERLAYS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    image: _common_pb2.Image
    caption: str
    max_length: int
    render_overlays: bool
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., caption: _Optional[str] = ..., max_length: _Optional[int] = ..., render_overlays: _Optional[bool] = ...) -> None: ...

class WordSaliency(_message.Message):
    __slots__ = ("position", "token", "saliency", "overlay", "peak_x", "peak_y")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SALIENCY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    PEAK_X_FIELD_NUMBER: _ClassVar[int]
    PEAK_Y_FIELD_NUMBER: _ClassVar[int]
    position: int
    token: CaptionToken
    saliency: _common_pb2.Tensor
    overlay: _common_pb2.Image
    peak_x: int
    peak_y: int
    def __init__(self, position: _Optional[int] = ..., token: _Optional[_Union[CaptionToken, _Mapping]] = ..., saliency: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., overlay: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., peak_x: _Optional[int] = ..., peak_y: _Optional[int] = ...) -> None: ...

class ExplainedCaption(_message.Message):
    __slots__ = ("text", "tokens", "logprob", "finished", "teacher_forced", "width", "height", "input_size", "encoder", "meta")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FORCED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: _containers.RepeatedCompositeFieldContainer[CaptionToken]
    logprob: float
    finished: bool
    teacher_forced: bool
    width: int
    height: int
    input_size: int
    encoder: _common_pb2.ModelRef
    meta: _common_pb2.ResponseMeta
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[CaptionToken, _Mapping]]] = ..., logprob: _Optional[float] = ..., finished: _Optional[bool] = ..., teacher_forced: _Optional[bool] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., input_size: _Optional[int] = ..., encoder: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...

class ExplainCaptionResponse(_message.Message):
    __slots__ = ("word", "result")
    WORD_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    word: WordSaliency
    result: ExplainedCaption
    def __init__(self, word: _Optional[_Union[WordSaliency, _Mapping]] = ..., result: _Optional[_Union[ExplainedCaption, _Mapping]] = ...) -> None: ...
