"""What the VisualizationService runs, one function per RPC: (model, images, options) in, plain results out.

Each takes a classifier (``as_classifier``), the decoded request images (PIL, each already the model's
S x S) and the job's options (``options.py``), and returns plain values: numbers, numpy arrays and PIL
images, which the servicer turns into messages. The optimisations are generators polled between
steps (the servicer steps them through ``Call.steps``; closing one stops the job), as everywhere.

Dimensions: N images, S the model's input side, K classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pixelrpc.models.errors import CancelToken, InvalidInput
from pixelrpc.models.visualization.class_visualization import (
    ClassVisualizationProgress,
    class_visualization_steps,
)
from pixelrpc.models.visualization.classify import Prediction, class_label, class_scores, classify
from pixelrpc.models.visualization.fooling import (
    FoolingProgress,
    FoolingResult,
    fooling_steps,
    predict_after_8bit,
)
from pixelrpc.models.visualization.options import (
    ClassifyOptions,
    ClassVisualizationOptions,
    FoolingOptions,
    SaliencyOptions,
)
from pixelrpc.models.visualization.render import fooling_comparison, saliency_heatmap, saliency_overlay
from pixelrpc.models.visualization.saliency import compute_saliency_maps, saliency
from pixelrpc.models.zoo import ImageModel


def as_classifier(model: object, ref: str) -> ImageModel:
    """``model`` if it is an image classifier; InvalidInput naming ``model.name`` otherwise."""
    if not isinstance(model, ImageModel) or not model.has_classifier:
        raise InvalidInput(f"model {ref} is not an image classifier", field="model.name")
    return model


# ---------------------------------------------------------------------- Classify
def classify_images(model: ImageModel, images: list[Image.Image],
                    options: ClassifyOptions = ClassifyOptions()) -> list[list[Prediction]]:
    """The top-k classes of each image (N lists of Predictions, most probable first)."""
    with torch.no_grad():
        return classify(model.preprocess(images), model, top_k=options.top_k)


def class_probabilities(model: ImageModel, images: list[Image.Image]) -> np.ndarray:
    """Every class's probability for each image: (N, K) float32 (the Open Inference Protocol's
    PROBABILITIES; no per-class objects built for a 1000-class head). ``class_scores`` runs without
    autograd."""
    return class_scores(model.preprocess(images), model)[1].cpu().numpy()


# ---------------------------------------------------------------------- Saliency
@dataclass(frozen=True)
class SaliencyOutput:
    """One saliency map (S, S) float32 and what it explains; the pictures only when asked for."""

    saliency: np.ndarray
    method: str
    target_class: int
    target_label: str
    target_score: float
    predicted_class: int
    input_size: int
    completeness_gap: float  # Integrated Gradients only (0 otherwise)
    heatmap: Image.Image | None = None
    overlay: Image.Image | None = None
    input: Image.Image | None = None


def saliency_map(model: ImageModel, image: Image.Image, options: SaliencyOptions,
                 cancel: CancelToken | None = None) -> SaliencyOutput:
    """The saliency map of one S x S image for ``options.target_class`` (None: the predicted class).

    ``options`` must be validated and resolved (a SmoothGrad seed fixed)."""
    x = model.preprocess([image])  # (1, 3, S, S)
    cls = options.target_class
    if cls is None:  # explain the predicted class: one extra forward pass to find it
        with torch.no_grad():
            cls = int(model(x).argmax(1))
    result = saliency(x, [cls], model, options.method, cancel=cancel, **options.method_kwargs())
    smap = result.maps[0].float().cpu()  # (S, S)
    pictures = {}
    if options.render_images:  # three PNGs cost more than the map itself: only when asked for
        shown = model.deprocess(x)[0]
        pictures = {"heatmap": saliency_heatmap(smap), "overlay": saliency_overlay(shown, smap), "input": shown}
    return SaliencyOutput(
        saliency=smap.numpy(), method=options.method, target_class=cls, target_label=class_label(model, cls),
        target_score=float(result.scores[0]), predicted_class=int(result.predicted[0]),
        input_size=model.input_size,
        completeness_gap=float(result.completeness_gap[0]) if result.completeness_gap is not None else 0.0,
        **pictures)


# ---------------------------------------------------------------------- FoolingImage
@dataclass(frozen=True)
class FoolingUpdate:
    """After each step: the scores the step was computed from."""

    iteration: int
    target_score: float
    target_probability: float
    predicted_class: int


@dataclass(frozen=True)
class FoolingOutput:
    """The fooling image (PIL and normalised (1, 3, S, S) float32), the comparison picture and how it went.

    ``png_succeeded``: whether the 8-bit picture a client downloads still fools the model."""

    image: Image.Image
    comparison: Image.Image
    normalized_image: np.ndarray
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


def fooling_image(model: ImageModel, image: Image.Image,
                  options: FoolingOptions) -> Iterator[FoolingUpdate | FoolingOutput]:
    """Generator: a FoolingUpdate per gradient step, then one FoolingOutput (``options`` validated)."""
    x = model.preprocess([image])  # (1, 3, S, S)
    steps = fooling_steps(x, [options.target_class], model, options.learning_rate, options.max_iterations)
    with closing(steps):  # closing this generator closes the optimisation at once
        for item in steps:
            if isinstance(item, FoolingProgress):
                yield FoolingUpdate(item.iteration, float(item.target_score[0]),
                                    float(item.target_probability[0]), int(item.predicted[0]))
            else:
                yield _fooling_output(model, x, item, options.magnify)


def _fooling_output(model: ImageModel, x: torch.Tensor, result: FoolingResult, magnify: float) -> FoolingOutput:
    original, fooled = model.deprocess(x)[0], model.deprocess(result.images)[0]
    target, before, after = int(result.target[0]), int(result.original_prediction[0]), int(result.predicted[0])
    png_prediction = int(predict_after_8bit(model, result.images)[0])
    labels = (f"original: {class_label(model, before)}", f"fooled: {class_label(model, after)}")
    return FoolingOutput(
        image=fooled, comparison=fooling_comparison(original, fooled, magnify, labels),
        normalized_image=result.images.float().cpu().numpy(),
        succeeded=bool(result.succeeded[0]), png_succeeded=png_prediction == target,
        iterations=int(result.iterations[0]), original_class=before, original_label=class_label(model, before),
        predicted_class=after, predicted_label=class_label(model, after),
        target_probability=float(result.target_probability[0]), l2=float(result.l2[0]),
        linf=float(result.linf[0]), relative_l2=float(result.relative_l2[0]), input_size=x.shape[-1])


# ---------------------------------------------------------------------- ClassVisualization
@dataclass(frozen=True)
class ClassVisualizationUpdate:
    """After each step; ``preview`` every ``show_every`` steps (and at the first and last)."""

    iteration: int
    target_score: float
    target_probability: float
    preview: Image.Image | None = None


@dataclass(frozen=True)
class ClassVisualizationOutput:
    image: Image.Image
    target_class: int
    target_label: str
    target_score: float
    target_probability: float
    iterations: int
    size: int


def class_visualization(model: ImageModel, options: ClassVisualizationOptions
                        ) -> Iterator[ClassVisualizationUpdate | ClassVisualizationOutput]:
    """Generator: a ClassVisualizationUpdate per step, then one ClassVisualizationOutput (``options``
    validated and resolved)."""
    side = options.side(model.input_size)
    target = options.target_class
    steps = class_visualization_steps(
        target, model, l2_reg=options.l2_reg, learning_rate=options.learning_rate,
        num_iterations=options.num_iterations, blur_every=options.blur_every, max_jitter=options.jitter(side),
        show_every=options.show_every, seed=options.seed, size=side, blur_sigma=options.blur_sigma)
    with closing(steps):  # closing this generator closes the optimisation at once
        for item in steps:
            if isinstance(item, ClassVisualizationProgress):
                yield ClassVisualizationUpdate(item.iteration, float(item.target_score[0]),
                                               float(item.target_probability[0]),
                                               item.preview[0] if item.preview is not None else None)
            else:
                yield ClassVisualizationOutput(
                    image=item.pil[0], target_class=target, target_label=class_label(model, target),
                    target_score=float(item.target_score[0]),
                    target_probability=float(item.target_probability[0]), iterations=item.iterations, size=side)


def warm_up(model: object) -> None:
    """One saliency map of a blank image, so the first request pays no start-up cost (no-op for a
    model that is not a classifier)."""
    if not isinstance(model, ImageModel) or not model.has_classifier:
        return
    x = torch.zeros((1, 3, model.input_size, model.input_size), device=model.device)
    compute_saliency_maps(x, [0], model)
