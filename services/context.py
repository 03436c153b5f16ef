"""What the servicers of one service share: ``ServiceContext`` (settings, registry, model cache,
jobs, metrics), with the choice of default models, per-model serving limits and image planning."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pixelrpc.models.errors import InvalidInput, Overloaded, RegistryUnavailable
from pixelrpc.models.imaging import (
    ImageHeader,
    ImageLimits,
    WorkingPlan,
    check_request,
    decode_image,
    read_header,
)
from pixelrpc.models.registry import LoadedModel, ModelCache, Registry
from pixelrpc.services.jobs import JobRunner, PixelBudget
from pixelrpc.services.metrics import Metrics
from pixelrpc.services.settings import Settings
from pixelrpc.v1 import common_pb2

if TYPE_CHECKING:
    from pixelrpc.services.runtime import Call

LAST_DEFAULT_KEY = "last_default"  # ServiceContext.state: task -> the (name, reason) last chosen
# How one image becomes what a job works on: (header, limits) -> WorkingPlan, e.g. ImageModel.plan_input.
Planner = Callable[[ImageHeader, ImageLimits], WorkingPlan]


@dataclass
class ServiceContext:
    """Shared by every servicer of one service: settings, registry, model cache, jobs, metrics."""

    name: str  # "captioning", "visualization", "style"
    settings: Settings
    registry: Registry
    cache: ModelCache
    jobs: JobRunner
    metrics: Metrics
    tasks: tuple[str, ...] = ()
    services: list[str] = field(default_factory=list)  # fully qualified service names served
    state: dict = field(default_factory=dict)  # per-service objects (e.g. the captioning batcher)
    _model_calls: dict = field(default_factory=dict, repr=False)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    pixels: PixelBudget | None = None  # server-wide decoded pixels in flight (shared by a server's services)
    tracer: Any = None  # an OpenTelemetry tracer when tracing is on (services/tracing.py), else None
    # Work waiting elsewhere than the job queue, e.g. captions waiting for a batch: callables -> count.
    pending_sources: list[Callable[[], int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pixels is None:
            self.pixels = PixelBudget(self.settings.max_pixels_in_flight)
        self.metrics.watch_queue(self.name, self.pending, self.settings.queue_depth)

    def pending(self) -> int:
        """Work waiting now: calls queued for a job slot, admitted work waiting to take one again, and
        whatever ``pending_sources`` report (the ``pixelrpc_queue_pending`` gauge)."""
        return self.jobs._waiting + self.jobs.rejoining + sum(source() for source in self.pending_sources)

    @property
    def device(self) -> str:
        return self.cache.device

    def decode_image(self, image_pb: common_pb2.Image, field: str = "image"):
        """Decode at full size (header limits only); jobs that know their working size use ``Call.admit_images``."""
        return decode_image(self._image_bytes(image_pb, field), self.settings.image_limits, field)

    @staticmethod
    def _image_bytes(image_pb: common_pb2.Image | None, field: str) -> bytes:
        if image_pb is None or not image_pb.data:
            raise InvalidInput(f"{field} is required: send encoded PNG, JPEG or WebP bytes", field=field)
        return image_pb.data

    def plan_images(self, items: Sequence[tuple[common_pb2.Image, str, Planner]]) -> list[WorkingPlan]:
        """Headers, working sizes and the request's decoded-pixel sum, before any pixel is decoded.

        Blocking but quick (Pillow reads headers only): run it through ``Call.control``. Refusals:
        INVALID_ARGUMENT for an image beyond the per-image limits, LimitExceeded over
        ``max_request_pixels``.
        """
        limits = self.settings.image_limits
        plans = [plan(read_header(self._image_bytes(image_pb, name), limits, name), limits)
                 for image_pb, name, plan in items]
        check_request(plans, limits)
        return plans

    def choose_default(self, task: str, preferences: str | Sequence[str] | None) -> tuple[str, str]:
        """The model a request that names none gets, and why (reported as ``ResponseMeta.model_choice``).

        Rule: ``PIXELRPC_DEFAULT_MODEL`` if set; else the first of the service's preferences that is in
        the registry with ``task``; else the first registered model with ``task`` (by name); else the
        first preference, so that the NOT_FOUND error names it and says how to add it.
        """
        if self.settings.default_model:
            return self.settings.default_model, "PIXELRPC_DEFAULT_MODEL"
        prefs = [preferences] if isinstance(preferences, str) else list(preferences or ())
        try:
            available = {m.name for m in self.registry.list(task)}
        except RegistryUnavailable:  # keep answering with the last resolved default until it is back
            last = self.state.get(LAST_DEFAULT_KEY, {}).get(task)
            if last is None:
                raise
            return last[0], f"{last[1]}; registry unavailable, last resolved default"
        choice = self._choose_from(task, prefs, available)
        self.state.setdefault(LAST_DEFAULT_KEY, {})[task] = choice
        return choice

    @staticmethod
    def _choose_from(task: str, prefs: list[str], available: set[str]) -> tuple[str, str]:
        for i, name in enumerate(prefs):
            if name in available:
                return name, f"preferred default for {task} (choice {i + 1} of {', '.join(prefs)})"
        if available:
            name = sorted(available)[0]
            return name, f"first registered {task} model (none of {', '.join(prefs) or 'the preferences'} present)"
        if prefs:
            return prefs[0], f"preferred default for {task}"
        raise InvalidInput(f"model.name is required: no default model is configured for {task}",
                           field="model.name")

    def get_model(self, ref: common_pb2.ModelRef | None, *, task: str,
                  default: str | Sequence[str] | None = None, field: str = "model",
                  call: Call | None = None) -> LoadedModel:
        """Resolve and load a model for ``task``; an empty name takes the default (``choose_default``)."""
        name = ref.name if ref is not None and ref.name else ""
        version = ref.version if ref is not None else 0
        if not name:
            name, reason = self.choose_default(task, default)
            if call is not None:
                call.model_choice = reason
        loaded = self.cache.get(name, version)
        return self._admit_model(loaded, task, field, call)

    def cached_model(self, ref: common_pb2.ModelRef | None, *, task: str, field: str = "model",
                     call: Call | None = None) -> LoadedModel | None:
        """``get_model`` for a named model that is already loaded (see ``ModelCache.peek``), on the
        event loop without an executor hop; None when it needs the registry (then use ``get_model``
        on the control executor)."""
        if ref is None or not ref.name:
            return None
        loaded = self.cache.peek(ref.name, ref.version)
        if loaded is None:
            return None
        return self._admit_model(loaded, task, field, call)

    def _admit_model(self, loaded: LoadedModel, task: str, field: str, call: Call | None) -> LoadedModel:
        """Check that ``loaded`` serves ``task`` and apply its per-model serving limits to ``call``."""
        if task not in loaded.manifest.tasks:
            raise InvalidInput(
                f"model {loaded.manifest.ref} does not serve task {task!r} (its tasks: "
                f"{', '.join(loaded.manifest.tasks)})", field=f"{field}.name")
        if call is not None:
            self._apply_model_serving(loaded, call)
        return loaded

    def _apply_model_serving(self, loaded: LoadedModel, call: Call) -> None:
        """Per-model limits from the manifest's ``serving`` section: ``max_concurrency`` (calls beyond it
        get RESOURCE_EXHAUSTED) and ``timeout_s`` (caps the call's deadline)."""
        serving = loaded.serving
        timeout = serving.timeout_s
        if timeout > 0:
            limit_at = time.monotonic() + timeout
            if call.cancel.deadline is None or limit_at < call.cancel.deadline:
                call.cancel.deadline = limit_at
        limit = serving.max_concurrency
        if limit <= 0:
            return
        ref = loaded.manifest.ref
        with self._model_lock:
            running = self._model_calls.get(ref, 0)
            if running >= limit:
                raise Overloaded(f"model {ref} is serving {running} calls, its max_concurrency={limit} "
                                 "(manifest serving section); retry later")
            self._model_calls[ref] = running + 1

        def release() -> None:
            with self._model_lock:
                self._model_calls[ref] -= 1

        call.on_end.append(release)

    def serving_config(self, loaded: LoadedModel, key: str, default: Any) -> Any:
        """A per-model serving setting: explicit service setting > manifest ``serving`` > default."""
        return loaded.serving.setting(key, getattr(self.settings, key, None), default)
