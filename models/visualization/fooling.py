"""Fooling images: the smallest-step gradient ascent that flips a classifier to a chosen class.

Szegedy et al., "Intriguing properties of neural networks", ICLR 2014 (arXiv:1312.6199), in the
form of the CS231n 2017 assignment: repeatedly add ``learning_rate * g / ||g||_2`` where g is the
gradient of the target class score w.r.t. the image, until the model predicts the target.

Dimensions: N images, H x W pixels, K classes. Images are normalised tensors (N, 3, H, W); change
sizes are reported in RGB pixel units on the [0, 1] scale, whatever the model's normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pixelrpc.models.visualization.inputs import (
    as_image_model,
    check_images,
    check_targets,
    class_count,
    non_negative,
    positive_int,
    scores_of,
)
from pixelrpc.models.visualization.options import FoolingOptions
from pixelrpc.models.zoo import ImageModel

_D = FoolingOptions  # the defaults


@dataclass(frozen=True)
class FoolingProgress:
    """Yielded after every gradient step; scores are those the step was computed from.

    iteration counts steps taken so far (1-based); target_score, target_probability (N,) float;
    predicted (N,) long; succeeded (N,) bool (images already fooled take no more steps).
    """

    iteration: int
    target_score: torch.Tensor
    target_probability: torch.Tensor
    predicted: torch.Tensor
    succeeded: torch.Tensor


@dataclass(frozen=True)
class FoolingResult:
    """The last item ``fooling_steps`` yields; ``make_fooling_image`` returns it.

    images (N, 3, H, W) normalised fooling images; every other field is (N,):
    target, original_prediction, predicted, iterations (steps taken), succeeded (predicted == target),
    target_probability, l2 and linf (size of the change in [0, 1] RGB pixel units) and relative_l2
    (l2 divided by the L2 norm of the original image in the same units).
    """

    images: torch.Tensor
    target: torch.Tensor
    original_prediction: torch.Tensor
    predicted: torch.Tensor
    iterations: torch.Tensor
    succeeded: torch.Tensor
    target_probability: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    relative_l2: torch.Tensor


def _pixel_scale(model: ImageModel, like: torch.Tensor) -> torch.Tensor:
    """Multiplier (1, 3, 1, 1) from normalised units to [0, 1] pixel units: std / value_scale."""
    std = torch.tensor(model.std, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    return std / model.value_scale


def _pixels(model: ImageModel, x: torch.Tensor) -> torch.Tensor:
    """Normalised (N, 3, H, W) -> pixel values on [0, 1] (same shape, channel order kept)."""
    mean = torch.tensor(model.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * _pixel_scale(model, x)) + mean / model.value_scale


def fooling_steps(X: torch.Tensor, target_y, model: ImageModel | torch.nn.Module, learning_rate: float = _D.learning_rate,
                  max_iters: int = _D.max_iterations, *, clamp: bool = True) -> Iterator[FoolingProgress | FoolingResult]:
    """Generator: one L2-normalised gradient-ascent step on the target score per iteration.

    Inputs:
    - X: normalised images (N, 3, H, W); each is optimised independently.
    - target_y: target class per image (N,) or one int.
    - learning_rate: L2 length of every step, in normalised units.
    - max_iters: at most this many steps per image; an image still not fooled then is reported with
      succeeded False.
    - clamp: keep every pixel within the valid range (the model's pixel bounds) after each step, so
      the result is an image the model can actually be shown.
    Yields a FoolingProgress after every step, then one FoolingResult.
    """
    model = as_image_model(model)
    X = check_images(X, model, field="image")
    target = check_targets(target_y, X.shape[0], class_count(model, X), X.device, field="target_class")
    learning_rate = non_negative(learning_rate, "learning_rate")
    max_iters = positive_int(max_iters, "max_iters", minimum=0)
    lo, hi = (b.to(X.dtype) for b in model.pixel_bounds())
    x = X.clone()
    iterations = torch.zeros(X.shape[0], dtype=torch.long, device=X.device)
    original_prediction = None
    for step in range(max_iters + 1):
        x.requires_grad_(True)
        with torch.enable_grad():
            scores = scores_of(model, x)  # (N, K)
            picked = scores.gather(1, target[:, None]).squeeze(1)  # (N,)
        predicted = scores.detach().argmax(dim=1)  # (N,)
        if original_prediction is None:
            original_prediction = predicted
        done = predicted == target  # (N,)
        if bool(done.all()) or step == max_iters:
            break
        (grad,) = torch.autograd.grad(picked.sum(), x)
        norms = grad.flatten(1).norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)  # (N,)
        active = (~done).to(X.dtype).view(-1, 1, 1, 1)
        x = x.detach() + active * learning_rate * grad / norms.view(-1, 1, 1, 1)
        if clamp:
            x = torch.maximum(torch.minimum(x, hi), lo)
        iterations += (~done).long()
        yield FoolingProgress(step + 1, picked.detach(), scores.detach().softmax(1).gather(1, target[:, None])
                              .squeeze(1), predicted, done)
    x = x.detach()
    change = _pixels(model, x) - _pixels(model, X)  # (N, 3, H, W)
    l2 = change.flatten(1).norm(dim=1)
    yield FoolingResult(
        images=x, target=target, original_prediction=original_prediction, predicted=predicted,
        iterations=iterations, succeeded=predicted == target,
        target_probability=scores.detach().softmax(1).gather(1, target[:, None]).squeeze(1),
        l2=l2, linf=change.flatten(1).abs().amax(dim=1),
        relative_l2=l2 / _pixels(model, X).flatten(1).norm(dim=1).clamp_min(1e-12),
    )


def make_fooling_image(X: torch.Tensor, target_y, model: ImageModel | torch.nn.Module, learning_rate: float = _D.learning_rate,
                       max_iters: int = _D.max_iterations, *, clamp: bool = True) -> FoolingResult:
    """Run ``fooling_steps`` to the end and return its FoolingResult."""
    result = None
    for result in fooling_steps(X, target_y, model, learning_rate, max_iters, clamp=clamp):  # noqa: B007
        pass
    assert isinstance(result, FoolingResult)
    return result


@torch.no_grad()
def predict_after_8bit(model: ImageModel, images: torch.Tensor) -> torch.Tensor:
    """The model's class for images (N, 3, H, W) after rounding them to 8-bit RGB, as a PNG stores them.

    A fooling image found in floating point can stop fooling once quantised; this says honestly
    whether the picture a client downloads still does. Returns (N,) long.
    """
    side = images.shape[-1]
    requantised = model.preprocess(model.deprocess(images), size=side)  # (N, 3, H, W), H == W
    return scores_of(model, requantised.to(images.dtype)).argmax(dim=1)

