"""The quality gate of explain-a-caption: do a word's saliency maps fall on the object it names?

On held-out scenes of the shapes world (``pixelrpc.models.data.shapes``), every word of the greedy
caption that names the colour or the shape of exactly one object of the scene ("red" when one object
is red, "circle" when one object is a circle) is explained (``explain.explain_steps``); the gate
compares the mean of its map inside that object's mask with the mean outside every object. Each map
is first divided by its own mean, so every word weighs the same whatever its gradient's scale; the
ratio is the mean inside over the mean outside, averaged over all such words of all scenes
(uniform maps give 1). Words naming a colour or shape that several objects share, or none, are not
counted (they do not say which object they mean).

Dimensions: N scenes, K object slots, S the encoder's working side.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from pixelrpc.models.captioning.explain import ExplainedWord, explain_steps
from pixelrpc.models.data import shapes


@dataclass(frozen=True)
class ExplainGateReport:
    """What the gate measured: the ratio, how many scenes and words it rests on, and examples."""

    scenes: int
    words: int  # words naming exactly one object's colour or shape
    ratio: float  # mean normalised map inside the named object / outside every object
    colour_ratio: float
    shape_ratio: float
    seconds: float
    examples: list[dict] = field(default_factory=list)  # a few {"caption", "word", "ratio"}

    def to_json(self) -> dict:
        return asdict(self)


def _nearest(mask: np.ndarray, side: int) -> np.ndarray:
    """bool (H, W) -> bool (S, S), nearest neighbour on pixel centres."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(side) + 0.5) * h / side).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(side) + 0.5) * w / side).astype(np.int64), w - 1)
    return mask[rows][:, cols]


def named_object(word: str, colours: np.ndarray, kinds: np.ndarray) -> int | None:
    """The index of the one object whose colour or shape ``word`` names, else None.

    ``colours``, ``kinds``: int (n,) indices into ``shapes.COLOUR_NAMES`` / ``shapes.SHAPES`` of a
    scene's n objects."""
    if word in shapes.COLOUR_NAMES:
        hits = np.flatnonzero(colours == shapes.COLOUR_NAMES.index(word))
    elif word in shapes.SHAPES:
        hits = np.flatnonzero(kinds == shapes.SHAPES.index(word))
    else:
        return None
    return int(hits[0]) if len(hits) == 1 else None


def explain_gate(captioner, encoder, batch: shapes.ShapesBatch, *, scenes: int | None = None,
                 max_length: int = 30, max_examples: int = 6) -> ExplainGateReport:
    """Measure the gate on the first ``scenes`` scenes of ``batch`` (held-out scenes with masks)."""
    from PIL import Image

    started = time.perf_counter()
    n = len(batch) if scenes is None else min(int(scenes), len(batch))
    sums = {"colour": [0.0, 0.0, 0], "shape": [0.0, 0.0, 0]}  # inside, outside, count
    examples: list[dict] = []
    for i in range(n):
        x = encoder.preprocess([Image.fromarray(batch.images[i])])  # (1, 3, S, S)
        side = int(x.shape[-1])
        k = int(batch.num_objects[i])
        masks = np.stack([_nearest(m, side) for m in batch.masks[i, :k]])  # (k, S, S)
        outside = ~masks.any(axis=0)
        words = [item for item in explain_steps(captioner, encoder, x, max_length=max_length)
                 if isinstance(item, ExplainedWord)]
        for item in words:
            j = named_object(item.word, batch.colours[i, :k], batch.shapes[i, :k])
            if j is None or not masks[j].any() or not outside.any():
                continue
            smap = item.saliency / max(float(item.saliency.mean()), np.finfo(np.float32).tiny)
            inside_mean, outside_mean = float(smap[masks[j]].mean()), float(smap[outside].mean())
            kind = "colour" if item.word in shapes.COLOUR_NAMES else "shape"
            acc = sums[kind]
            acc[0] += inside_mean
            acc[1] += outside_mean
            acc[2] += 1
            if len(examples) < max_examples:
                examples.append({"scene": i, "caption": " ".join(w.word for w in words), "word": item.word,
                                 "ratio": inside_mean / outside_mean if outside_mean > 0 else math.inf})

    def ratio(*kinds: str) -> float:
        inside = sum(sums[k][0] for k in kinds)
        outside = sum(sums[k][1] for k in kinds)
        return inside / outside if outside > 0 else 0.0

    return ExplainGateReport(scenes=n, words=sums["colour"][2] + sums["shape"][2],
                             ratio=ratio("colour", "shape"), colour_ratio=ratio("colour"),
                             shape_ratio=ratio("shape"), seconds=round(time.perf_counter() - started, 2),
                             examples=examples)
