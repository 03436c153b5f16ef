"""The options of every visualization job, each default written once (domain code: no grpc, no torch).

One frozen dataclass per job: ``SaliencyOptions`` (with ``SmoothGradOptions`` and
``IntegratedGradientsOptions`` for the two methods that take more), ``FoolingOptions`` and
``ClassVisualizationOptions``. The servicer builds them from a request ("0 or unset means the default":
``models.options.with_defaults``), the domain functions (``jobs.py``, ``class_visualization_steps``)
take their defaults from them, and ``validate`` refuses bad values with ``InvalidInput`` naming the
request field (``smoothgrad.samples``, ``integrated_gradients.steps``, ``target_class``...).

Checks that need the model (the class index against its K classes) or the server's limits
(``max_iterations``, ``max_image_side``) take them as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.options import check_count, check_positive, check_seed, resolve_seed

METHODS = ("vanilla", "smoothgrad", "integrated_gradients")
# "black": pixel value 0; "zero": normalised 0, i.e. the mean colour (``saliency.resolve_baseline``).
BASELINES = ("black", "zero")
MAX_CLASSIFY_IMAGES = 64
# The jitter of class visualization is at most this many pixels, and at most a quarter of the side.
MAX_JITTER = 16
MIN_CLASS_VISUALIZATION_SIDE = 8


def check_class(index: int, num_classes: int, field: str = "target_class") -> int:
    """A class index in [0, num_classes), or InvalidInput naming ``field`` and the valid range."""
    if not 0 <= index < num_classes:
        raise InvalidInput(f"{field} {index} is out of range: the model has {num_classes} classes "
                           f"(valid indices 0..{num_classes - 1})", field=field)
    return int(index)


def default_max_jitter(side: int) -> int:
    """The jitter used when a request sets none: ``MAX_JITTER``, but at most a quarter of the side."""
    return min(MAX_JITTER, side // 4)


@dataclass(frozen=True)
class ClassifyOptions:
    """Top-k classification of up to ``MAX_CLASSIFY_IMAGES`` images."""

    top_k: int = 5

    def validate(self, num_images: int) -> ClassifyOptions:
        if num_images == 0:
            raise InvalidInput("images is empty: send at least one image", field="images")
        if num_images > MAX_CLASSIFY_IMAGES:
            raise InvalidInput(f"at most {MAX_CLASSIFY_IMAGES} images per request, got {num_images}",
                               field="images")
        return self


@dataclass(frozen=True)
class SmoothGradOptions:
    """SmoothGrad (Smilkov et al. 2017): ``samples`` noisy copies, noise std ``noise_level`` times the
    image's value range; ``seed`` reproduces the noise (None: drawn by ``resolved``, reported back)."""

    noise_level: float = 0.15
    samples: int = 25
    seed: int | None = None

    def validate(self, max_iterations: int) -> SmoothGradOptions:
        check_seed(self.seed, "smoothgrad.seed")
        check_count(self.samples, "smoothgrad.samples", maximum=max_iterations)
        return self  # noise_level >= 0 is checked by ``saliency.smoothgrad`` (field "noise_level")

    def resolved(self) -> SmoothGradOptions:
        return replace(self, seed=resolve_seed(self.seed, "smoothgrad.seed"))


@dataclass(frozen=True)
class IntegratedGradientsOptions:
    """Integrated Gradients (Sundararajan et al. 2017): ``steps`` points on the straight path from
    ``baseline`` (one of ``BASELINES``) to the image."""

    steps: int = 50
    baseline: str = "black"

    def validate(self, max_iterations: int) -> IntegratedGradientsOptions:
        if self.baseline not in BASELINES:
            raise InvalidInput(f"unknown baseline {self.baseline!r}; use one of {', '.join(BASELINES)}",
                               field="integrated_gradients.baseline")
        check_count(self.steps, "integrated_gradients.steps", minimum=2, maximum=max_iterations)
        return self


@dataclass(frozen=True)
class SaliencyOptions:
    """One saliency map: ``method`` (one of ``METHODS``) for ``target_class`` (None: the predicted
    class); the options of the chosen method; ``render_images`` adds the heatmap, overlay and input PNGs."""

    method: str = "vanilla"
    target_class: int | None = None
    smoothgrad: SmoothGradOptions = field(default_factory=SmoothGradOptions)
    integrated_gradients: IntegratedGradientsOptions = field(default_factory=IntegratedGradientsOptions)
    render_images: bool = False

    @property
    def seed(self) -> int | None:
        """The seed of the run (SmoothGrad only), to report back."""
        return self.smoothgrad.seed if self.method == "smoothgrad" else None

    def resolved(self) -> SaliencyOptions:
        """A copy with a concrete SmoothGrad seed (checked, or drawn when unset). Cheap: run it before
        the model is loaded so that a bad seed costs nothing."""
        if self.method != "smoothgrad":
            return self
        return replace(self, smoothgrad=self.smoothgrad.resolved())

    def validate(self, num_classes: int, max_iterations: int) -> SaliencyOptions:
        if self.method not in METHODS:
            raise InvalidInput(f"unknown saliency method {self.method!r}; use one of {', '.join(METHODS)}",
                               field="method")
        if self.target_class is not None:
            check_class(self.target_class, num_classes)
        if self.method == "smoothgrad":
            self.smoothgrad.validate(max_iterations)
        elif self.method == "integrated_gradients":
            self.integrated_gradients.validate(max_iterations)
        return self

    def method_kwargs(self) -> dict:
        """The keyword arguments of ``saliency.saliency`` for the chosen method."""
        if self.method == "smoothgrad":
            sg = self.smoothgrad
            return {"noise_level": sg.noise_level, "samples": sg.samples, "seed": sg.seed}
        if self.method == "integrated_gradients":
            ig = self.integrated_gradients
            return {"steps": ig.steps, "baseline": ig.baseline}
        return {}


@dataclass(frozen=True)
class FoolingOptions:
    """A fooling image (Szegedy et al. 2014): steps of L2 length ``learning_rate`` towards
    ``target_class``, at most ``max_iterations``; ``magnify`` scales the difference panel."""

    target_class: int = 0
    max_iterations: int = 100
    learning_rate: float = 1.0
    magnify: float = 10.0

    def validate(self, num_classes: int, max_iterations: int) -> FoolingOptions:
        check_class(self.target_class, num_classes)
        check_count(self.max_iterations, "max_iterations", maximum=max_iterations)
        check_positive(self.learning_rate, "learning_rate")
        check_positive(self.magnify, "magnify")
        return self


@dataclass(frozen=True)
class ClassVisualizationOptions:
    """Class visualization (Simonyan et al. 2014 with Yosinski et al.'s priors), as the CS231n 2017
    assignment runs it; ``size`` None is the model's input size, ``max_jitter`` None is
    ``default_max_jitter(size)``, ``seed`` None is drawn by ``resolved`` (and reported back)."""

    target_class: int = 0
    num_iterations: int = 100
    size: int | None = None
    l2_reg: float = 1e-3
    learning_rate: float = 25.0
    blur_every: int = 10
    blur_sigma: float = 0.5
    max_jitter: int | None = None
    show_every: int = 25
    seed: int | None = None

    def resolved(self) -> ClassVisualizationOptions:
        """A copy with a concrete seed (checked, or drawn when unset)."""
        return replace(self, seed=resolve_seed(self.seed, "seed"))

    def side(self, input_size: int) -> int:
        return self.size or input_size

    def jitter(self, side: int) -> int:
        return default_max_jitter(side) if self.max_jitter is None else self.max_jitter

    def validate(self, num_classes: int, input_size: int, max_iterations: int,
                 max_image_side: int) -> ClassVisualizationOptions:
        """The checks a server makes before the job starts; the generator checks the priors'
        values (``l2_reg``, ``blur_every``, ``max_jitter``...) itself, by the same field names."""
        check_class(self.target_class, num_classes)
        check_count(self.num_iterations, "num_iterations", maximum=max_iterations)
        side = self.side(input_size)
        if not MIN_CLASS_VISUALIZATION_SIDE <= side <= max_image_side:
            raise InvalidInput(f"size must be between {MIN_CLASS_VISUALIZATION_SIDE} and {max_image_side} "
                               f"(this server's max_image_side), got {side}", field="size")
        check_positive(self.learning_rate, "learning_rate")
        return self
