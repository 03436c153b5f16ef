"""The network-visualization part of CS231n 2017 assignment 3 (NetworkVisualization-PyTorch.ipynb),
with the assignment's signatures: thin adapters over ``pixelrpc.models.visualization``.

Saliency: Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", ICLR workshop 2014
(arXiv:1312.6034); fooling images: Szegedy et al., "Intriguing properties of neural networks",
ICLR 2014; class visualization with the priors of Yosinski et al., 2015 (arXiv:1506.06579).

``model`` is what the notebook passes (a torch classifier such as torchvision's SqueezeNet 1.1,
reading ImageNet-normalised RGB) or a PixelRPC ``ImageModel``. As in the notebook, the functions put
a bare module in eval mode. Nothing here plots or opens a window.

Dimensions: N images, H x W pixels, K classes.
"""

from __future__ import annotations

import logging

import torch
from PIL import Image

from pixelrpc.models import visualization as vis
from pixelrpc.models.style.space import reference_to_pixels, rescale, to_image
from pixelrpc.models.visualization.class_visualization import ClassVisualizationProgress
from pixelrpc.models.zoo import ImageModel

log = logging.getLogger(__name__)

jitter = vis.jitter  # the notebook's helper: roll (N, C, H, W) by ox pixels right and oy down


def compute_saliency_maps(X, y, model):
    """Max over channels of |d score_y / d pixel| for each image.

    Inputs: X (N, 3, H, W) float tensor of normalised images; y (N,) LongTensor of labels; model.
    Returns: saliency, a tensor (N, H, W).
    """
    return vis.compute_saliency_maps(X, y, model)


def make_fooling_image(X, target_y, model, *, learning_rate=1.0, max_iters=100):
    """Gradient ascent on the target score, steps of L2 length ``learning_rate``, until the model
    predicts ``target_y``, as in the notebook (no clamping of pixels).

    Inputs: X (1, 3, H, W) (N images work too: each is fooled independently); target_y an int in
    [0, K); model. ``learning_rate`` (1 in the notebook) and ``max_iters`` (the notebook says fewer
    than 100 steps should do) are PixelRPC's keyword-only additions; an image still not fooled after
    ``max_iters`` steps is returned as it is, with a warning logged.

    Returns: X_fooling, a tensor shaped like X.
    """
    result = vis.make_fooling_image(X, target_y, model, learning_rate, max_iters, clamp=False)
    if not bool(result.succeeded.all()):
        log.warning("make_fooling_image: the model predicts %s, not the target %s, after %d steps",
                    result.predicted.tolist(), result.target.tolist(), max_iters)
    return result.images


_CLASS_VIS_DEFAULTS = {"l2_reg": 1e-3, "learning_rate": 25, "num_iterations": 100, "blur_every": 10,
                       "max_jitter": 16, "show_every": 25}
_CLASS_VIS_EXTRAS = ("seed", "size", "return_tensor")


def create_class_visualization(target_y, model, dtype, **kwargs):
    """Regularised gradient ascent from noise to an image that ``model`` scores as ``target_y``.

    Inputs:
    - target_y: a class index in [0, K).
    - model: the classifier; as in the notebook it is first converted with ``model.type(dtype)``.
    - dtype: a torch tensor type (``torch.FloatTensor``, ``torch.cuda.FloatTensor``), a torch dtype,
      or None to leave the model as it is.

    Keyword arguments, with the assignment's defaults: l2_reg=1e-3, learning_rate=25,
    num_iterations=100, blur_every=10, max_jitter=16, show_every=25. ``show_every`` only logs the
    target score (INFO, logger ``pixelrpc.models.assignment.visualization``) at the steps the
    notebook shows the image: nothing is plotted. PixelRPC's additions: ``seed`` (initial noise and
    jitter; default drawn from torch's global generator), ``size`` (the square side, default 224),
    ``return_tensor``.

    Returns: like the notebook, ``deprocess(img)``: the image as a PIL image (de-normalised and
    min-max rescaled). With ``return_tensor=True``: the normalised image tensor (1, 3, S, S) instead.
    """
    settings = {k: kwargs.pop(k, v) for k, v in _CLASS_VIS_DEFAULTS.items()}
    seed, size, return_tensor = (kwargs.pop(k, None) for k in _CLASS_VIS_EXTRAS)
    if kwargs:
        raise TypeError(f"create_class_visualization got unexpected keyword arguments {sorted(kwargs)}")
    if dtype is not None:
        model = model.to(dtype) if isinstance(dtype, torch.dtype) else model.type(dtype)
    show_every = settings.pop("show_every")
    result = None
    for item in vis.class_visualization_steps(target_y, model, seed=seed, size=size, show_every=0, **settings):
        result = item
        if isinstance(item, ClassVisualizationProgress) and show_every and (
                item.iteration == 1 or item.iteration % show_every == 0
                or item.iteration == settings["num_iterations"]):
            log.info("class %s, iteration %d / %d: score %.4g", target_y, item.iteration,
                     settings["num_iterations"], float(item.target_score[0]))
    if return_tensor:
        return result.images
    return _deprocess(result, model)


def _deprocess(result, model) -> Image.Image:
    """The notebook's ``deprocess`` of the first image: de-normalised (torchvision's ImageNet
    normalisation, what a bare module reads) and min-max stretched to [0, 1]. An ``ImageModel`` has
    its own normalisation: its ``deprocess`` (clamped to valid pixels, not stretched) is used."""
    if isinstance(model, ImageModel):
        return result.pil[0]
    return to_image(rescale(reference_to_pixels(result.images[:1].detach().float().cpu())))
