from pixelrpc.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SaliencyMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SALIENCY_METHOD_UNSPECIFIED: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_VANILLA: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_SMOOTHGRAD: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_INTEGRATED_GRADIENTS: _ClassVar[SaliencyMethod]

class IntegratedGradientsBaseline(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTEGRATED_GRADIENTS_BASELINE_UNSPECIFIED: _ClassVar[IntegratedGradientsBaseline]
    INTEGRATED_GRADIENTS_BASELINE_BLACK: _ClassVar[IntegratedGradientsBaseline]
    INTEGRATED_GRADIENTS_BASELINE_MEAN: _ClassVar[IntegratedGradientsBaseline]
SALIENCY_METHOD_UNSPECIFIED: SaliencyMethod
SALIENCY_METHOD_VANILLA: SaliencyMethod
SALIENCY_METHOD_SMOOTHGRAD: SaliencyMethod
SALIENCY_METHOD_INTEGRATED_GRADIENTS: SaliencyMethod
INTEGRATED_GRADIENTS_BASELINE_UNSPECIFIED: IntegratedGradientsBaseline
INTEGRATED_GRADIENTS_BASELINE_BLACK: IntegratedGradientsBaseline
INTEGRATED_GRADIENTS_BASELINE_MEAN: IntegratedGradientsBaseline

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "images", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    top_k: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClassPrediction(_message.Message):
    __slots__ = ("class_index", "label", "probability", "score")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    label: str
    probability: float
    score: float
    def __init__(self, class_index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...

class ImageClassification(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[ClassPrediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[ClassPrediction, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results", "input_size", "meta")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageClassification]
    input_size: int
    meta: _common_pb2.ResponseMeta
    def __init__(self, results: _Optional[_Iterable[_Union[ImageClassification, _Mapping]]] = ..., input_size: _Optional[int] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...

class SmoothGradOptions(_message.Message):
    __slots__ = ("noise_level", "samples", "seed")
    NOISE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    noise_level: float
    samples: int
    seed: int
    def __init__(self, noise_level: _Optional[float] = ..., samples: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class IntegratedGradientsOptions(_message.Message):
    __slots__ = ("steps", "baseline")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    steps: int
    baseline: IntegratedGradientsBaseline
    def __init__(self, steps: _Optional[int] = ..., baseline: _Optional[_Union[IntegratedGradientsBaseline, str]] = ...) -> None: ...

class SaliencyRequest(_message.Message):
    __slots__ = ("model", "image", "target_class", "method", "smoothgrad", "integrated_gradients", "render_images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SMOOTHGRAD_FIELD_NUMBER: _ClassVar[int]
    INTEGRATED_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    RENDER_IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    image: _common_pb2.Image
    target_class: int
    method: SaliencyMethod
    smoothgrad: SmoothGradOptions
    integrated_gradients: IntegratedGradientsOptions
    render_images: bool
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., target_class: _Optional[int] = ..., method: _Optional[_Union[SaliencyMethod, str]] = ..., smoothgrad: _Optional[_Union[SmoothGradOptions, _Mapping]] = ..., integrated_gradients: _Optional[_Union[IntegratedGradientsOptions, _Mapping]] = ..., render_images: _Optional[bool] = ...) -> None: ...

class SaliencyResponse(_message.Message):
    __slots__ = ("saliency", "heatmap", "overlay", "input", "target_class", "target_label", "target_score", "predicted_class", "input_size", "completeness_gap", "method", "meta")
    SALIENCY_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LABEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCORE_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_GAP_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    saliency: _common_pb2.Tensor
    heatmap: _common_pb2.Image
    overlay: _common_pb2.Image
    input: _common_pb2.Image
    target_class: int
    target_label: str
    target_score: float
    predicted_class: int
    input_size: int
    completeness_gap: float
    method: SaliencyMethod
    meta: _common_pb2.ResponseMeta
    def __init__(self, saliency: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., heatmap: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., overlay: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., input: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., target_class: _Optional[int] = ..., target_label: _Optional[str] = ..., target_score: _Optional[float] = ..., predicted_class: _Optional[int] = ..., input_size: _Optional[int] = ..., completeness_gap: _Optional[float] = ..., method: _Optional[_Union[SaliencyMethod, str]] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...

class FoolingImageRequest(_message.Message):
    __slots__ = ("model", "image", "target_class", "learning_rate", "max_iterations", "magnify")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAGNIFY_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    image: _common_pb2.Image
    target_class: int
    learning_rate: float
    max_iterations: int
    magnify: float
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., target_class: _Optional[int] = ..., learning_rate: _Optional[float] = ..., max_iterations: _Optional[int] = ..., magnify: _Optional[float] = ...) -> None: ...

class FoolingImageProgress(_message.Message):
    __slots__ = ("iteration", "target_score", "target_probability", "predicted_class")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCORE_FIELD_NUMBER: _ClassVar[int]
    TARGET_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    target_score: float
    target_probability: float
    predicted_class: int
    def __init__(self, iteration: _Optional[int] = ..., target_score: _Optional[float] = ..., target_probability: _Optional[float] = ..., predicted_class: _Optional[int] = ...) -> None: ...

class FoolingImageResult(_message.Message):
    __slots__ = ("image", "comparison", "normalized_image", "succeeded", "png_succeeded", "iterations", "original_class", "original_label", "predicted_class", "predicted_label", "target_probability", "l2", "linf", "relative_l2", "input_size")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_IMAGE_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    PNG_SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_CLASS_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    LINF_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_L2_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    comparison: _common_pb2.Image
    normalized_image: _common_pb2.Tensor
    succeeded: bool
    png_succeeded: bool
    iterations: int
    original_class: int
    original_label: str
    predicted_class: int
    predicted_label: str
    target_probability: float
    l2: float
    linf: float
    relative_l2: float
    input_size: int
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., comparison: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., normalized_image: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., succeeded: _Optional[bool] = ..., png_succeeded: _Optional[bool] = ..., iterations: _Optional[int] = ..., original_class: _Optional[int] = ..., original_label: _Optional[str] = ..., predicted_class: _Optional[int] = ..., predicted_label: _Optional[str] = ..., target_probability: _Optional[float] = ..., l2: _Optional[float] = ..., linf: _Optional[float] = ..., relative_l2: _Optional[float] = ..., input_size: _Optional[int] = ...) -> None: ...

class FoolingImageResponse(_message.Message):
    __slots__ = ("progress", "result", "meta")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    progress: FoolingImageProgress
    result: FoolingImageResult
    meta: _common_pb2.ResponseMeta
    def __init__(self, progress: _Optional[_Union[FoolingImageProgress, _Mapping]] = ..., result: _Optional[_Union[FoolingImageResult, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...

class ClassVisualizationRequest(_message.Message):
    __slots__ = ("model", "target_class", "num_iterations", "learning_rate", "l2_reg", "blur_every", "max_jitter", "show_every", "seed", "size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    L2_REG_FIELD_NUMBER: _ClassVar[int]
    BLUR_EVERY_FIELD_NUMBER: _ClassVar[int]
    MAX_JITTER_FIELD_NUMBER: _ClassVar[int]
    SHOW_EVERY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    target_class: int
    num_iterations: int
    learning_rate: float
    l2_reg: float
    blur_every: int
    max_jitter: int
    show_every: int
    seed: int
    size: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., target_class: _Optional[int] = ..., num_iterations: _Optional[int] = ..., learning_rate: _Optional[float] = ..., l2_reg: _Optional[float] = ..., blur_every: _Optional[int] = ..., max_jitter: _Optional[int] = ..., show_every: _Optional[int] = ..., seed: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ClassVisualizationProgress(_message.Message):
    __slots__ = ("iteration", "target_score", "target_probability", "preview")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCORE_FIELD_NUMBER: _ClassVar[int]
    TARGET_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    target_score: float
    target_probability: float
    preview: _common_pb2.Image
    def __init__(self, iteration: _Optional[int] = ..., target_score: _Optional[float] = ..., target_probability: _Optional[float] = ..., preview: _Optional[_Union[_common_pb2.Image, _Mapping]] = ...) -> None: ...

class ClassVisualizationResult(_message.Message):
    __slots__ = ("image", "target_class", "target_label", "target_score", "target_probability", "iterations", "size")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LABEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCORE_FIELD_NUMBER: _ClassVar[int]
    TARGET_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    target_class: int
    target_label: str
    target_score: float
    target_probability: float
    iterations: int
    size: int
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., target_class: _Optional[int] = ..., target_label: _Optional[str] = ..., target_score: _Optional[float] = ..., target_probability: _Optional[float] = ..., iterations: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ClassVisualizationResponse(_message.Message):
    __slots__ = ("progress", "result", "meta")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    progress: ClassVisualizationProgress
    result: ClassVisualizationResult
    meta: _common_pb2.ResponseMeta
    def __init__(self, progress: _Optional[_Union[ClassVisualizationProgress, _Mapping]] = ..., result: _Optional[_Union[ClassVisualizationResult, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ResponseMeta, _Mapping]] = ...) -> None: ...
