"""Pixels, the space style transfer optimises in, and the feature network's input space.

The assignment optimises the image in torchvision's normalised space, ``z = (p - m) / s`` with the
ImageNet ``m``/``s`` and pixels ``p`` in [0, 1], and all of its numbers live there: the learning rate
(3.0, then 0.1), the clamp to [-1.5, 1.5] and the total-variation weight. Style transfer here always
optimises that same ``z``, whatever the feature network, and feeds the network through a fixed
per-channel affine map derived from the model's ``pixel_bounds()``: black and white, ``lo`` and ``hi``,
fix the map ``x = lo + p * (hi - lo)`` from pixels to the model's input, hence

    x = lo + (m + s * z) * (hi - lo)          (channel-wise)

For a torchvision-normalised model this is the identity. For the Caffe SqueezeNet trunk (RGB on
0-255 minus the mean pixel) it is ``x = 255 * (m + s z) - mean_pixel``, so the assignment's clamp
z in [-1.5, 1.5] is x in ``lo + (m -/+ 1.5 s) * (hi - lo)`` = about [-86.6, +88.6], [-86.1, +85.3],
[-86.5, +85.6] for R, G, B (pixels m -/+ 1.5 s: [0.142, 0.829], [0.120, 0.792], [0.069, 0.744]),
and Adam's step in pixel units is the same as in the assignment. Only the loss terms measured on
features depend on the model; ``pixelrpc.models.style.calibrate`` handles those.

Dimensions: N images, H x W pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pixelrpc.models.errors import InvalidInput

# torchvision's ImageNet statistics: the assignment's SQUEEZENET_MEAN / SQUEEZENET_STD.
REFERENCE_MEAN = (0.485, 0.456, 0.406)
REFERENCE_STD = (0.229, 0.224, 0.225)
# The assignment clamps the image to [-CLAMP, CLAMP] in the reference space.
CLAMP = 1.5
# ITU-R BT.601 luma weights (the Y of YIQ), for colour-preserving transfer.
LUMA = (0.299, 0.587, 0.114)
# The I and Q rows of the RGB -> YIQ matrix.
_YIQ = np.array([LUMA, (0.595716, -0.274453, -0.321263), (0.211456, -0.522591, 0.311135)], dtype=np.float64)


def _channels(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


@dataclass(frozen=True)
class InputSpace:
    """The affine map from the reference space ``z`` (RGB) to a feature network's input ``x``.

    ``lo`` and ``hi`` are the model's inputs for black and white pixels, (1, 3, 1, 1), in RGB order;
    ``bgr`` says the network reads its channels in B, G, R order.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    bgr: bool = False

    @classmethod
    def reference(cls) -> InputSpace:
        """The space of a torchvision-normalised model: the map is the identity."""
        m, s = torch.tensor(REFERENCE_MEAN).view(1, 3, 1, 1), torch.tensor(REFERENCE_STD).view(1, 3, 1, 1)
        return cls(lo=-m / s, hi=(1 - m) / s)

    @classmethod
    def of(cls, model) -> InputSpace:
        """The space of ``model``: anything with ``pixel_bounds()`` (``ImageModel``), else the reference.

        ``pixel_bounds()`` gives (lo, hi) in the model's channel order; a BGR model's are reversed.
        """
        if not hasattr(model, "pixel_bounds"):
            return cls.reference()
        lo, hi = model.pixel_bounds()
        bgr = getattr(model, "channel_order", "RGB") == "BGR"
        lo, hi = lo.detach().float().cpu().reshape(1, 3, 1, 1), hi.detach().float().cpu().reshape(1, 3, 1, 1)
        if bgr:
            lo, hi = lo.flip(1), hi.flip(1)
        if not bool(torch.all(hi > lo)):
            raise InvalidInput(f"the model's pixel bounds are not increasing (lo={lo.flatten().tolist()}, "
                               f"hi={hi.flatten().tolist()})", field="model")
        return cls(lo=lo, hi=hi, bgr=bgr)

    def to_model(self, z: torch.Tensor) -> torch.Tensor:
        """Reference-space images (N, 3, H, W) -> the model's input (N, 3, H, W), differentiably."""
        m, s = _channels(REFERENCE_MEAN, z), _channels(REFERENCE_STD, z)
        lo, span = self.lo.to(z), (self.hi - self.lo).to(z)
        x = lo + (m + s * z) * span
        return x.flip(1) if self.bgr else x

    def clamp_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The assignment's clamp z in [-1.5, 1.5] expressed in the model's input space, (1, 3, 1, 1) each."""
        one = torch.ones(1, 3, 1, 1)
        return self.to_model(-CLAMP * one), self.to_model(CLAMP * one)


# ---------------------------------------------------------------------- pixels <-> reference space
def resized_size(size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """(width, height) of an image of ``size`` (W, H) resized so its shorter side is ``shorter_side``."""
    w, h = size
    scale = shorter_side / min(w, h)
    return max(shorter_side, round(w * scale)), max(shorter_side, round(h * scale))


def to_pixels(img: Image.Image, shorter_side: int) -> torch.Tensor:
    """A PIL image resized (bilinear, aspect kept) so its shorter side is ``shorter_side``.

    Returns: RGB pixels in [0, 1], (1, 3, H, W) float32.
    """
    if shorter_side < 8:
        raise InvalidInput(f"image size must be at least 8 pixels, got {shorter_side}", field="image_size")
    img = img.convert("RGB")
    target = resized_size(img.size, shorter_side)
    if target != img.size:
        img = img.resize(target, Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()  # (1, 3, H, W)


def pixels_to_reference(p: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (N, 3, H, W) -> reference space z."""
    return (p - _channels(REFERENCE_MEAN, p)) / _channels(REFERENCE_STD, p)


def reference_to_pixels(z: torch.Tensor) -> torch.Tensor:
    """Reference space z (N, 3, H, W) -> pixels (not clipped)."""
    return z * _channels(REFERENCE_STD, z) + _channels(REFERENCE_MEAN, z)


def rescale(p: torch.Tensor) -> torch.Tensor:
    """The assignment's ``deprocess`` stretch: map the image's min and max (over all channels) to 0 and 1."""
    low, high = p.min(), p.max()
    return (p - low) / (high - low).clamp_min(1e-12)


def to_image(p: torch.Tensor) -> Image.Image:
    """Pixels in [0, 1], (1, 3, H, W) or (3, H, W) -> an RGB PIL image (values clipped)."""
    p = p.detach().reshape(-1, *p.shape[-3:])[0]  # (3, H, W)
    hwc = (p.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    return Image.fromarray(np.ascontiguousarray(hwc), mode="RGB")


# ---------------------------------------------------------------------- colour preservation
def luminance(p: torch.Tensor) -> torch.Tensor:
    """Y of YIQ for pixels (N, 3, H, W) -> (N, 1, H, W)."""
    return (p * _channels(LUMA, p)).sum(dim=1, keepdim=True)  # (N, 1, H, W)


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """Shift and scale the style's luminance to the content's mean and standard deviation.

    The luminance-only transfer of Gatys, Bethge, Hertzmann and Shechtman, "Preserving Color in Neural
    Artistic Style Transfer" (arXiv:1606.05897), section 2.2.

    Inputs:
    - style_y: (1, 1, Hs, Ws); content_y: (1, 1, H, W).
    Returns: (1, 1, Hs, Ws).
    """
    s_mean, s_std = style_y.mean(), style_y.std().clamp_min(1e-6)
    return (style_y - s_mean) * (content_y.std() / s_std) + content_y.mean()


def gray(y: torch.Tensor) -> torch.Tensor:
    """A luminance map (N, 1, H, W) as a grey RGB image (N, 3, H, W)."""
    return y.expand(-1, 3, -1, -1).contiguous()


def recolor(p: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Keep the luminance of ``p`` and take the chrominance (I, Q of YIQ) of ``content``.

    Inputs:
    - p: stylised pixels (1, 3, H, W); content: content pixels (1, 3, H, W).
    Returns: pixels (1, 3, H, W) clipped to [0, 1].
    """
    yiq = torch.as_tensor(_YIQ, dtype=p.dtype, device=p.device)  # (3, 3)
    y = luminance(p)  # (1, 1, H, W)
    iq = torch.einsum("kc,nchw->nkhw", yiq[1:], content)  # (1, 2, H, W)
    rgb = torch.einsum("ck,nkhw->nchw", torch.linalg.inv(yiq), torch.cat([y, iq], dim=1))  # (1, 3, H, W)
    return rgb.clamp(0, 1)
