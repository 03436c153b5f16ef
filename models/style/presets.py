"""The assignment's three parameter sets, and the per-model multipliers of the loss weights.

Loss weights are always given in *reference units*: the units of torchvision's ImageNet-normalised
SqueezeNet 1.1, for which the CS231n 2017 presets were tuned. A feature network whose activations
have another scale carries in its manifest ``metadata["style_weight_multipliers"]`` three numbers
``{"content": a, "style": b, "tv": c}``; the weights actually used are ``a * content_weight``,
``b * style_weights[l]`` and ``c * tv_weight``. How they are measured: ``calibrate.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pixelrpc.models.errors import InvalidInput, ModelCorrupt, clip

MULTIPLIERS_KEY = "style_weight_multipliers"


@dataclass(frozen=True)
class WeightMultipliers:
    """Factors that turn reference-unit loss weights into a given model's units."""

    content: float = 1.0
    style: float = 1.0
    tv: float = 1.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidInput(f"style weight multiplier {name!r} must be a finite number > 0, got {value!r}",
                                   field=f"{MULTIPLIERS_KEY}.{name}")

    @classmethod
    def from_metadata(cls, metadata: Mapping | None) -> WeightMultipliers:
        """The multipliers a manifest's metadata carries; all 1 when it carries none."""
        raw = (metadata or {}).get(MULTIPLIERS_KEY)
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping) or set(raw) - {"content", "style", "tv"}:
            raise ModelCorrupt(f"metadata[{MULTIPLIERS_KEY!r}] must map 'content', 'style' and 'tv' to numbers, "
                               f"got {raw!r}")
        try:
            return cls(**{k: float(v) for k, v in raw.items()})
        except (TypeError, ValueError, InvalidInput) as exc:
            raise ModelCorrupt(f"metadata[{MULTIPLIERS_KEY!r}] is invalid: {exc}") from exc

    def to_metadata(self) -> dict:
        """``{"style_weight_multipliers": {...}}``, ready to merge into a manifest's metadata."""
        return {MULTIPLIERS_KEY: asdict(self)}


# The Caffe SqueezeNet 1.1 trunk of ``sqz_notop.mat`` takes the notebook's weights as they are (all 1):
# the CS231n notebook's loop on this trunk (BGR 0-255 minus the mean pixel) with those weights is the
# stylisation PixelRPC must at least match (issue 11, target 6; docs/style.md "Loss-weight multipliers").
# The importer (``zoo.import_caffe_squeezenet``) merges ``.to_metadata()`` into the manifest.
CAFFE_SQUEEZENET_MULTIPLIERS = WeightMultipliers(content=1.0, style=1.0, tv=1.0)
# What ``python -m pixelrpc.models.style.calibrate`` measured (features ~21.36x the reference
# network's: content 1/k^2, style 1/k^4; equal relative progress on content and style). Importers
# wrote it into Caffe manifests until issue 11; it gives visibly weaker stylisation than the
# notebook (relative Gram distance 0.47 vs 0.25, starry_night at 192 px), so a Caffe manifest still
# carrying exactly these numbers gets ``CAFFE_SQUEEZENET_MULTIPLIERS`` instead.
CALIBRATED_CAFFE_MULTIPLIERS = WeightMultipliers(content=2.19e-3, style=4.81e-6, tv=1.0)


def multipliers_for(metadata: Mapping | None) -> WeightMultipliers:
    """The multipliers of a model, from its manifest metadata.

    An explicit ``style_weight_multipliers`` entry wins, except on a Caffe SqueezeNet trunk
    (``metadata["source"] == "caffe-mat"``) whose entry is the superseded ``CALIBRATED_CAFFE_MULTIPLIERS``
    its importer wrote before issue 11: that trunk, and one imported before importers wrote the entry,
    gets ``CAFFE_SQUEEZENET_MULTIPLIERS``. Any other model is taken to be in reference units (all 1).
    """
    metadata = metadata or {}
    if MULTIPLIERS_KEY in metadata:
        given = WeightMultipliers.from_metadata(metadata)
        if metadata.get("source") == "caffe-mat" and given == CALIBRATED_CAFFE_MULTIPLIERS:
            return CAFFE_SQUEEZENET_MULTIPLIERS
        return given
    if metadata.get("source") == "caffe-mat":
        return CAFFE_SQUEEZENET_MULTIPLIERS
    return WeightMultipliers()


@dataclass(frozen=True)
class StylePreset:
    """One of the assignment's parameter sets (weights in reference units)."""

    name: str
    image_size: int
    style_size: int
    content_layer: int
    content_weight: float
    style_layers: tuple[int, ...]
    style_weights: tuple[float, ...]
    tv_weight: float

    def kwargs(self) -> dict:
        """The keyword arguments of ``style_transfer`` this preset sets."""
        out = asdict(self)
        del out["name"]
        return out


PRESETS: dict[str, StylePreset] = {
    p.name: p
    for p in (
        StylePreset("composition_vii", 192, 512, 3, 5e-2, (1, 4, 6, 7), (20000.0, 500.0, 12.0, 1.0), 5e-2),
        StylePreset("the_scream", 192, 224, 3, 3e-2, (1, 4, 6, 7), (200000.0, 800.0, 12.0, 1.0), 2e-2),
        StylePreset("starry_night", 192, 192, 3, 6e-2, (1, 4, 6, 7), (300000.0, 1000.0, 15.0, 3.0), 2e-2),
    )
}


def get_preset(name: str) -> StylePreset:
    """The preset called ``name``; InvalidInput listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInput(f"unknown style preset {clip(name)!r}; known presets: {', '.join(sorted(PRESETS))}",
                           field="preset") from None
