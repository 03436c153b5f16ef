"""The options of one style transfer job, each default written once (domain code: no grpc, no torch).

``StyleOptions`` holds what a request may set: a preset's numbers (``presets.py``; the default preset
is ``DEFAULT_PRESET``) and the assignment's Adam schedule. Loss weights are in reference units
(``presets.py`` explains them). ``style_transfer_steps`` takes its defaults from here; the servicer
builds an instance from a request (``StyleOptions.from_preset(...)`` then the request's overrides)
and ``validate`` checks it against the server's limits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.options import check_count
from pixelrpc.models.style.presets import PRESETS, get_preset

DEFAULT_PRESET = "starry_night"
INITS = ("content", "random")
OPTIMIZERS = ("adam", "lbfgs")
MAX_STYLES = 8  # style images blended in one job
_P = PRESETS[DEFAULT_PRESET]


@dataclass(frozen=True)
class StyleOptions:
    """One job's parameters (Gatys et al., CVPR 2016, with the CS231n 2017 schedule).

    - image_size, style_size: shorter sides of the result and of each style image, in pixels.
    - content_layer, style_layers: indices into the feature network's modules.
    - content_weight, style_weights (one per style layer), tv_weight: loss weights, reference units.
    - init: 'content' or 'random'; preserve_color: luminance-only transfer.
    - iterations, lr, decayed_lr, decay_at: the Adam schedule (a fresh Adam at ``decayed_lr`` from
      step ``decay_at``); optimizer 'adam' or 'lbfgs' (which ignores the schedule).
    - seed: the random initialisation's (None: ``style_transfer_steps`` draws one; a server resolves
      the request's first, to report it back).
    """

    image_size: int = _P.image_size
    style_size: int = _P.style_size
    content_layer: int = _P.content_layer
    content_weight: float = _P.content_weight
    style_layers: tuple[int, ...] = _P.style_layers
    style_weights: tuple[float, ...] = _P.style_weights
    tv_weight: float = _P.tv_weight
    init: str = "content"
    iterations: int = 200
    lr: float = 3.0
    decayed_lr: float = 0.1
    decay_at: int = 180
    preserve_color: bool = False
    optimizer: str = "adam"
    seed: int | None = None

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **overrides) -> StyleOptions:
        """The preset's numbers (InvalidInput for an unknown name), the schedule's defaults, then ``overrides``."""
        return cls(**{**get_preset(name).kwargs(), **overrides})

    def validate(self, max_iterations: int, max_image_side: int, prefix: str = "") -> StyleOptions:
        """The server's limits: ``iterations`` up to ``max_iterations``, both sizes up to
        ``max_image_side``. Fields are named ``<prefix><name>`` (a request's ``job.parameters.``);
        ``style_transfer_steps`` checks the rest (layers against the network, weights >= 0...)."""
        check_count(self.iterations, f"{prefix}iterations", maximum=max_iterations)
        for key in ("image_size", "style_size"):
            value = getattr(self, key)
            if value > max_image_side:
                raise InvalidInput(f"{key}={value} is over this server's max_image_side={max_image_side}",
                                   field=f"{prefix}{key}")
        return self

    def kwargs(self) -> dict:
        """The keyword arguments of ``style_transfer_steps`` (the seed included)."""
        return asdict(self)
