"""Gatys style transfer by Adam on the pixels, with the CS231n 2017 assignment's schedule.

Gatys, Ecker and Bethge, "Image Style Transfer Using Convolutional Neural Networks" (CVPR 2016);
colour preservation after Gatys et al., "Preserving Color in Neural Artistic Style Transfer"
(arXiv:1606.05897). The loop is the assignment's: the image starts as the content image (or uniform
noise in [0, 1) in normalised units), Adam with learning rate ``lr`` takes one step per iteration, the
image is clamped to [-1.5, 1.5] before each step until ``clamp_until`` (the last 10 iterations are
not clamped), and at iteration ``decay_at`` a fresh Adam with ``decayed_lr`` replaces the first.
The optimised tensor lives in torchvision's normalised space whatever the feature network
(``space.py`` explains why and how it is mapped to the network's input).

``style_transfer_steps`` checks its arguments at once and returns a generator that yields a
``StyleProgress`` after every step, then one last ``StyleProgress`` with ``final=True`` holding the
result and the losses of that result. Closing the generator (or setting ``cancel``) stops the job
between two steps and releases every tensor.

Dimensions: N images, C channels, H x W pixels of the image being optimised (its shorter side is
``image_size``), Hs x Ws those of a style image, L the number of style layers.
"""

from __future__ import annotations

import inspect
import math
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from pixelrpc.models.errors import CancelToken, InvalidInput
from pixelrpc.models.style.losses import content_loss, extract_features, gram_matrix, style_loss, tv_loss
from pixelrpc.models.style.options import INITS, OPTIMIZERS, StyleOptions
from pixelrpc.models.style.presets import MULTIPLIERS_KEY, WeightMultipliers, multipliers_for
from pixelrpc.models.style.space import (
    CLAMP,
    InputSpace,
    gray,
    luminance,
    match_luminance,
    pixels_to_reference,
    recolor,
    reference_to_pixels,
    rescale,
    to_image,
    to_pixels,
)

_D = StyleOptions  # the defaults
PRECISIONS = ("auto", "float32", "bfloat16")
# L-BFGS: the curvature pairs of the last 10 iterations; at most 6 function evaluations per iteration
# (its start point and the strong-Wolfe line search).
LBFGS_HISTORY = 10
LBFGS_MAX_EVAL = 6


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``precision="auto"`` runs the network in bfloat16 on ``device``: a CPU with native
    bfloat16 arithmetic (AVX512-BF16 or AMX) through oneDNN; float32 everywhere else."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except Exception:  # noqa: BLE001 - a private probe; any failure means "no"
        return False


@dataclass(frozen=True)
class StyleProgress:
    """What one step (or, with ``final``, the finished job) reports.

    The loss terms are weighted (as they enter the total). For a step they are measured on the image
    the step started from; for the final report, on the result.
    """

    iteration: int  # steps done, 1..iterations
    iterations: int
    content_loss: float
    style_loss: float
    tv_loss: float
    total_loss: float
    elapsed_s: float  # since the job started, target features included
    learning_rate: float
    seed: int
    preview: Image.Image | None = None  # every ``preview_every`` steps
    final: bool = False
    image: Image.Image | None = None  # the result, on the final report only
    evaluations: int = 0  # function evaluations (loss and gradient) so far; one per Adam step


@dataclass(frozen=True)
class _Job:
    """Checked arguments of one style transfer (weights already multiplied into the model's units)."""

    content: Image.Image
    styles: tuple[Image.Image, ...]
    blend: tuple[float, ...]
    features: torch.nn.Sequential
    space: InputSpace
    image_size: int
    style_size: int
    content_layer: int
    content_weight: float
    style_layers: tuple[int, ...]
    style_weights: tuple[float, ...]
    tv_weight: float
    init: str
    iterations: int
    lr: float
    decayed_lr: float
    decay_at: int
    clamp_until: int
    preserve_color: bool
    seed: int
    preview_every: int
    cancel: CancelToken | None
    optimizer: str = "adam"
    precision: str = "auto"


def style_transfer(content: Image.Image, styles: Sequence[Image.Image], **kwargs) -> Image.Image:
    """Run ``style_transfer_steps`` (same arguments) to the end and return the stylised image."""
    result = None
    for progress in style_transfer_steps(content, styles, **kwargs):
        if progress.final:
            result = progress.image
    assert result is not None
    return result


def stylize(model, metadata: Mapping | None, content: Image.Image, styles: Sequence[Image.Image],
            blend: Sequence[float] | None, options: StyleOptions, *, preview_every: int = 0,
            cancel: CancelToken | None = None) -> Iterator[StyleProgress]:
    """One served job: ``style_transfer_steps`` with ``options`` (resolved: a concrete seed) and the
    loss-weight multipliers of the model's manifest ``metadata`` (``presets.multipliers_for``)."""
    return style_transfer_steps(content, styles, model=model, style_blend=blend,
                                weight_multipliers=multipliers_for(metadata), preview_every=preview_every,
                                cancel=cancel, **options.kwargs())


def warm_up(model) -> None:
    """Two tiny iterations, so that the first real job does not pay for lazy initialisation (no-op
    for a model without a feature trunk)."""
    if not hasattr(model, "features"):
        return
    img = Image.new("RGB", (32, 32), (120, 90, 60))
    for _ in style_transfer_steps(img, [img], model=model, image_size=32, style_size=32, iterations=2, seed=0):
        pass


def style_transfer_steps(
    content: Image.Image,
    styles: Sequence[Image.Image],
    *,
    model,
    style_blend: Sequence[float] | None = None,
    image_size: int = _D.image_size,
    style_size: int = _D.style_size,
    content_layer: int = _D.content_layer,
    content_weight: float = _D.content_weight,
    style_layers: Sequence[int] = _D.style_layers,
    style_weights: Sequence[float] = _D.style_weights,
    tv_weight: float = _D.tv_weight,
    init: str = _D.init,
    iterations: int = _D.iterations,
    lr: float = _D.lr,
    decayed_lr: float = _D.decayed_lr,
    decay_at: int = _D.decay_at,
    clamp_until: int | None = None,
    preserve_color: bool = _D.preserve_color,
    seed: int | None = None,
    preview_every: int = 0,
    weight_multipliers: WeightMultipliers | Mapping | None = None,
    cancel: CancelToken | None = None,
    optimizer: str = _D.optimizer,
    precision: str = "auto",
) -> Iterator[StyleProgress]:
    """Stylise ``content`` after ``styles``, one Adam step per ``next()``.

    Inputs:
    - content: the content image (any size; resized so its shorter side is ``image_size``).
    - styles: style images, each resized so its shorter side is ``style_size``. May be empty only
      when every style weight is 0 (feature inversion).
    - model: the feature network: an ``ImageModel`` (its ``features`` and ``pixel_bounds()`` are
      used) or a bare ``features`` Sequential taking torchvision-normalised input.
    - style_blend: one weight >= 0 per style image (default: equal); the style targets are the
      blend of the styles' Gram matrices.
    - content_layer, style_layers: indices into the network's modules (0..len(features) - 1).
    - content_weight, style_weights (one per style layer), tv_weight: loss weights in reference units.
    - init: 'content' starts from the content image, 'random' from uniform noise (seeded). With every
      style weight 0 this is feature inversion; with content_weight 0, texture synthesis.
    - iterations, lr, decayed_lr, decay_at: the Adam schedule; clamp_until (default iterations - 10):
      clamp the image to [-1.5, 1.5] (normalised) before each step before that iteration.
    - preserve_color: luminance-only transfer; the result keeps the content's colours.
    - seed: seeds the random initialisation (a random one is drawn when None; reported back).
    - preview_every: attach a preview image every this many steps (0: never).
    - weight_multipliers: the model's ``WeightMultipliers`` (or a manifest's metadata mapping holding
      them); default none (all 1).
    - cancel: polled before every step.
    - optimizer: 'adam' (the assignment's schedule above) or 'lbfgs': L-BFGS on the same objective,
      one iteration per step (history 10, strong-Wolfe line search: 1 to 6 function evaluations per
      iteration), no clamping and no learning-rate schedule (lr, decayed_lr, decay_at and
      clamp_until are ignored); it always runs in float32 (bfloat16 gradients spoil its curvature
      pairs). ``StyleProgress.evaluations`` counts the function evaluations.
    - precision: 'float32', 'bfloat16' (the network's forward and backward under bfloat16 autocast;
      Gram matrices, losses, the image and the optimiser stay float32), or 'auto': bfloat16 on a CPU
      with native bfloat16 arithmetic (``native_bf16``), float32 elsewhere.

    The defaults are ``StyleOptions``'s (the ``starry_night`` preset and the assignment's schedule).
    Returns: a generator of ``StyleProgress``; the last one has ``final=True`` and ``image`` set.
    """
    job = _check(content, styles, model=model, style_blend=style_blend, image_size=image_size,
                 style_size=style_size, content_layer=content_layer, content_weight=content_weight,
                 style_layers=style_layers, style_weights=style_weights, tv_weight=tv_weight, init=init,
                 iterations=iterations, lr=lr, decayed_lr=decayed_lr, decay_at=decay_at,
                 clamp_until=clamp_until, preserve_color=preserve_color, seed=seed,
                 preview_every=preview_every, weight_multipliers=weight_multipliers, cancel=cancel,
                 optimizer=optimizer, precision=precision)
    return _run(job)


# ---------------------------------------------------------------------- argument checks
def _number(value, field: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{field} must be a number, got {value!r}", field=field) from None
    if not math.isfinite(out) or out < minimum or (strict and out == minimum):
        bound = ">" if strict else ">="
        raise InvalidInput(f"{field} must be a finite number {bound} {minimum:g}, got {value!r}", field=field)
    return out


def _integer(value, field: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise InvalidInput(f"{field} must be an integer, got {value!r}", field=field)
    if int(value) < minimum:
        raise InvalidInput(f"{field} must be >= {minimum}, got {value!r}", field=field)
    return int(value)


def _layer(value, field: str, num_layers: int) -> int:
    index = _integer(value, field, minimum=0)
    if index >= num_layers:
        raise InvalidInput(f"{field}={index} is out of range: this feature network has layers "
                           f"0..{num_layers - 1}", field=field)
    return index


def _features_of(model) -> torch.nn.Sequential:
    features = getattr(model, "features", model)
    if not isinstance(features, torch.nn.Sequential) or len(features) == 0:
        raise InvalidInput(f"style transfer needs a model with a 'features' Sequential, got {type(model).__name__}",
                           field="model")
    return features


def _check(content, styles, *, model, style_blend, image_size, style_size, content_layer, content_weight,
           style_layers, style_weights, tv_weight, init, iterations, lr, decayed_lr, decay_at, clamp_until,
           preserve_color, seed, preview_every, weight_multipliers, cancel, optimizer="adam",
           precision="auto") -> _Job:
    features = _features_of(model)
    n_layers = len(features)
    if not isinstance(content, Image.Image):
        raise InvalidInput("the content image must be a PIL image", field="content")
    styles = tuple(styles)
    if any(not isinstance(s, Image.Image) for s in styles):
        raise InvalidInput("every style image must be a PIL image", field="styles")
    style_layers = tuple(_layer(v, f"style_layers[{i}]", n_layers) for i, v in enumerate(style_layers))
    style_weights = tuple(_number(v, f"style_weights[{i}]") for i, v in enumerate(style_weights))
    if len(style_weights) != len(style_layers):
        raise InvalidInput(f"style_weights needs one weight per style layer: {len(style_layers)} layers, "
                           f"{len(style_weights)} weights", field="style_weights")
    needs_style = any(w > 0 for w in style_weights)
    if needs_style and not styles:
        raise InvalidInput("at least one style image is needed unless every style weight is 0",
                           field="styles")
    if style_blend is None:
        blend = tuple(1.0 / len(styles) for _ in styles)
    else:
        raw = tuple(_number(v, f"style_blend[{i}]") for i, v in enumerate(style_blend))
        if len(raw) != len(styles):
            raise InvalidInput(f"style_blend needs one weight per style image: {len(styles)} images, "
                               f"{len(raw)} weights", field="style_blend")
        if styles and sum(raw) <= 0:
            raise InvalidInput("style_blend weights must not all be 0", field="style_blend")
        blend = tuple(v / sum(raw) for v in raw) if styles else ()
    if init not in INITS:
        raise InvalidInput(f"init must be one of {', '.join(INITS)}, got {init!r}", field="init")
    iterations = _integer(iterations, "iterations", minimum=1)
    if clamp_until is None:
        clamp_until = max(0, iterations - 10)
    if isinstance(weight_multipliers, WeightMultipliers):
        mult = weight_multipliers
    elif weight_multipliers is None:
        mult = WeightMultipliers()
    elif MULTIPLIERS_KEY in weight_multipliers:
        mult = WeightMultipliers.from_metadata(weight_multipliers)
    else:
        mult = WeightMultipliers(**{k: float(v) for k, v in weight_multipliers.items()})
    if optimizer not in OPTIMIZERS:
        raise InvalidInput(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}", field="optimizer")
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", field="precision")
    if precision == "auto":
        precision = "bfloat16" if optimizer == "adam" and native_bf16(_device_of(features)) else "float32"
    if seed is None:
        seed = secrets.randbits(63)
    return _Job(
        content=content, styles=styles, blend=blend, features=features, space=InputSpace.of(model),
        image_size=_integer(image_size, "image_size", minimum=8),
        style_size=_integer(style_size, "style_size", minimum=8),
        content_layer=_layer(content_layer, "content_layer", n_layers),
        content_weight=mult.content * _number(content_weight, "content_weight"),
        style_layers=style_layers, style_weights=tuple(mult.style * w for w in style_weights),
        tv_weight=mult.tv * _number(tv_weight, "tv_weight"),
        init=init, iterations=iterations,
        lr=_number(lr, "lr", strict=True), decayed_lr=_number(decayed_lr, "decayed_lr", strict=True),
        decay_at=_integer(decay_at, "decay_at", minimum=0),
        clamp_until=_integer(clamp_until, "clamp_until", minimum=0),
        preserve_color=bool(preserve_color), seed=_integer(seed, "seed", minimum=-(2**63)),
        preview_every=_integer(preview_every, "preview_every", minimum=0), cancel=cancel,
        optimizer=optimizer, precision=precision,
    )


# ---------------------------------------------------------------------- the objective
def _device_of(features: torch.nn.Module) -> torch.device:
    for p in features.parameters():
        return p.device
    return torch.device("cpu")


class StyleObjective:
    """The three loss terms of one style transfer job, targets computed once.

    Attributes:
    - content_pixels: the resized content image, (1, 3, H, W) in [0, 1].
    - content_z: what the network is shown as content (grey when preserving colour), reference
      space, (1, 3, H, W).
    """

    def __init__(self, job: _Job):
        self.job = job
        device = _device_of(job.features)
        self.content_pixels = to_pixels(job.content, job.image_size).to(device)  # (1, 3, H, W)
        style_p = [to_pixels(s, job.style_size).to(device) for s in job.styles]  # each (1, 3, Hs, Ws)
        if job.preserve_color:
            content_y = luminance(self.content_pixels)  # (1, 1, H, W)
            style_p = [gray(match_luminance(luminance(p), content_y)) for p in style_p]
            self.content_z = pixels_to_reference(gray(content_y))  # (1, 3, H, W)
        else:
            self.content_z = pixels_to_reference(self.content_pixels)  # (1, 3, H, W)
        self.upto = max((job.content_layer, *job.style_layers))  # modules past the deepest layer used never run
        self.bf16 = job.precision == "bfloat16"
        self.evaluations = 0  # of the loss and its gradient, by the optimiser
        with torch.no_grad():
            self.content_target = self.features(self.content_z, job.content_layer)[-1].float()  # (1, C, h, w)
            self.style_targets = self._style_targets(style_p)

    def features(self, z: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """The network's features of reference-space images z (N, 3, H, W) up to module ``upto``, in
        the job's precision (``gram_matrix`` turns bfloat16 into float32 Gram matrices).

        The network runs channels-last: the same numbers, and CPU max pooling is an order of magnitude
        faster on that layout."""
        x = self.job.space.to_model(z).contiguous(memory_format=torch.channels_last)
        if not self.bf16:
            return extract_features(x, self.job.features, upto)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return extract_features(x, self.job.features, upto)

    def _style_targets(self, style_pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Blended Gram matrices, one (1, C_l, C_l) per style layer; styles of one size share a batch."""
        job = self.job
        if not job.style_layers or not style_pixels:
            return [torch.zeros(()) for _ in job.style_layers]
        upto = max(job.style_layers)
        targets: list[torch.Tensor] | None = None
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(style_pixels):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        for indices in by_shape.values():
            batch = torch.cat([style_pixels[i] for i in indices])  # (n, 3, Hs, Ws)
            weights = torch.tensor([job.blend[i] for i in indices], dtype=batch.dtype,
                                   device=batch.device).view(-1, 1, 1)  # (n, 1, 1)
            feats = self.features(pixels_to_reference(batch), upto)
            grams = [(gram_matrix(feats[layer]) * weights).sum(0, keepdim=True)  # (1, C_l, C_l)
                     for layer in job.style_layers]
            targets = grams if targets is None else [t + g for t, g in zip(targets, grams, strict=True)]
        assert targets is not None
        return targets

    def losses(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted (content, style, tv) losses of the image z, (1, 3, H, W) in reference space."""
        job = self.job
        feats = self.features(z, self.upto)
        c = content_loss(job.content_weight, feats[job.content_layer].float(), self.content_target)
        s = style_loss(feats, job.style_layers, self.style_targets, job.style_weights)
        t = tv_loss(z, job.tv_weight)
        return c, s, t

    def initial_image(self) -> torch.Tensor:
        """The starting image (1, 3, H, W): the content, or uniform noise in [0, 1) seeded by the job."""
        if self.job.init == "content":
            return self.content_z.clone()
        gen = torch.Generator(device="cpu").manual_seed(self.job.seed)
        return torch.rand(self.content_z.shape, generator=gen).to(self.content_z.device)

    def noise_image(self, seed: int = 0) -> torch.Tensor:
        """Uniform-noise pixels of the content's size, as reference space z (1, 3, H, W)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.rand(self.content_pixels.shape, generator=gen).to(self.content_pixels.device)
        return pixels_to_reference(noise)

    def to_image(self, z: torch.Tensor) -> Image.Image:
        """The assignment's deprocess (min-max stretch); recoloured with the content's chrominance
        when preserving colour."""
        p = rescale(reference_to_pixels(z.detach()))  # (1, 3, H, W)
        return to_image(recolor(p, self.content_pixels) if self.job.preserve_color else p)


def style_objective(content: Image.Image, styles: Sequence[Image.Image], **kwargs) -> StyleObjective:
    """The losses ``style_transfer_steps`` (same arguments) would minimise, without running it."""
    bound = inspect.signature(style_transfer_steps).bind(content, styles, **kwargs)
    bound.apply_defaults()
    return StyleObjective(_check(**bound.arguments))


def _run(job: _Job) -> Iterator[StyleProgress]:
    start = time.perf_counter()
    objective = StyleObjective(job)
    z = objective.initial_image().requires_grad_(True)  # (1, 3, H, W)
    steps = _lbfgs_steps(job, objective, z) if job.optimizer == "lbfgs" else _adam_steps(job, objective, z)
    for t, (c, s, tv, total, rate) in enumerate(steps):
        done = t + 1
        preview = objective.to_image(z) if job.preview_every and done % job.preview_every == 0 else None
        yield StyleProgress(done, job.iterations, c, s, tv, total, time.perf_counter() - start, rate, job.seed,
                            preview=preview, evaluations=objective.evaluations)

    with torch.no_grad():
        c, s, tv = objective.losses(z)
    yield StyleProgress(job.iterations, job.iterations, c.item(), s.item(), tv.item(), (c + s + tv).item(),
                        time.perf_counter() - start, rate, job.seed, final=True, image=objective.to_image(z),
                        evaluations=objective.evaluations)


def _adam_steps(job: _Job, objective: StyleObjective, z: torch.Tensor):
    """The assignment's schedule: yields (content, style, tv, total, lr) of the image each step started from."""
    optimizer = torch.optim.Adam([z], lr=job.lr)
    rate = job.lr
    for t in range(job.iterations):
        if job.cancel is not None:
            job.cancel.check()
        if t < job.clamp_until:
            with torch.no_grad():
                z.clamp_(-CLAMP, CLAMP)
        c, s, tv = objective.losses(z)
        total = c + s + tv
        (z.grad,) = torch.autograd.grad(total, [z])  # the image's gradient only, never the network's
        objective.evaluations += 1
        if t == job.decay_at:
            optimizer = torch.optim.Adam([z], lr=job.decayed_lr)
            rate = job.decayed_lr
        optimizer.step()
        yield c.item(), s.item(), tv.item(), total.item(), rate


def _lbfgs_steps(job: _Job, objective: StyleObjective, z: torch.Tensor):
    """L-BFGS with a strong-Wolfe line search, one iteration per step; yields what ``_adam_steps``
    yields (lr 1) for the point each iteration started from. ``objective.evaluations`` counts the
    function evaluations (an iteration's start point is the previous line search's last point:
    it is not evaluated twice)."""
    optimizer = torch.optim.LBFGS([z], lr=1.0, max_iter=1, max_eval=LBFGS_MAX_EVAL, history_size=LBFGS_HISTORY,
                                  line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
    last: dict = {}

    def closure() -> torch.Tensor:
        if "z" in last and torch.equal(last["z"], z):  # the point last evaluated
            z.grad = last["grad"]
            return last["total"]
        if job.cancel is not None:
            job.cancel.check()
        c, s, tv = objective.losses(z)
        total = c + s + tv
        (z.grad,) = torch.autograd.grad(total, [z])
        objective.evaluations += 1
        last.update(z=z.detach().clone(), grad=z.grad, total=total.detach(), terms=(c, s, tv))
        return total

    for _ in range(job.iterations):
        if job.cancel is not None:
            job.cancel.check()
        closure()
        c, s, tv = last["terms"]
        total = last["total"]
        optimizer.step(closure)
        yield c.item(), s.item(), tv.item(), total.item(), 1.0
