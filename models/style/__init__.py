"""Neural style transfer (Gatys et al., CVPR 2016) as in CS231n 2017 assignment 3, pure torch."""

from pixelrpc.models.style.losses import content_loss, extract_features, gram_matrix, style_loss, tv_loss
from pixelrpc.models.style.presets import (
    CAFFE_SQUEEZENET_MULTIPLIERS,
    MULTIPLIERS_KEY,
    PRESETS,
    StylePreset,
    WeightMultipliers,
    get_preset,
)
from pixelrpc.models.style.space import InputSpace
from pixelrpc.models.style.transfer import (
    StyleObjective,
    StyleProgress,
    style_objective,
    style_transfer,
    style_transfer_steps,
)

__all__ = [
    "CAFFE_SQUEEZENET_MULTIPLIERS",
    "MULTIPLIERS_KEY",
    "PRESETS",
    "InputSpace",
    "StylePreset",
    "StyleObjective",
    "StyleProgress",
    "WeightMultipliers",
    "content_loss",
    "extract_features",
    "get_preset",
    "gram_matrix",
    "style_loss",
    "style_objective",
    "style_transfer",
    "style_transfer_steps",
    "tv_loss",
]
