"""``pixelrpc.v1.StyleTransferService``: Gatys style transfer, streamed step by step.

The servicer converts a request into ``StyleOptions`` (``pixelrpc.models.style.options``: the preset,
then the request's overrides), checks them against the server's limits (``StyleOptions.validate``),
and steps the domain generator (``pixelrpc.models.style.transfer.stylize``) through
``call.steps``: one job slot per job, a bounded queue in front of the slots, and a cancelled or
expired call stops within one iteration, its generator closed and its tensors released.

Limits: ``max_iterations`` bounds the steps; ``max_image_side`` bounds the sides of the images the
job computes on, i.e. the result (content resized to ``image_size`` on its shorter side) and each
resized style image, checked from the headers. The images sent may be larger (bounded by
``max_image_bytes``, ``max_image_pixels``, ``max_image_aspect`` and, summed, ``max_request_pixels``):
each is decoded straight to the size the job computes at, one at a time, in the job's one slot.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image

from pixelrpc.common.suite import SERVICES
from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.imaging import ImageHeader, ImageLimits, WorkingPlan, plan_working
from pixelrpc.models.options import resolve_seed
from pixelrpc.models.registry import LoadedModel
from pixelrpc.models.style import PRESETS, StyleProgress
from pixelrpc.models.style.options import DEFAULT_PRESET, MAX_STYLES, StyleOptions
from pixelrpc.models.style.transfer import stylize, warm_up
from pixelrpc.services.convert import image_pb_from_pil
from pixelrpc.services.runtime import Call, ImageAdmission, Planner, ServiceContext, rpc, trim_heap
from pixelrpc.v1 import style_transfer_pb2 as pb
from pixelrpc.v1 import style_transfer_pb2_grpc as pb_grpc

# This service's row of the suite table (pixelrpc.common.suite): proto name, registry tasks, default models.
SERVICE_NAME = SERVICES["style"].full_name
TASKS = SERVICES["style"].tasks
# A request that names no model gets the first of the table's default models present in the registry;
# see ServiceContext.choose_default for the whole rule. The choice is reported in ResponseMeta.model_choice.
DEFAULT_MODELS = SERVICES["style"].default_models
_INIT_NAMES = {pb.STYLE_INIT_CONTENT: "content", pb.STYLE_INIT_RANDOM: "random"}
_OPTIMIZER_NAMES = {pb.STYLE_OPTIMIZER_ADAM: "adam", pb.STYLE_OPTIMIZER_LBFGS: "lbfgs"}
# StyleParameters field -> StyleOptions field
_SCALAR_FIELDS = {"image_size": "image_size", "style_size": "style_size", "content_layer": "content_layer",
                  "content_weight": "content_weight", "tv_weight": "tv_weight", "iterations": "iterations",
                  "learning_rate": "lr", "decayed_learning_rate": "decayed_lr", "decay_at": "decay_at"}


@dataclass
class StylePlan:
    """A checked job: decoded images, the model and the options of the domain call (seed resolved)."""

    content: Image.Image
    styles: list[Image.Image]
    blend: list[float]
    loaded: LoadedModel
    options: StyleOptions

    @property
    def seed(self) -> int:
        return self.options.seed


def options_from_pb(job: pb.StyleJob) -> StyleOptions:
    """Preset (default ``DEFAULT_PRESET``) overridden by the fields the request sets; weights in reference
    units. The seed is the job's (``job.seed``), resolved by the caller."""
    given = job.parameters
    overrides: dict = {key: getattr(given, name) for name, key in _SCALAR_FIELDS.items() if given.HasField(name)}
    if len(given.style_layers) or len(given.style_weights):
        if len(given.style_layers) != len(given.style_weights):
            raise InvalidInput(
                f"parameters.style_layers ({len(given.style_layers)}) and parameters.style_weights "
                f"({len(given.style_weights)}) must be given together, one weight per layer",
                field="job.parameters.style_weights")
        overrides["style_layers"] = tuple(int(v) for v in given.style_layers)
        overrides["style_weights"] = tuple(float(v) for v in given.style_weights)
    if given.init != pb.STYLE_INIT_UNSPECIFIED:
        if given.init not in _INIT_NAMES:
            raise InvalidInput(f"parameters.init {given.init} is not a StyleInit value", field="job.parameters.init")
        overrides["init"] = _INIT_NAMES[given.init]
    overrides["preserve_color"] = bool(given.preserve_color)
    if given.optimizer != pb.STYLE_OPTIMIZER_UNSPECIFIED:
        if given.optimizer not in _OPTIMIZER_NAMES:
            raise InvalidInput(f"parameters.optimizer {given.optimizer} is not a StyleOptimizer value",
                               field="job.parameters.optimizer")
        overrides["optimizer"] = _OPTIMIZER_NAMES[given.optimizer]
    return StyleOptions.from_preset(job.preset or DEFAULT_PRESET, **overrides)


def parameters_pb(options: StyleOptions) -> pb.StyleParameters:
    """The resolved parameters, as the request would have spelled them."""
    out = pb.StyleParameters(style_layers=list(options.style_layers), style_weights=list(options.style_weights),
                             init=pb.STYLE_INIT_RANDOM if options.init == "random" else pb.STYLE_INIT_CONTENT,
                             preserve_color=options.preserve_color,
                             optimizer=pb.STYLE_OPTIMIZER_LBFGS if options.optimizer == "lbfgs"
                             else pb.STYLE_OPTIMIZER_ADAM)
    for name, key in _SCALAR_FIELDS.items():
        setattr(out, name, getattr(options, key))
    return out


def _planner(side: int, limit: int, what: str, field: str) -> Planner:
    """Decode an image straight to "shorter side ``side``" (the size ``style_transfer_steps`` computes at,
    bilinear like it), refusing a result side over ``max_image_side`` from the header."""
    def plan(header: ImageHeader, limits: ImageLimits) -> WorkingPlan:
        planned = plan_working(header, side, crop=False, resample=Image.Resampling.BILINEAR, limits=limits)
        w, h = planned.size
        if max(w, h) > limit:
            raise InvalidInput(f"{what} would be {w}x{h} pixels, over this server's max_image_side={limit}; "
                               "use a smaller size or a less elongated image", field=field)
        return planned

    return plan


class StyleTransferServicer(pb_grpc.StyleTransferServiceServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    # ------------------------------------------------------------------ request -> plan
    def check_job(self, job: pb.StyleJob) -> StyleOptions:
        """The job's options, checked against the server's limits (cheap: no image is read)."""
        settings = self.ctx.settings
        options = options_from_pb(job).validate(settings.max_iterations, settings.max_image_side,
                                                prefix="job.parameters.")
        if len(job.styles) > MAX_STYLES:
            raise InvalidInput(f"{len(job.styles)} style images sent; at most {MAX_STYLES} are blended",
                               field="job.styles")
        return options

    def model(self, job: pb.StyleJob, call: Call | None = None) -> LoadedModel:
        loaded = self.ctx.get_model(job.model, task="feature-extraction", default=DEFAULT_MODELS,
                                    field="job.model", call=call)
        if not hasattr(loaded.model, "features"):
            raise InvalidInput(f"model {loaded.manifest.ref} has no feature trunk to run style transfer on",
                               field="job.model.name")
        return loaded

    async def admit(self, job: pb.StyleJob, call: Call) -> tuple[ImageAdmission, LoadedModel, StyleOptions]:
        """Everything before the job slot: parameters, the images from their headers (each planned at
        the size the job computes at; the pixel budgets reserved), then the model."""
        options = self.check_job(job)
        side = self.ctx.settings.max_image_side
        items = [(job.content, "job.content",
                  _planner(options.image_size, side, "the result", "job.parameters.image_size"))]
        items += [(style.image, f"job.styles[{i}].image",
                   _planner(options.style_size, side, f"style image {i} resized", "job.parameters.style_size"))
                  for i, style in enumerate(job.styles)]
        admitted = await call.admit_images(items)
        loaded = await call.control(self.model, job, call)
        return admitted, loaded, options

    async def _run(self, job: pb.StyleJob, call: Call, preview_every: int):
        seed = resolve_seed(job.seed if job.HasField("seed") else None, "job.seed")  # a bad one costs nothing
        admitted, loaded, options = await self.admit(job, call)
        options = replace(options, seed=seed)
        blend = [style.weight if style.HasField("weight") else 1.0 for style in job.styles]
        holder: dict = {}

        def start():  # in the job's one slot: decode (one image at a time, each to its working size), then steps
            content, *styles = admitted.decode()
            plan = holder["plan"] = StylePlan(content, styles, blend, loaded, options)
            return _trimmed(stylize(plan.loaded.model, plan.loaded.manifest.metadata, plan.content, plan.styles,
                                    plan.blend, plan.options, preview_every=preview_every, cancel=call.cancel))

        async for progress in call.steps(start, executes=loaded):  # a job: one inference
            yield holder["plan"], progress

    def _result(self, plan: StylePlan, final: StyleProgress, call: Call) -> pb.StyleResult:
        return pb.StyleResult(
            image=image_pb_from_pil(final.image), width=final.image.size[0], height=final.image.size[1],
            losses=_losses(final), parameters=parameters_pb(plan.options),
            meta=call.meta(plan.loaded, seed=plan.seed))

    # ------------------------------------------------------------------ RPCs
    @rpc
    async def Stylize(self, request: pb.StylizeRequest, call: Call):
        async for plan, progress in self._run(request.job, call, int(request.preview_every)):
            if progress.final:
                yield pb.StylizeResponse(result=self._result(plan, progress, call))
            else:
                yield pb.StylizeResponse(progress=_progress(progress))

    @rpc
    async def StylizeUnary(self, request: pb.StylizeUnaryRequest, call: Call):
        result = None
        async for plan, progress in self._run(request.job, call, 0):  # runs to the end: the slot is released
            if progress.final:
                result = self._result(plan, progress, call)
        assert result is not None, "the domain generator always ends with its final report"
        return pb.StylizeUnaryResponse(result=result)

    @rpc
    async def ListStylePresets(self, request: pb.ListStylePresetsRequest, call: Call):
        presets = [pb.StylePreset(name=name, parameters=parameters_pb(StyleOptions.from_preset(name)))
                   for name in sorted(PRESETS)]
        return pb.ListStylePresetsResponse(presets=presets, meta=call.meta())


def _trimmed(steps):
    """``steps``, then (finished, failed or closed) its tensors freed and the heap's free pages handed back
    to the OS: a 512 px job's activations are hundreds of MiB that glibc would otherwise keep."""
    try:
        yield from steps
    finally:
        steps.close()
        del steps
        trim_heap()


def _losses(p: StyleProgress) -> pb.StyleLosses:
    return pb.StyleLosses(content=p.content_loss, style=p.style_loss, tv=p.tv_loss, total=p.total_loss)


def _progress(p: StyleProgress) -> pb.StyleProgress:
    out = pb.StyleProgress(iteration=p.iteration, iterations=p.iterations, losses=_losses(p),
                           elapsed_ms=p.elapsed_s * 1000.0, learning_rate=p.learning_rate)
    if p.preview is not None:
        out.preview.CopyFrom(image_pb_from_pil(p.preview))
    return out


def warmup(ctx: ServiceContext, loaded: LoadedModel) -> None:
    """Two tiny iterations so the first real job does not pay for lazy initialisation."""
    warm_up(loaded.model)


def add_to_server(server, ctx: ServiceContext) -> None:
    pb_grpc.add_StyleTransferServiceServicer_to_server(StyleTransferServicer(ctx), server)
