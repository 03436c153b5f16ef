"""Generated scenes as training tensors: resized and normalised images, per-object targets, relations
and class-coverage maps.

Dimensions: N scenes, K = ``shapes.MAX_OBJECTS`` object slots, P = ``len(SLOT_PAIRS)`` object pairs,
C = 19 coverage classes (18 object classes and the background), S the network's square input side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pixelrpc.models.data import shapes
from pixelrpc.models.errors import InvalidInput

NUM_CLASSES = len(shapes.CLASS_NAMES)
BACKGROUND = NUM_CLASSES  # index of the background in the coverage maps


def resize_images(images: np.ndarray, side: int) -> np.ndarray:
    """Scenes uint8 (N, H, W, 3) -> uint8 (N, S, S, 3), bicubic as ``ImageModel.preprocess`` (PIL)."""
    if images.shape[1] == side and images.shape[2] == side:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.BICUBIC)) for img in images])


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """uint8 (N, S, S, 3) -> normalised float32 torch tensor (N, 3, S, S), as ``ImageModel.preprocess``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, S, S)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def slot_targets(batch: shapes.ShapesBatch) -> dict[str, np.ndarray]:
    """Per-object targets, largest object first (slot 0 is the labelled object).

    Returns ``shape`` int64 (N, K) (``len(SHAPES)`` marks an empty slot), ``colour`` and ``size``
    int64 (N, K) (-100, ignored, for empty slots), ``centre`` float32 (N, K, 2) in [0, 1] (x, y),
    ``present`` bool (N, K), ``presence`` float32 (N, 18): 1 for every class in the scene, and
    ``relation`` float32 (N, P, 4) with ``related`` bool (N, P) of ``relation_targets``.
    """
    k = shapes.MAX_OBJECTS
    n = batch.num_objects.astype(np.int64)  # (N,)
    drawn = n[:, None] - 1 - np.arange(k)[None, :]  # (N, K): slot j holds the object drawn (n-1-j)-th
    present = drawn >= 0
    index = np.where(present, drawn, 0)

    def pick(a):
        return np.take_along_axis(a, index, axis=1)

    side = float(batch.images.shape[1])
    centre = np.take_along_axis(batch.centres, index[..., None], axis=1) / side  # (N, K, 2)
    presence = np.zeros((len(n), NUM_CLASSES), dtype=np.float32)
    classes = object_classes(batch)  # (N, K)
    for slot in range(k):
        drawn_here = np.nonzero(batch.shapes[:, slot] >= 0)[0]
        presence[drawn_here, classes[drawn_here, slot]] = 1.0
    relation, related = relation_targets(centre, present)
    return {
        "relation": relation,
        "related": related,
        "presence": presence,
        "shape": np.where(present, pick(batch.shapes), len(shapes.SHAPES)).astype(np.int64),
        "colour": np.where(present, pick(batch.colours), -100).astype(np.int64),
        "size": np.where(present, pick(batch.sizes), -100).astype(np.int64),
        "centre": np.where(present[..., None], centre, 0.0).astype(np.float32),
        "present": present,
    }


SLOT_PAIRS = ((0, 1), (0, 2), (1, 2))  # the object pairs whose relations the slot head predicts
RELATION_WORDS = ("left", "right", "above", "below")


def relation_targets(centre: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which relations "slot j is <relation> of slot i" the caption grammar accepts, per slot pair.

    As in ``shapes``: the dominant axis always, the other axis too when its offset is at least half
    as large. Inputs: centre (N, K, 2) in (x, y), present bool (N, K). Returns float32 (N, P, 4)
    (left, right, above, below) and bool (N, P), whether both objects of the pair exist.
    """
    out = np.zeros((len(centre), len(SLOT_PAIRS), len(RELATION_WORDS)), dtype=np.float32)
    related = np.zeros((len(centre), len(SLOT_PAIRS)), dtype=bool)
    for p, (i, j) in enumerate(SLOT_PAIRS):
        dx = centre[:, j, 0] - centre[:, i, 0]  # (N,)
        dy = centre[:, j, 1] - centre[:, i, 1]
        horizontal, vertical = np.abs(dx) >= 0.5 * np.abs(dy), np.abs(dy) >= 0.5 * np.abs(dx)
        out[:, p] = np.stack(
            [horizontal & (dx < 0), horizontal & (dx >= 0), vertical & (dy < 0), vertical & (dy >= 0)], axis=1
        )
        related[:, p] = present[:, i] & present[:, j]
    return out, related


def object_classes(batch: shapes.ShapesBatch) -> np.ndarray:
    """Class index of every object slot, int64 (N, K) (0 for empty slots, whose masks are empty)."""
    return (batch.shapes.astype(np.int64) * len(shapes.COLOUR_NAMES) + batch.colours).clip(0)


def coverage_maps(masks: np.ndarray, classes: np.ndarray):
    """Which class covers each pixel, as one-hot maps: float32 torch tensor (N, C, H, W).

    Inputs: masks bool (N, K, H, W) and classes int64 (N, K) of ``object_classes``.
    Channel c < 18 marks the pixels of objects of class c, channel 18 the background; the channels
    sum to one. Average-pooled to a trunk stage's grid, it gives per-cell class fractions.
    """
    import torch

    n, k, h, w = masks.shape
    if k == 0:
        raise InvalidInput("coverage maps need a batch drawn with masks", field="with_masks")
    classes = torch.from_numpy(np.asarray(classes))
    masks = torch.from_numpy(np.asarray(masks)).float()  # (N, K, H, W)
    cover = torch.zeros(n, NUM_CLASSES + 1, h, w)
    for slot in range(k):  # a padded slot has an all-False mask, so its (clipped) class gets nothing
        cover.scatter_add_(1, classes[:, slot].view(n, 1, 1, 1).expand(n, 1, h, w), masks[:, slot : slot + 1])
    cover[:, BACKGROUND] = 1.0 - cover[:, :BACKGROUND].sum(1)
    return cover

