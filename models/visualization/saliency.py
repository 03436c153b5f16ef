"""Gradient saliency maps and path attributions for image classifiers.

- Vanilla saliency: Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising
  Image Classification Models and Saliency Maps", ICLR workshop 2014 (arXiv:1312.6034).
- SmoothGrad: Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017 (arXiv:1706.03825).
- Integrated Gradients: Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
  ICML 2017 (arXiv:1703.01365).

Dimensions: N images, H x W pixels, K classes, B the internal batch (``batch_size``) of forward and
backward passes. Inputs ``X`` are normalised images (N, 3, H, W) and ``y`` class indices (N,). All
functions work in chunks of ``batch_size`` network evaluations, so memory does not grow with N,
samples or steps, and never touch the parameters' ``.grad`` (a cached model can be shared).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pixelrpc.models.errors import CancelToken, InvalidInput
from pixelrpc.models.visualization.inputs import (
    as_image_model,
    check_images,
    check_targets,
    class_count,
    non_negative,
    positive_int,
    scores_of,
)
from pixelrpc.models.visualization.options import METHODS, IntegratedGradientsOptions, SmoothGradOptions
from pixelrpc.models.zoo import ImageModel

DEFAULT_BATCH_SIZE = 8
_SG, _IG = SmoothGradOptions, IntegratedGradientsOptions  # the defaults
IG_RULES = ("trapezoid", "riemann_trapezoid")


@dataclass(frozen=True)
class SaliencyResult:
    """What ``saliency`` returns.

    - maps: (N, H, W) non-negative saliency, max over channels of |attribution|.
    - attributions: (N, 3, H, W) signed per-channel attributions (the gradient for vanilla, the mean
      |gradient| for SmoothGrad, the path integral times (x - baseline) for Integrated Gradients).
    - scores: (N,) class score of each image at the target.
    - completeness_gap: (N,) Integrated Gradients only: sum of attributions minus
      (score(x) - score(baseline)); 0 in the limit of infinitely many steps.
    """

    method: str
    maps: torch.Tensor
    attributions: torch.Tensor
    scores: torch.Tensor
    completeness_gap: torch.Tensor | None = None
    seed: int | None = None  # SmoothGrad only: reproduces the noise
    predicted: torch.Tensor | None = None  # (N,) the model's top class for each (unperturbed) image


def _target_gradients(model: ImageModel, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of each image's own target score w.r.t. that image, in one backward pass.

    Inputs: x (B, 3, H, W), y (B,). Returns grads (B, 3, H, W), the target scores (B,) and the top
    class of each image (B,). Summing the B scores is exact because images do not interact in an
    eval-mode network.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = scores_of(model, x)  # (B, K)
        picked = scores.gather(1, y[:, None]).squeeze(1)  # (B,)
        (grads,) = torch.autograd.grad(picked.sum(), x)
    return grads, picked.detach(), scores.detach().argmax(dim=1)


def _prepare(X, y, model, batch_size, field="class"):
    model = as_image_model(model)
    X = check_images(X, model)
    y = check_targets(y, X.shape[0], class_count(model, X), X.device, field=field)
    return model, X, y, positive_int(batch_size, "batch_size")


@torch.no_grad()
def target_scores(X: torch.Tensor, y: torch.Tensor, model: ImageModel,
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """score_y of each image (N,) and its top class (N,), in chunks, without building a graph."""
    scores = torch.cat([scores_of(model, X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)])  # (N, K)
    return scores.gather(1, y[:, None]).squeeze(1), scores.argmax(dim=1)


def _poll(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.check()


def input_gradients(X: torch.Tensor, y, model: ImageModel | torch.nn.Module, *,
                    batch_size: int = DEFAULT_BATCH_SIZE,
                    cancel: CancelToken | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d score_y / d X for each image: returns grads (N, 3, H, W) and target scores (N,)."""
    grads, scores, _ = _vanilla(X, y, model, batch_size, cancel)
    return grads, scores


def _vanilla(X, y, model, batch_size, cancel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_gradients plus the top class of each image (N,), from the same forward passes."""
    model, X, y, batch_size = _prepare(X, y, model, batch_size)
    grads, scores = torch.empty_like(X), torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    predicted = torch.empty(X.shape[0], dtype=torch.long, device=X.device)
    for start in range(0, X.shape[0], batch_size):
        _poll(cancel)
        end = start + batch_size
        grads[start:end], scores[start:end], predicted[start:end] = _target_gradients(
            model, X[start:end], y[start:end])
    return grads, scores, predicted


def compute_saliency_maps(X: torch.Tensor, y, model: ImageModel | torch.nn.Module, *,
                          batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """The assignment's saliency map: max over channels of |d score_y / d pixel|.

    Inputs:
    - X: normalised images (N, 3, H, W).
    - y: correct class per image (N,) (or one int for all).
    - model: an ImageModel or a bare classifier module.
    Returns: saliency (N, H, W), non-negative.
    """
    grads, _ = input_gradients(X, y, model, batch_size=batch_size)
    return grads.abs().amax(dim=1)  # (N, 3, H, W) -> (N, H, W)


def smoothgrad(X: torch.Tensor, y, model: ImageModel | torch.nn.Module, *, noise_level: float = _SG.noise_level,
               samples: int = _SG.samples, seed: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
               cancel: CancelToken | None = None) -> SaliencyResult:
    """SmoothGrad: the mean of |gradient| over ``samples`` noisy copies of each image.

    The noise is Gaussian with std ``noise_level * (max(x) - min(x))`` per image (the paper's
    "noise level"). ``noise_level = 0`` gives the vanilla saliency map. Sample s of every image uses
    the same unit-noise pattern (drawn from ``seed`` and s), scaled per image, so a batch gives each
    image exactly the map it would get alone, whatever ``batch_size``.
    Returns a SaliencyResult with maps (N, H, W) and attributions (N, 3, H, W) = mean |gradient|.
    """
    model, X, y, batch_size = _prepare(X, y, model, batch_size)
    noise_level = non_negative(noise_level, "noise_level")
    samples = positive_int(samples, "samples")
    n = X.shape[0]
    sigma = noise_level * (X.flatten(1).amax(1) - X.flatten(1).amin(1))  # (N,)
    seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    total = torch.zeros_like(X)
    for start in range(0, n * samples, batch_size):  # flat (sample, image) pairs, sample-major
        _poll(cancel)
        flat = torch.arange(start, min(start + batch_size, n * samples))  # (B,)
        sample, owner = (flat // n).tolist(), (flat % n).to(X.device)
        drawn = {s: _unit_noise(X.shape[1:], seed, s).to(X.device, X.dtype) for s in set(sample)}
        unit = torch.stack([drawn[s] for s in sample])  # (B, 3, H, W)
        noisy = X[owner] + unit * sigma[owner].view(-1, 1, 1, 1)  # (B, 3, H, W)
        grads, _, _ = _target_gradients(model, noisy, y[owner])
        total.index_add_(0, owner, grads.abs())
    attributions = total / samples
    scores, predicted = target_scores(X, y, model, batch_size)
    return SaliencyResult("smoothgrad", attributions.amax(dim=1), attributions, scores, seed=seed,
                          predicted=predicted)


def _unit_noise(shape, seed: int, sample: int) -> torch.Tensor:
    """Standard normal noise (3, H, W) determined by (seed, sample), drawn on the CPU."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + sample) % (2**63 - 1))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64)


def resolve_baseline(baseline, X: torch.Tensor, model: ImageModel) -> torch.Tensor:
    """A baseline (N, 3, H, W) from ``"black"`` (pixel value 0), ``"zero"`` (normalised 0, i.e. the
    mean colour) or a tensor broadcastable to X ((3, H, W), (1, 3, H, W), (N, 3, H, W) or (1, 3, 1, 1))."""
    if isinstance(baseline, str):
        if baseline == "black":
            lo, _ = model.pixel_bounds()
            return lo.to(X.dtype).expand_as(X)
        if baseline == "zero":
            return torch.zeros_like(X)
        raise InvalidInput(f"unknown baseline {baseline!r}; use 'black', 'zero' or a tensor", field="baseline")
    if not isinstance(baseline, torch.Tensor):
        raise InvalidInput("baseline must be 'black', 'zero' or a tensor", field="baseline")
    try:
        return baseline.to(device=X.device, dtype=X.dtype).expand_as(X)
    except RuntimeError:
        raise InvalidInput(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the images "
                           f"{tuple(X.shape)}", field="baseline") from None


def path_weights(steps: int, rule: str = "trapezoid") -> tuple[list[float], list[float]]:
    """Interpolation points alpha_k in [0, 1] and their quadrature weights w_k.

    ``trapezoid``: the trapezoidal rule on ``steps`` equally spaced points, weights summing to 1, so
    completeness holds up to the quadrature error. ``riemann_trapezoid``: Captum's rule of that name
    (weights 1/steps with the two end points halved; they sum to (steps - 1) / steps), for parity
    with ``captum.attr.IntegratedGradients``.
    """
    steps = positive_int(steps, "steps", minimum=2)
    alphas = torch.linspace(0, 1, steps, dtype=torch.float64).tolist()
    if rule == "trapezoid":
        h = 1.0 / (steps - 1)
    elif rule == "riemann_trapezoid":
        h = 1.0 / steps
    else:
        raise InvalidInput(f"unknown integration rule {rule!r}; use one of {', '.join(IG_RULES)}", field="rule")
    weights = [h] * steps
    weights[0] /= 2
    weights[-1] /= 2
    return alphas, weights


def integrated_gradients(X: torch.Tensor, y, model: ImageModel | torch.nn.Module, *, baseline=_IG.baseline,
                         steps: int = _IG.steps, rule: str = "trapezoid", batch_size: int = DEFAULT_BATCH_SIZE,
                         cancel: CancelToken | None = None) -> SaliencyResult:
    """Integrated Gradients along the straight path from ``baseline`` to X.

    attribution = (x - x') * sum_k w_k * d score_y / dx at x' + alpha_k (x - x').
    The end points alpha = 0 and 1 are on the path, so the completeness gap
    sum(attribution) - (score(x) - score(x')) comes for free.
    Inputs: X (N, 3, H, W); y (N,); baseline see ``resolve_baseline``.
    Returns a SaliencyResult with attributions (N, 3, H, W), maps (N, H, W) and completeness_gap (N,).
    """
    model, X, y, batch_size = _prepare(X, y, model, batch_size)
    alphas, weights = path_weights(steps, rule)
    base = resolve_baseline(baseline, X, model)
    delta = X - base  # (N, 3, H, W)
    n, steps = X.shape[0], len(alphas)
    alpha_t = torch.tensor(alphas, dtype=X.dtype, device=X.device)  # (steps,)
    weight_t = torch.tensor(weights, dtype=X.dtype, device=X.device)  # (steps,)
    total = torch.zeros_like(X)
    end_scores = torch.zeros(n, 2, dtype=X.dtype, device=X.device)  # (N, 2): score at x', at x
    predicted = torch.zeros(n, dtype=torch.long, device=X.device)  # top class at x (alpha = 1)
    for start in range(0, n * steps, batch_size):  # flat (image, step) pairs
        _poll(cancel)
        flat = torch.arange(start, min(start + batch_size, n * steps), device=X.device)  # (B,)
        owner, k = flat // steps, flat % steps
        points = base[owner] + alpha_t[k].view(-1, 1, 1, 1) * delta[owner]  # (B, 3, H, W)
        grads, picked, top = _target_gradients(model, points, y[owner])
        total.index_add_(0, owner, grads * weight_t[k].view(-1, 1, 1, 1))
        first, last = k == 0, k == steps - 1
        end_scores[owner[first], 0] = picked[first]
        end_scores[owner[last], 1] = picked[last]
        predicted[owner[last]] = top[last]
    attributions = delta * total
    gap = attributions.flatten(1).sum(1) - (end_scores[:, 1] - end_scores[:, 0])  # (N,)
    return SaliencyResult("integrated_gradients", attributions.abs().amax(dim=1), attributions,
                          end_scores[:, 1].clone(), gap, predicted=predicted)


def saliency(X: torch.Tensor, y, model: ImageModel | torch.nn.Module, method: str = "vanilla", *,
             batch_size: int = DEFAULT_BATCH_SIZE, cancel: CancelToken | None = None,
             noise_level: float = _SG.noise_level, samples: int = _SG.samples, seed: int | None = None,
             baseline=_IG.baseline, steps: int = _IG.steps, rule: str = "trapezoid") -> SaliencyResult:
    """One entry point for the three methods (``vanilla``, ``smoothgrad``, ``integrated_gradients``).

    Options that do not apply to ``method`` are ignored. Returns a SaliencyResult (maps (N, H, W)).
    """
    if method == "vanilla":
        grads, scores, predicted = _vanilla(X, y, model, batch_size, cancel)
        return SaliencyResult("vanilla", grads.abs().amax(dim=1), grads, scores, predicted=predicted)
    if method == "smoothgrad":
        return smoothgrad(X, y, model, noise_level=noise_level, samples=samples, seed=seed,
                          batch_size=batch_size, cancel=cancel)
    if method == "integrated_gradients":
        return integrated_gradients(X, y, model, baseline=baseline, steps=steps, rule=rule,
                                    batch_size=batch_size, cancel=cancel)
    raise InvalidInput(f"unknown saliency method {method!r}; use one of {', '.join(METHODS)}", field="method")
