"""Pictures of visualization results: saliency heatmaps, overlays and fooling comparisons.

Saliency maps are (H, W) non-negative tensors; images are RGB PIL images of the same size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.visualization.options import FoolingOptions


def _unit_map(saliency: torch.Tensor | np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """(H, W) -> float (H, W) in [0, 1], divided by its ``percentile``-th value (robust to one hot pixel)."""
    s = saliency.detach().cpu().double().numpy() if isinstance(saliency, torch.Tensor) else np.asarray(saliency, float)
    if s.ndim != 2:
        raise InvalidInput(f"a saliency map must be (H, W), got shape {s.shape}")
    s = np.nan_to_num(np.abs(s))
    top = np.percentile(s, percentile) if s.size else 0.0
    if top <= 0:
        top = s.max() if s.size and s.max() > 0 else 1.0
    return np.clip(s / top, 0.0, 1.0)


def hot_colormap(u: np.ndarray) -> np.ndarray:
    """Matplotlib's "hot" map (black, red, yellow, white) for values (H, W) in [0, 1] -> (H, W, 3) uint8."""
    rgb = np.stack([np.clip(3 * u, 0, 1), np.clip(3 * u - 1, 0, 1), np.clip(3 * u - 2, 0, 1)], axis=-1)  # (H, W, 3)
    return (rgb * 255 + 0.5).astype(np.uint8)


def saliency_heatmap(saliency: torch.Tensor | np.ndarray, percentile: float = 99.5) -> Image.Image:
    """The map (H, W) as a W x H RGB heatmap, as the assignment plots it (``plt.cm.hot``)."""
    return Image.fromarray(hot_colormap(_unit_map(saliency, percentile)), mode="RGB")


def saliency_overlay(image: Image.Image, saliency: torch.Tensor | np.ndarray, alpha: float = 0.6,
                     percentile: float = 99.5) -> Image.Image:
    """The heatmap over the image, opaque where the map is high: base * (1 - a u) + heat * a u."""
    u = _unit_map(saliency, percentile)  # (H, W)
    if image.size != (u.shape[1], u.shape[0]):
        image = image.resize((u.shape[1], u.shape[0]), Image.BILINEAR)
    base = np.asarray(image.convert("RGB"), dtype=np.float64)  # (H, W, 3)
    heat = hot_colormap(u).astype(np.float64)  # (H, W, 3)
    weight = (float(alpha) * u)[..., None]  # (H, W, 1)
    return Image.fromarray((base * (1 - weight) + heat * weight + 0.5).astype(np.uint8), mode="RGB")


def fooling_comparison(original: Image.Image, fooled: Image.Image, magnify: float = FoolingOptions.magnify,
                       labels: tuple[str, str] | None = None) -> Image.Image:
    """Side by side: the original, the fooling image and their difference magnified about mid-grey.

    The third panel is 0.5 + magnify * (fooled - original) in [0, 1] pixel units, clamped.
    ``labels`` (optional) caption the first two panels, e.g. with the predicted classes.
    """
    if original.size != fooled.size:
        raise InvalidInput(f"images differ in size: {original.size} vs {fooled.size}")
    a = np.asarray(original.convert("RGB"), dtype=np.float64) / 255.0  # (H, W, 3)
    b = np.asarray(fooled.convert("RGB"), dtype=np.float64) / 255.0
    diff = np.clip(0.5 + float(magnify) * (b - a), 0.0, 1.0)
    panels = [original.convert("RGB"), fooled.convert("RGB"), Image.fromarray((diff * 255 + 0.5).astype(np.uint8))]
    captions = [*(labels or ("original", "fooling image")), f"difference x{magnify:g}"]
    w, h = original.size
    band = 14
    canvas = Image.new("RGB", (3 * w, h + band), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, caption) in enumerate(zip(panels, captions, strict=True)):
        canvas.paste(panel, (i * w, band))
        draw.text((i * w + 2, 1), caption[: max(4, w // 6)], fill="black")
    return canvas
