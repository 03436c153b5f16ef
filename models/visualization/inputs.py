"""Argument checks shared by the visualization functions.

Every function takes ``model`` as an ``ImageModel`` (its normalisation gives the pixel bounds) or a
bare ``torch.nn.Module`` mapping normalised images (N, 3, H, W) to class scores (N, K); a bare module
is assumed to take ImageNet-normalised RGB in [0, 1] (torchvision's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pixelrpc.models.errors import FailedPrecondition, InvalidInput
from pixelrpc.models.zoo import IMAGENET_MEAN, IMAGENET_STD, ImageModel


def as_image_model(model: ImageModel | torch.nn.Module) -> ImageModel:
    """Wrap a bare classifier as an ImageNet-normalised ``ImageModel`` (with unknown class names)."""
    if isinstance(model, ImageModel):
        if not model.has_classifier:
            raise FailedPrecondition(
                "this model is a feature extractor without class scores; saliency, fooling and class "
                "visualization need a classifier (e.g. squeezenet1_1)"
            )
        return model
    if isinstance(model, torch.nn.Module):
        return ImageModel(net=model, features=torch.nn.Sequential(), class_names=[], input_size=224,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, value_scale=1.0)
    raise InvalidInput(f"model must be an ImageModel or a torch.nn.Module, got {type(model).__name__}")


def check_images(X: torch.Tensor, model: ImageModel, field: str = "images") -> torch.Tensor:
    """Validate a normalised batch (N, 3, H, W) and move it to the model's device (dtype kept)."""
    if not isinstance(X, torch.Tensor):
        raise InvalidInput(f"{field} must be a torch.Tensor of shape (N, 3, H, W)", field=field)
    if X.dim() != 4 or X.shape[1] != 3 or X.shape[0] < 1:
        raise InvalidInput(f"{field} must have shape (N, 3, H, W) with N >= 1, got {tuple(X.shape)}", field=field)
    if not X.is_floating_point():
        raise InvalidInput(f"{field} must be floating point (normalised images), got {X.dtype}", field=field)
    if not torch.isfinite(X).all():
        raise InvalidInput(f"{field} contains NaN or infinite values", field=field)
    return X.detach().to(model.device)


def check_targets(y, n: int, num_classes: int, device, field: str = "target_class") -> torch.Tensor:
    """Class indices as a long tensor (N,): an int is broadcast; each must lie in [0, num_classes)."""
    if isinstance(y, int):
        y = [y] * n
    y = torch.as_tensor(y if not isinstance(y, Sequence) else list(y))
    if y.dim() == 0:
        y = y.expand(n)
    if y.dim() != 1 or y.shape[0] != n:
        raise InvalidInput(f"{field} must be one class index per image ({n}), got shape {tuple(y.shape)}",
                           field=field)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InvalidInput(f"{field} must hold integer class indices, got {y.dtype}", field=field)
    y = y.long()
    if num_classes > 0:
        bad = [int(v) for v in y if not 0 <= int(v) < num_classes]
        if bad:
            raise InvalidInput(f"{field} {bad[0]} is out of range: the model has {num_classes} classes "
                               f"(valid indices 0..{num_classes - 1})", field=field)
    return y.to(device)


def class_count(model: ImageModel, X: torch.Tensor) -> int:
    """K: from the class names, or (for a bare module) from the width of its output on one image."""
    if model.num_classes:
        return model.num_classes
    with torch.no_grad():
        return int(scores_of(model, X[:1]).shape[1])


def positive_int(value, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise InvalidInput(f"{name} must be an integer >= {minimum}, got {value!r}", field=name)
    if maximum is not None and value > maximum:
        raise InvalidInput(f"{name} must be at most {maximum}, got {value}", field=name)
    return int(value)


def non_negative(value, name: str) -> float:
    value = float(value)
    if not value >= 0.0 or value == float("inf"):
        raise InvalidInput(f"{name} must be a finite number >= 0, got {value!r}", field=name)
    return value


def scores_of(model: ImageModel, x: torch.Tensor) -> torch.Tensor:
    """Class scores (N, K), checked to be a 2-D output."""
    scores = model.net(x)
    if scores.dim() != 2:
        raise FailedPrecondition(f"the model returned shape {tuple(scores.shape)}, expected class scores (N, K)")
    return scores
