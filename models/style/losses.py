"""The losses of neural style transfer (Gatys, Ecker and Bethge, "Image Style Transfer Using
Convolutional Neural Networks", CVPR 2016), with the total-variation regulariser of Mahendran and
Vedaldi ("Understanding Deep Image Representations by Inverting Them", CVPR 2015), exactly as the
CS231n 2017 assignment 3 defines them: plain sums of squares, no averaging, one weight per term.

Dimensions: N images, C channels, H x W the spatial size of an image or of a feature map,
L the number of style layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pixelrpc.models.errors import InvalidInput


def extract_features(x: torch.Tensor, cnn: torch.nn.Sequential, upto: int | None = None) -> list[torch.Tensor]:
    """The output of every module of ``cnn``, in order.

    Inputs:
    - x: a batch of images in the model's input space, (N, 3, H, W).
    - cnn: a ``features`` Sequential (SqueezeNet 1.1: 13 modules).
    - upto: stop after module ``upto`` (inclusive) when only the early layers are needed; None runs
      every module.

    Returns: a list with one tensor (N, C_i, H_i, W_i) per module run; entry i is the output of
    ``cnn[i]``.
    """
    last = len(cnn) - 1 if upto is None else int(upto)
    if not 0 <= last < len(cnn):
        raise InvalidInput(f"layer {last} does not exist: the feature network has layers 0..{len(cnn) - 1}",
                           field="layer")
    features = []
    prev = x
    for index, module in enumerate(cnn):
        prev = module(prev)  # (N, C_i, H_i, W_i)
        features.append(prev)
        if index == last:
            break
    return features


def content_loss(content_weight: float, content_current: torch.Tensor,
                 content_original: torch.Tensor) -> torch.Tensor:
    """``content_weight * sum((F - P)^2)``: how far the current features are from the content's.

    Inputs:
    - content_weight: scalar weight of the term.
    - content_current: features of the current image at the content layer, (N, C, H, W).
    - content_original: features of the content image at that layer, (N, C, H, W) (or broadcastable).

    Returns: a scalar tensor.
    """
    return content_weight * (content_current - content_original).pow(2).sum()


class _Gram(torch.autograd.Function):
    """``F F^T`` of (N, C, M) features with the backward ``(dG + dG^T) F``: one matrix product instead
    of autograd's two (and no sum of their results). Low-precision features (bfloat16, float16) give a
    float32 Gram matrix; their gradient is returned in their own dtype."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        gram = torch.bmm(flat, flat.transpose(1, 2))  # (N, C, C)
        return gram.float() if flat.dtype in (torch.bfloat16, torch.float16) else gram

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (flat,) = ctx.saved_tensors
        sym = (grad + grad.transpose(1, 2)).to(flat.dtype)  # (N, C, C), symmetric
        if flat.stride(1) == 1:  # channels-last features: return the gradient in their layout
            return torch.bmm(flat.transpose(1, 2), sym).transpose(1, 2)  # (N, C, M) = ((N, M, C))^T
        return torch.bmm(sym, flat)  # (N, C, M)


def gram_matrix(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Gram matrices ``G[n, c, d] = sum_{h,w} F[n, c, h, w] F[n, d, h, w]`` of a batch of feature maps.

    Inputs:
    - features: (N, C, H, W); bfloat16 or float16 features give a float32 result.
    - normalize: divide by the number of entries of one feature map, H * W * C.

    Returns: (N, C, C).
    """
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)  # (N, C, H*W)
    gram = _Gram.apply(flat)  # (N, C, C)
    if normalize:
        gram = gram / (h * w * c)
    return gram


def style_loss(feats: Sequence[torch.Tensor], style_layers: Sequence[int], style_targets: Sequence[torch.Tensor],
               style_weights: Sequence[float]) -> torch.Tensor:
    """``sum_l w_l * ||G_l - A_l||_F^2`` over the chosen layers.

    Inputs:
    - feats: features of the current image, as returned by ``extract_features``; entry i (N, C_i, H_i, W_i).
    - style_layers: L indices into ``feats``.
    - style_targets: L target Gram matrices A_l, each (N, C_l, C_l) or (1, C_l, C_l), in the order of
      ``style_layers``.
    - style_weights: L scalar weights w_l.

    Returns: a scalar tensor (summed over the batch as well).
    """
    if not len(style_layers) == len(style_targets) == len(style_weights):
        raise InvalidInput(
            f"style_layers, style_targets and style_weights must have the same length, got "
            f"{len(style_layers)}, {len(style_targets)} and {len(style_weights)}", field="style_weights")
    loss = feats[0].new_zeros(())
    for layer, target, weight in zip(style_layers, style_targets, style_weights, strict=True):
        gram = gram_matrix(feats[layer])  # (N, C_l, C_l)
        loss = loss + weight * (gram - target).pow(2).sum()
    return loss


def tv_loss(img: torch.Tensor, tv_weight: float) -> torch.Tensor:
    """Total variation: ``tv_weight`` times the sum of squared differences of vertically and
    horizontally adjacent pixels, over every channel (and image of the batch).

    Inputs:
    - img: (N, 3, H, W).
    - tv_weight: scalar weight of the term.

    Returns: a scalar tensor.
    """
    down = img[:, :, 1:, :] - img[:, :, :-1, :]  # (N, 3, H-1, W)
    right = img[:, :, :, 1:] - img[:, :, :, :-1]  # (N, 3, H, W-1)
    return tv_weight * (down.pow(2).sum() + right.pow(2).sum())
