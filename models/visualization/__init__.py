"""Network visualization (CS231n 2017 assignment 3): saliency, fooling images, class visualization.

Pure torch, batched; models are ``pixelrpc.models.zoo.ImageModel`` objects or bare classifier modules.
"""

from pixelrpc.models.visualization.class_visualization import (
    ClassVisualizationProgress,
    ClassVisualizationResult,
    class_visualization_steps,
    create_class_visualization,
    gaussian_blur,
    jitter,
)
from pixelrpc.models.visualization.classify import Prediction, classify
from pixelrpc.models.visualization.fooling import (
    FoolingProgress,
    FoolingResult,
    fooling_steps,
    make_fooling_image,
    predict_after_8bit,
)
from pixelrpc.models.visualization.render import (
    fooling_comparison,
    saliency_heatmap,
    saliency_overlay,
)
from pixelrpc.models.visualization.saliency import (
    METHODS,
    SaliencyResult,
    compute_saliency_maps,
    input_gradients,
    integrated_gradients,
    path_weights,
    saliency,
    smoothgrad,
)

__all__ = [
    "METHODS",
    "ClassVisualizationProgress",
    "ClassVisualizationResult",
    "FoolingProgress",
    "FoolingResult",
    "Prediction",
    "SaliencyResult",
    "class_visualization_steps",
    "classify",
    "compute_saliency_maps",
    "create_class_visualization",
    "fooling_comparison",
    "fooling_steps",
    "gaussian_blur",
    "input_gradients",
    "integrated_gradients",
    "jitter",
    "make_fooling_image",
    "path_weights",
    "predict_after_8bit",
    "saliency",
    "saliency_heatmap",
    "saliency_overlay",
    "smoothgrad",
]
