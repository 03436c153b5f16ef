"""Calibrate a feature network's loss-weight multipliers so the presets give balanced results on it.

The presets' weights were tuned on torchvision's SqueezeNet 1.1 fed ImageNet-normalised images.
Style transfer here always optimises the image in that normalised space (``space.py``), so the
learning rate, the clamp and the total-variation term mean the same on every model; what differs
is the scale of the features. Model it with one number: the network's activations are ``k`` times
those of the reference network. The content loss (squared features) is then ``k^2`` times larger and
the style loss (squared Gram matrices, which are squared features) ``k^4`` times, so the multipliers

    content = 1 / k^2,    style = 1 / k^4,    tv = 1

bring every term back to reference units and keep the three in the proportions the presets meant.

How ``k`` is measured. The reference network's weights are not shipped (no download here), so ``k``
cannot be read off a side-by-side run. Two measurements instead:

1. ``input_scale``: what the change of input units alone predicts: the RMS ratio, at the content
   layer, of the network's features on its own input and on the same image fed in normalised units
   (Caffe trunk: 255 * std = 57 predicted, 49.3 measured). Taking it for ``k`` treats the reference
   network as the same weights reading ~50x smaller inputs, which over-corrects (the style barely
   shows); it is reported, not used.
2. ``balance_scale``: for each preset, on its content and style image, the ``k`` at which the
   finished run (``iterations`` steps) has lost as much of the content as it has kept of the style
   gap: ``rho_c = C(result) / C(uniform noise)`` equals ``rho_s = S(result) / S(content image)``.
   Both ratios are free of the model's units; ``rho_c`` falls and ``rho_s`` rises as ``k`` grows, so
   bisection in ``log k`` finds the balance. The model's ``k`` is the geometric mean over the presets.

Run once per model: ``python -m pixelrpc.models.style.calibrate`` (Caffe trunk of the shared data).
Result for the Caffe trunk: k = 8.92 (composition_vii), 53.8 (the_scream), 20.3 (starry_night),
geometric mean 21.36, hence ``presets.CAFFE_SQUEEZENET_MULTIPLIERS``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from pixelrpc.models.style.presets import PRESETS, StylePreset, WeightMultipliers, get_preset
from pixelrpc.models.style.space import InputSpace, pixels_to_reference, to_pixels
from pixelrpc.models.style.transfer import style_objective, style_transfer_steps


def multipliers_for_scale(k: float) -> WeightMultipliers:
    """The multipliers of a network whose features are ``k`` times the reference network's."""
    return WeightMultipliers(content=1.0 / k**2, style=1.0 / k**4, tv=1.0)


def input_scale(model, content: Image.Image, layer: int = 3, size: int = 192) -> float:
    """RMS of ``model``'s features at ``layer`` on its own input over those on normalised input."""
    z = pixels_to_reference(to_pixels(content, size))  # (1, 3, H, W)
    features = getattr(model, "features", model)
    with torch.no_grad():
        own = features[: layer + 1](InputSpace.of(model).to_model(z))
        normalised = features[: layer + 1](z)
    return float(own.pow(2).mean().sqrt() / normalised.pow(2).mean().sqrt())


@dataclass(frozen=True)
class Balance:
    """How a finished run traded content for style: both ratios in [0, ~1], lower is better."""

    k: float
    rho_content: float  # content loss of the result / that of a uniform-noise image
    rho_style: float  # style loss of the result / that of the content image


def relative_losses(model, content: Image.Image, style: Image.Image, preset: StylePreset, k: float, *,
                    iterations: int = 200, seed: int = 0) -> Balance:
    """Run ``preset`` with the multipliers of scale ``k`` and measure the balance of its result (in
    float32: bfloat16 rounding is not invariant under the feature scale the calibration relies on)."""
    kwargs = dict(preset.kwargs(), model=model, weight_multipliers=multipliers_for_scale(k),
                  iterations=iterations, seed=seed, precision="float32")
    objective = style_objective(content, [style], **kwargs)
    with torch.no_grad():
        c_noise = objective.losses(objective.noise_image(seed))[0].item()
        s_start = objective.losses(objective.content_z)[1].item()
    final = None
    for progress in style_transfer_steps(content, [style], **kwargs):
        final = progress
    assert final is not None and final.final
    return Balance(k, final.content_loss / c_noise, final.style_loss / s_start)


def balance_scale(model, content: Image.Image, style: Image.Image, preset: StylePreset, *, lo: float = 1.0,
                  hi: float = 256.0, steps: int = 8, iterations: int = 200, log=print) -> Balance:
    """Bisect ``log k`` in [lo, hi] for ``rho_content == rho_style``; returns the closest run."""
    best: Balance | None = None
    a, b = math.log(lo), math.log(hi)
    for _ in range(steps):
        k = math.exp((a + b) / 2)
        bal = relative_losses(model, content, style, preset, k, iterations=iterations)
        log(f"  {preset.name}: k={k:8.3f}  rho_content={bal.rho_content:.4f}  rho_style={bal.rho_style:.4f}")
        if best is None or abs(math.log(bal.rho_content / bal.rho_style)) < abs(
                math.log(best.rho_content / best.rho_style)):
            best = bal
        if bal.rho_content > bal.rho_style:  # style too strong: the network's features are larger
            a = math.log(k)
        else:
            b = math.log(k)
    assert best is not None
    return best


@dataclass(frozen=True)
class Calibration:
    k: float
    multipliers: WeightMultipliers
    per_preset: dict[str, Balance]
    input_scale: float


def calibrate(model, content: Image.Image, styles: Mapping[str, Image.Image], *, steps: int = 8,
              iterations: int = 200, log=print) -> Calibration:
    """Balance every preset of ``styles`` (preset name -> its style image) and combine them."""
    per_preset = {}
    for name, style in styles.items():
        per_preset[name] = balance_scale(model, content, style, get_preset(name), steps=steps,
                                         iterations=iterations, log=log)
    k = math.exp(sum(math.log(b.k) for b in per_preset.values()) / len(per_preset))
    return Calibration(k, multipliers_for_scale(k), per_preset, input_scale(model, content))


def main(argv: list[str] | None = None) -> None:
    data = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cs231n"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mat", type=Path, default=data / "sqz_notop.mat", help="Caffe SqueezeNet trunk")
    parser.add_argument("--styles-dir", type=Path, default=data / "styles",
                        help="folder with tubingen.jpg and one <preset>.jpg per preset")
    parser.add_argument("--steps", type=int, default=8, help="bisection steps per preset")
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args(argv)
    from pixelrpc.models import zoo

    features = zoo.caffe_squeezenet_features(args.mat)
    model = zoo.ImageModel(net=features, features=features, class_names=[], input_size=224,
                           mean=zoo.CAFFE_MEAN_PIXEL, std=zoo.CAFFE_STD, value_scale=255.0)
    content = Image.open(args.styles_dir / "tubingen.jpg")
    styles = {name: Image.open(args.styles_dir / f"{name}.jpg") for name in PRESETS}
    result = calibrate(model, content, styles, steps=args.steps, iterations=args.iterations)
    print(json.dumps({
        "k": result.k,
        "input_scale": result.input_scale,
        "per_preset": {n: vars(b) for n, b in result.per_preset.items()},
        **result.multipliers.to_metadata(),
    }, indent=2))


if __name__ == "__main__":
    main()
