"""The style-transfer part of CS231n 2017 assignment 3 (StyleTransfer-PyTorch.ipynb), with the
assignment's signatures: thin adapters over ``pixelrpc.models.style``.

Gatys, Ecker and Bethge, "Image Style Transfer Using Convolutional Neural Networks", CVPR 2016;
total variation after Mahendran and Vedaldi, CVPR 2015.

The losses are the domain functions themselves (same signatures, same sums of squares).
``style_transfer`` runs the domain's loop with the notebook's schedule (200 Adam steps at 3.0, a
fresh Adam at 0.1 from step 180, the image clamped to [-1.5, 1.5] before every step but the last
10), in float32, and returns the result instead of plotting it.

Dimensions: N images, C channels, H x W spatial size.
"""

from __future__ import annotations

import os

import torch
from PIL import Image

from pixelrpc.models import style as _style
from pixelrpc.models.errors import FailedPrecondition, ModelNotFound

content_loss = _style.content_loss  # (content_weight, content_current, content_original) -> scalar
gram_matrix = _style.gram_matrix  # (features (N, C, H, W), normalize=True) -> (N, C, C)
style_loss = _style.style_loss  # (feats, style_layers, style_targets, style_weights) -> scalar
tv_loss = _style.tv_loss  # (img (N, 3, H, W), tv_weight) -> scalar

# Tried in this order when ``style_transfer`` gets no ``cnn``: torchvision's SqueezeNet 1.1 (the
# notebook's network), then the Caffe trunk imported from the assignment's sqz_notop.mat.
DEFAULT_CNNS = ("squeezenet1_1", "squeezenet1_1-caffe")


def extract_features(x, cnn):
    """The output of every module of ``cnn`` for the images x (N, 3, H, W), in order.

    ``cnn`` is the notebook's ``squeezenet1_1(...).features`` (any ``nn.Sequential``; another module
    is read as the sequence of its child modules, as the notebook's ``cnn._modules.values()``).
    Returns: a list with one tensor (N, C_i, H_i, W_i) per module.
    """
    if not isinstance(cnn, torch.nn.Sequential):
        cnn = torch.nn.Sequential(*cnn._modules.values())
    return _style.extract_features(x, cnn)


def _image(source, what: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, str | os.PathLike):
        with Image.open(source) as img:
            return img.convert("RGB")
    raise TypeError(f"{what} must be a file path or a PIL image, got {type(source).__name__}")


def _default_cnn():
    """The first of DEFAULT_CNNS in the local registry, with its weight multipliers."""
    from pixelrpc.models.registry import ModelCache, Registry
    from pixelrpc.models.style.presets import multipliers_for

    cache = ModelCache(Registry())
    for name in DEFAULT_CNNS:
        try:
            loaded = cache.get(name)
        except ModelNotFound:
            continue
        return loaded.model, multipliers_for(loaded.manifest.metadata)
    raise FailedPrecondition(
        f"style_transfer needs a feature network: pass cnn=... (e.g. torchvision's squeezenet1_1().features) "
        f"or import one into the registry ({' or '.join(DEFAULT_CNNS)}: `pixelrpc models import ...`)")


def style_transfer(content_image, style_image, image_size, style_size, content_layer, content_weight,
                   style_layers, style_weights, tv_weight, init_random=False, *, cnn=None, iterations=200,
                   seed=None):
    """The notebook's ``style_transfer``, returning the result.

    Inputs (the assignment's):
    - content_image, style_image: file names, as in the notebook, or PIL images.
    - image_size, style_size: shorter side of the content and the style image.
    - content_layer: index of the content layer; content_weight its weight.
    - style_layers: indices of the style layers; style_weights one weight each.
    - tv_weight: weight of the total-variation term.
    - init_random: start from uniform noise instead of the content image.

    PixelRPC's keyword-only additions: ``cnn``, the feature network the notebook keeps in a global
    (a ``features`` Sequential reading torchvision-normalised images, or an ``ImageModel``; default:
    the first of ``DEFAULT_CNNS`` in the local registry, with its loss-weight multipliers);
    ``iterations`` (the notebook's 200); ``seed`` of the random initialisation.

    Returns: the final image as a PIL RGB image (the notebook's ``deprocess`` of it: de-normalised
    and min-max stretched). Nothing is plotted.
    """
    multipliers = None
    if cnn is None:
        cnn, multipliers = _default_cnn()
    elif not isinstance(cnn, torch.nn.Sequential) and not hasattr(cnn, "features"):
        cnn = torch.nn.Sequential(*cnn._modules.values())
    return _style.style_transfer(
        _image(content_image, "content_image"), [_image(style_image, "style_image")], model=cnn,
        image_size=image_size, style_size=style_size, content_layer=content_layer,
        content_weight=content_weight, style_layers=list(style_layers), style_weights=list(style_weights),
        tv_weight=tv_weight, init="random" if init_random else "content", iterations=iterations,
        seed=seed, weight_multipliers=multipliers, precision="float32")
