"""Class visualization: regularised gradient ascent from noise towards an image of one class.

Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", 2014 (arXiv:1312.6034), with
the image priors of Yosinski et al., "Understanding Neural Networks Through Deep Visualization",
2015 (arXiv:1506.06579): random jitter, an L2 penalty, clamping to valid pixels and periodic
Gaussian blur, as in the CS231n 2017 assignment. The objective is s_y(I) - l2_reg * ||I||_2^2; each
step moves the image by ``learning_rate`` along the L2-normalised gradient of that objective.

Dimensions: N images (one per target class), S the square side, K classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.visualization.inputs import (
    as_image_model,
    check_targets,
    non_negative,
    positive_int,
    scores_of,
)
from pixelrpc.models.visualization.options import (
    MIN_CLASS_VISUALIZATION_SIDE,
    ClassVisualizationOptions,
    default_max_jitter,
)
from pixelrpc.models.zoo import ImageModel

_D = ClassVisualizationOptions  # the defaults


@dataclass(frozen=True)
class ClassVisualizationProgress:
    """Yielded after every step: iteration (1-based), target_score and target_probability (N,) of the
    (jittered) image the step was computed from, and N preview images every ``show_every`` steps."""

    iteration: int
    target_score: torch.Tensor
    target_probability: torch.Tensor
    preview: list[Image.Image] | None = None


@dataclass(frozen=True)
class ClassVisualizationResult:
    """The last item ``class_visualization_steps`` yields.

    images (N, 3, S, S) normalised; pil the same as N RGB images; target, target_score and
    target_probability (N,) measured on the final image; seed that reproduces the run.
    """

    images: torch.Tensor
    pil: list[Image.Image] = field(repr=False)
    target: torch.Tensor
    target_score: torch.Tensor
    target_probability: torch.Tensor
    iterations: int
    seed: int


def jitter(x: torch.Tensor, ox: int, oy: int) -> torch.Tensor:
    """Roll images (N, C, H, W) by ``ox`` pixels right and ``oy`` down (wrapping round)."""
    return torch.roll(x, shifts=(oy, ox), dims=(2, 3))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflected borders (radius ceil(3 sigma))."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (2r+1,)
    c = x.shape[1]
    pad = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")  # (N, C, H+2r, W+2r)
    rows = torch.nn.functional.conv2d(pad, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # (N, C, H+2r, W)
    return torch.nn.functional.conv2d(rows, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # (N, C, H, W)


def class_visualization_steps(target_y, model: ImageModel | torch.nn.Module, l2_reg: float = _D.l2_reg,
                              learning_rate: float = _D.learning_rate, num_iterations: int = _D.num_iterations,
                              blur_every: int = _D.blur_every, max_jitter: int | None = _D.max_jitter,
                              show_every: int = _D.show_every, seed: int | None = None, *,
                              size: int | None = None, blur_sigma: float = _D.blur_sigma,
                              ) -> Iterator[ClassVisualizationProgress | ClassVisualizationResult]:
    """Generator: the assignment's class visualization, one step per item.

    Inputs:
    - target_y: a class index, or a sequence of N indices (one image each, optimised together).
    - l2_reg: weight of the L2 penalty on the normalised image.
    - learning_rate: L2 length of each step in normalised units.
    - num_iterations: number of steps.
    - blur_every: blur (sigma ``blur_sigma``) at every step t with t % blur_every == 0; 0 never blurs.
    - max_jitter: the image is rolled by up to this many pixels before each step and rolled back after;
      None: ``default_max_jitter(S)`` (16, at most S / 4).
    - show_every: attach preview images every this many steps (and at the first and last); 0 never.
    - seed: seeds the initial noise and the jitter; None picks one (reported in the result).
    - size: the square side S (default the model's input size).
    The defaults are ``ClassVisualizationOptions``'s.
    Yields a ClassVisualizationProgress per step, then one ClassVisualizationResult.
    """
    model = as_image_model(model)
    side = positive_int(size if size is not None else model.input_size, "size", minimum=MIN_CLASS_VISUALIZATION_SIDE)
    max_jitter = default_max_jitter(side) if max_jitter is None else max_jitter
    l2_reg = non_negative(l2_reg, "l2_reg")
    learning_rate = non_negative(learning_rate, "learning_rate")
    num_iterations = positive_int(num_iterations, "num_iterations")
    blur_every = positive_int(blur_every, "blur_every", minimum=0)
    show_every = positive_int(show_every, "show_every", minimum=0)
    max_jitter = positive_int(max_jitter, "max_jitter", minimum=0)
    blur_sigma = non_negative(blur_sigma, "blur_sigma")
    if max_jitter >= side:
        raise InvalidInput(f"max_jitter ({max_jitter}) must be smaller than the image side ({side})",
                           field="max_jitter")
    if blur_every and math.ceil(3 * blur_sigma) >= side:
        raise InvalidInput(f"blur_sigma {blur_sigma} is too wide for a {side}-pixel image", field="blur_sigma")
    n = 1 if torch.as_tensor(target_y).dim() == 0 else len(target_y)
    device = model.device
    dtype = next((p.dtype for p in model.net.parameters()), torch.float32)
    num_classes = model.num_classes or _output_width(model, side, device, dtype)
    target = check_targets(target_y, n, num_classes, device, field="target_class")
    seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    rng = torch.Generator().manual_seed(seed)  # CPU: the same run on any device
    lo, hi = (b.to(dtype) for b in model.pixel_bounds())

    img = torch.randn((n, 3, side, side), generator=rng, dtype=torch.float32).to(device=device, dtype=dtype)
    for t in range(num_iterations):
        ox, oy = (int(v) for v in torch.randint(0, max_jitter + 1, (2,), generator=rng))
        moved = jitter(img, ox, oy).requires_grad_(True)  # (N, 3, S, S)
        with torch.enable_grad():
            scores = scores_of(model, moved)  # (N, K)
            picked = scores.gather(1, target[:, None]).squeeze(1)  # (N,)
            objective = picked.sum() - l2_reg * (moved**2).sum()
            (grad,) = torch.autograd.grad(objective, moved)
        norms = grad.flatten(1).norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)  # (N,)
        moved = moved.detach() + learning_rate * grad / norms.view(-1, 1, 1, 1)
        img = torch.maximum(torch.minimum(jitter(moved, -ox, -oy), hi), lo)
        if blur_every and t % blur_every == 0:
            img = gaussian_blur(img, blur_sigma)
        show = show_every and (t == 0 or (t + 1) % show_every == 0 or t == num_iterations - 1)
        yield ClassVisualizationProgress(
            iteration=t + 1, target_score=picked.detach(),
            target_probability=scores.detach().softmax(1).gather(1, target[:, None]).squeeze(1),
            preview=model.deprocess(img) if show else None,
        )
    with torch.no_grad():
        scores = scores_of(model, img)  # (N, K)
    yield ClassVisualizationResult(
        images=img, pil=model.deprocess(img), target=target,
        target_score=scores.gather(1, target[:, None]).squeeze(1),
        target_probability=scores.softmax(1).gather(1, target[:, None]).squeeze(1),
        iterations=num_iterations, seed=seed,
    )


@torch.no_grad()
def _output_width(model: ImageModel, side: int, device, dtype) -> int:
    return int(scores_of(model, torch.zeros((1, 3, side, side), device=device, dtype=dtype)).shape[1])


def create_class_visualization(target_y, model: ImageModel | torch.nn.Module, l2_reg: float = _D.l2_reg,
                               learning_rate: float = _D.learning_rate, num_iterations: int = _D.num_iterations,
                               blur_every: int = _D.blur_every, max_jitter: int | None = _D.max_jitter,
                               show_every: int = _D.show_every, seed: int | None = None, *,
                               size: int | None = None, blur_sigma: float = _D.blur_sigma) -> ClassVisualizationResult:
    """Run ``class_visualization_steps`` to the end and return its ClassVisualizationResult."""
    result = None
    for result in class_visualization_steps(  # noqa: B007
            target_y, model, l2_reg, learning_rate, num_iterations, blur_every, max_jitter, show_every, seed,
            size=size, blur_sigma=blur_sigma):
        pass
    assert isinstance(result, ClassVisualizationResult)
    return result
