"""The CS231n 2017 assignment 3 style-transfer loop, written as the notebook writes it: the reference
that ``bench/style.py`` and the demo gallery compare PixelRPC with.

Same trunk as PixelRPC (any ``ImageModel``; for the Caffe SqueezeNet 1.1 trunk the image is fed as
the Caffe network reads it, 0-255 minus the mean pixel with conv1 reading the swapped channels,
through ``InputSpace``), the notebook's weights (a preset's numbers as they are, no multipliers), and
the notebook's code: every module of the trunk on every step, ``bmm`` Gram matrices, sums of squares,
``loss.backward()``, Adam at 3.0 then a fresh Adam at 0.1 from iteration 180, the clamp to
[-1.5, 1.5] before every step but the last 10, all in float32.

Also ``style_distance``: a scale-free measure of how stylised an image is (the notebook's loss is not
comparable across weightings).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from pixelrpc.models.style.space import (
    CLAMP,
    InputSpace,
    pixels_to_reference,
    reference_to_pixels,
    rescale,
    to_image,
    to_pixels,
)


def notebook_features(x: torch.Tensor, cnn: torch.nn.Sequential) -> list[torch.Tensor]:
    """The notebook's ``extract_features``: the output of every module, (N, C_i, H_i, W_i) each."""
    features = []
    prev_feat = x
    for module in cnn:
        next_feat = module(prev_feat)
        features.append(next_feat)
        prev_feat = next_feat
    return features


def notebook_gram(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """The notebook's ``gram_matrix``: (N, C, H, W) -> (N, C, C)."""
    n, c, h, w = features.size()
    f = features.view(n, c, h * w)
    gram = torch.bmm(f, f.transpose(1, 2))
    if normalize:
        gram = gram / (h * w * c)
    return gram


@dataclass
class NotebookRun:
    image: Image.Image  # the notebook's deprocess of the result
    z: torch.Tensor  # the result in reference space, (1, 3, H, W)
    step_seconds: list[float]  # wall time of every step
    wall_s: float  # targets and every step
    final_loss: float  # the notebook's loss of the image the last step started from


def notebook_trunk(model) -> torch.nn.Sequential:
    """The trunk as the notebook holds it: weights in the default (NCHW) layout. A served model may
    keep its weights channels-last (``zoo.memory_format_for``); the notebook's code (``view`` of the
    features) and speed are those of NCHW, so the reference gets an NCHW copy."""
    cnn = getattr(model, "features", model)
    if all(p.is_contiguous() for p in cnn.parameters()):
        return cnn
    return copy.deepcopy(cnn).to(memory_format=torch.contiguous_format)


def notebook_style_transfer(model, content: Image.Image, style: Image.Image, *, image_size: int, style_size: int,
                            content_layer: int, content_weight: float, style_layers: Sequence[int],
                            style_weights: Sequence[float], tv_weight: float, iterations: int = 200,
                            init_random: bool = False, decay_lr_at: int = 180) -> NotebookRun:
    """The notebook's ``style_transfer`` (200 iterations by default) on ``model``'s trunk."""
    start = time.perf_counter()
    cnn = notebook_trunk(model)
    space = InputSpace.of(model)

    def extract_features(img_var):
        return notebook_features(space.to_model(img_var), cnn)

    content_img = pixels_to_reference(to_pixels(content, image_size))
    feats = extract_features(content_img)
    content_target = feats[content_layer].clone().detach()
    style_img = pixels_to_reference(to_pixels(style, style_size))
    feats = extract_features(style_img)
    style_targets = [notebook_gram(feats[idx].clone()).detach() for idx in style_layers]
    if init_random:
        img = torch.Tensor(content_img.size()).uniform_(0, 1)
    else:
        img = content_img.clone()
    img_var = img.requires_grad_(True)
    optimizer = torch.optim.Adam([img_var], lr=3.0)
    steps, loss = [], torch.zeros(())
    for t in range(iterations):
        t0 = time.perf_counter()
        if t < iterations - 10:
            img.data.clamp_(-CLAMP, CLAMP)
        optimizer.zero_grad()
        feats = extract_features(img_var)
        loss = content_weight * torch.sum((feats[content_layer] - content_target) ** 2)
        for i, idx in enumerate(style_layers):
            loss = loss + style_weights[i] * torch.sum((notebook_gram(feats[idx]) - style_targets[i]) ** 2)
        loss = loss + tv_weight * (torch.sum((img_var[:, :, 1:, :] - img_var[:, :, :-1, :]) ** 2)
                                   + torch.sum((img_var[:, :, :, 1:] - img_var[:, :, :, :-1]) ** 2))
        loss.backward()
        if t == decay_lr_at:
            optimizer = torch.optim.Adam([img_var], lr=0.1)
        optimizer.step()
        steps.append(time.perf_counter() - t0)
    z = img_var.detach()
    return NotebookRun(to_image(rescale(reference_to_pixels(z))), z, steps, time.perf_counter() - start,
                       float(loss.detach()))


def style_distance(model, image: Image.Image, style: Image.Image, style_size: int,
                   style_layers: Sequence[int]) -> float:
    """Mean over ``style_layers`` of the relative Gram distance ``||G_l(z) - A_l||_F / ||A_l||_F``.

    Inputs: ``image`` a result as delivered (its 8-bit pixels, at its own size); ``style`` resized to ``style_size``; the
    targets ``A_l`` are the style's Gram matrices. Unit-free (the same under any scaling of the
    features), float32, every module run as the notebook does. 0 is the style's own statistics.
    """
    space, cnn = InputSpace.of(model), notebook_trunk(model)
    z = pixels_to_reference(to_pixels(image, min(image.size)))  # (1, 3, H, W)
    with torch.no_grad():
        feats = notebook_features(space.to_model(z), cnn)
        targets = notebook_features(space.to_model(pixels_to_reference(to_pixels(style, style_size))), cnn)
        out = [float(torch.linalg.norm(notebook_gram(feats[i]) - notebook_gram(targets[i]))
                     / torch.linalg.norm(notebook_gram(targets[i]))) for i in style_layers]
    return sum(out) / len(out)
