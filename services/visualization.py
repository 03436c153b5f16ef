"""``pixelrpc.v1.VisualizationService``: classification, saliency, fooling images, class visualization.

Each method converts the request into the job's options (``pixelrpc.models.visualization.options``:
the defaults and checks live there), calls ONE function of ``pixelrpc.models.visualization.jobs`` in
the bounded executor (``call.run`` for unary work, ``call.steps`` for the optimisation generators, so a
cancelled or expired call stops within one step) and converts its plain result into the response. All
tensor work and PNG encoding happen in the executor; the event loop only moves messages. This module
runs no model and imports no torch.

One request, one job slot: the model is resolved and the images are checked from their headers
(``call.admit_images``: sizes, the request's pixel sum, the server's pixel budget) on the control
executor before the call queues; then decoding, the model and the answer's encoding run in one job.
A named model already loaded and small images skip the control executor (``_admit``).
"""

from __future__ import annotations

from collections.abc import Callable

from pixelrpc.common.suite import SERVICES
from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.options import with_defaults
from pixelrpc.models.registry import LoadedModel
from pixelrpc.models.visualization import jobs
from pixelrpc.models.visualization.options import (
    ClassifyOptions,
    ClassVisualizationOptions,
    FoolingOptions,
    IntegratedGradientsOptions,
    SaliencyOptions,
    SmoothGradOptions,
)
from pixelrpc.services.convert import image_pb_from_pil, numpy_to_tensor
from pixelrpc.services.runtime import Call, ServiceContext, rpc
from pixelrpc.v1 import visualization_pb2 as pb
from pixelrpc.v1 import visualization_pb2_grpc as pb_grpc

# This service's row of the suite table (pixelrpc.common.suite): proto name, registry tasks, default models.
SERVICE_NAME = SERVICES["visualization"].full_name
TASKS = SERVICES["visualization"].tasks
# A request that names no model gets the first of the table's default models present in the registry (see
# ServiceContext.choose_default); the choice is reported in ResponseMeta.model_choice.
DEFAULT_MODELS = SERVICES["visualization"].default_models
# Requests whose images total at most this many bytes read their headers on the event loop (Pillow
# reads a few bytes; a JPEG's scan check is one pass of bytes.find) when their model is loaded.
INLINE_HEADER_BYTES = 4 << 20

METHOD_NAMES = {
    pb.SALIENCY_METHOD_UNSPECIFIED: "vanilla",
    pb.SALIENCY_METHOD_VANILLA: "vanilla",
    pb.SALIENCY_METHOD_SMOOTHGRAD: "smoothgrad",
    pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS: "integrated_gradients",
}
METHOD_ENUMS = {"vanilla": pb.SALIENCY_METHOD_VANILLA, "smoothgrad": pb.SALIENCY_METHOD_SMOOTHGRAD,
                "integrated_gradients": pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS}
BASELINES = {
    pb.INTEGRATED_GRADIENTS_BASELINE_UNSPECIFIED: "black",
    pb.INTEGRATED_GRADIENTS_BASELINE_BLACK: "black",
    pb.INTEGRATED_GRADIENTS_BASELINE_MEAN: "zero",
}


def _optional(message, name: str):
    """An ``optional`` proto field's value, or None when unset (the options' default applies)."""
    return getattr(message, name) if message.HasField(name) else None


# ---------------------------------------------------------------------- proto -> options
def saliency_options(request: pb.SaliencyRequest) -> SaliencyOptions:
    if request.method not in METHOD_NAMES:
        raise InvalidInput(f"unknown saliency method {request.method}", field="method")
    method = METHOD_NAMES[request.method]
    sg, ig = request.smoothgrad, request.integrated_gradients
    smoothgrad = SmoothGradOptions()
    integrated = IntegratedGradientsOptions()
    if method == "smoothgrad":
        smoothgrad = with_defaults(SmoothGradOptions, noise_level=_optional(sg, "noise_level"),
                                   samples=sg.samples or None, seed=_optional(sg, "seed"))
    elif method == "integrated_gradients":
        if ig.baseline not in BASELINES:
            raise InvalidInput(f"unknown baseline {ig.baseline}", field="integrated_gradients.baseline")
        integrated = with_defaults(IntegratedGradientsOptions, steps=ig.steps or None,
                                   baseline=BASELINES[ig.baseline])
    return SaliencyOptions(method=method, target_class=_optional(request, "target_class"), smoothgrad=smoothgrad,
                           integrated_gradients=integrated, render_images=request.render_images)


def fooling_options(request: pb.FoolingImageRequest) -> FoolingOptions:
    return with_defaults(FoolingOptions, target_class=request.target_class,
                         max_iterations=request.max_iterations or None,
                         learning_rate=request.learning_rate or None, magnify=request.magnify or None)


def class_visualization_options(request: pb.ClassVisualizationRequest) -> ClassVisualizationOptions:
    return with_defaults(
        ClassVisualizationOptions, target_class=request.target_class, num_iterations=request.num_iterations or None,
        size=request.size or None, l2_reg=_optional(request, "l2_reg"), learning_rate=request.learning_rate or None,
        blur_every=_optional(request, "blur_every"), max_jitter=_optional(request, "max_jitter"),
        show_every=request.show_every or None, seed=_optional(request, "seed"))


class VisualizationServicer(pb_grpc.VisualizationServiceServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    # ------------------------------------------------------------------ helpers
    def _model(self, request, call: Call) -> tuple[LoadedModel, object]:
        loaded = self.ctx.get_model(request.model if request.HasField("model") else None,
                                    task="classification", default=DEFAULT_MODELS, call=call)
        return loaded, jobs.as_classifier(loaded.model, loaded.manifest.ref)

    async def _admit(self, request, call: Call, images: list[tuple], check: Callable | None = None):
        """Resolve the model, run ``check(model)`` and plan ``images`` ``(image, field)`` from their
        headers in ONE control job (each hop to another thread costs a scheduling delay on a busy
        box), then reserve their pixels. Returns ``(loaded, model, check's result, admission)``."""
        def resolve(cached: LoadedModel | None = None):
            if cached is not None:
                loaded, model = cached, jobs.as_classifier(cached.model, cached.manifest.ref)
            else:
                loaded, model = self._model(request, call)
            checked = check(model) if check is not None else None
            items = [(image, field, model.plan_input) for image, field in images]
            return loaded, model, checked, items, self.ctx.plan_images(items)

        # A loaded model named by the request, and headers read from a few bytes: no hop at all.
        small = sum(len(image.data) for image, _ in images) <= INLINE_HEADER_BYTES
        cached = small and self.ctx.cached_model(request.model if request.HasField("model") else None,
                                                 task="classification", call=call)
        if cached:
            loaded, model, checked, items, plans = resolve(cached)
        else:
            loaded, model, checked, items, plans = await call.control(resolve)
        return loaded, model, checked, await call.admit_images(items, plans)

    @property
    def _max_iterations(self) -> int:
        return self.ctx.settings.max_iterations

    # ------------------------------------------------------------------ Classify
    @rpc
    async def Classify(self, request: pb.ClassifyRequest, call: Call):
        options = with_defaults(ClassifyOptions, top_k=request.top_k or None).validate(len(request.images))
        loaded, model, _, admitted = await self._admit(
            request, call, [(img, f"images[{i}]") for i, img in enumerate(request.images)])

        def work():
            return jobs.classify_images(model, admitted.decode(), options)  # each already S x S

        results = await call.run(work, executes=(loaded, len(request.images)))  # N images, one execution
        return pb.ClassifyResponse(
            results=[pb.ImageClassification(predictions=[
                pb.ClassPrediction(class_index=p.class_index, label=p.label, probability=p.probability,
                                   score=p.score) for p in preds]) for preds in results],
            input_size=model.input_size, meta=call.meta(loaded))

    # ------------------------------------------------------------------ Saliency
    @rpc
    async def Saliency(self, request: pb.SaliencyRequest, call: Call):
        # The seed is checked (or drawn) before the image is decoded and the model loaded.
        options = saliency_options(request).resolved()

        def check(model):  # in the control job, before the image's header is read
            options.validate(model.num_classes, self._max_iterations)

        loaded, model, _, admitted = await self._admit(request, call, [(request.image, "image")], check)

        def work() -> pb.SaliencyResponse:
            out = jobs.saliency_map(model, admitted.decode()[0], options, call.cancel)
            response = pb.SaliencyResponse(
                saliency=numpy_to_tensor(out.saliency), target_class=out.target_class,
                target_label=out.target_label, target_score=out.target_score, predicted_class=out.predicted_class,
                input_size=out.input_size, completeness_gap=out.completeness_gap, method=METHOD_ENUMS[out.method])
            for name in ("heatmap", "overlay", "input"):  # set only with render_images
                picture = getattr(out, name)
                if picture is not None:
                    getattr(response, name).CopyFrom(image_pb_from_pil(picture))
            return response

        response = await call.run(work, executes=(loaded, 1))
        response.meta.CopyFrom(call.meta(loaded, seed=options.seed))
        return response

    # ------------------------------------------------------------------ FoolingImage
    @rpc
    async def FoolingImage(self, request: pb.FoolingImageRequest, call: Call):
        options = fooling_options(request)
        loaded, model, _, admitted = await self._admit(
            request, call, [(request.image, "image")],
            lambda model: options.validate(model.num_classes, self._max_iterations))

        def job():
            for item in jobs.fooling_image(model, admitted.decode()[0], options):
                if isinstance(item, jobs.FoolingUpdate):
                    yield pb.FoolingImageResponse(progress=pb.FoolingImageProgress(
                        iteration=item.iteration, target_score=item.target_score,
                        target_probability=item.target_probability, predicted_class=item.predicted_class))
                else:
                    yield pb.FoolingImageResponse(result=_fooling_result(item))

        async for message in call.steps(job, executes=loaded):
            message.meta.CopyFrom(call.meta(loaded))
            yield message

    # ------------------------------------------------------------------ ClassVisualization
    @rpc
    async def ClassVisualization(self, request: pb.ClassVisualizationRequest, call: Call):
        options = class_visualization_options(request).resolved()
        loaded, model = await call.control(self._model, request, call)
        settings = self.ctx.settings
        options.validate(model.num_classes, model.input_size, settings.max_iterations, settings.max_image_side)

        def job():
            for item in jobs.class_visualization(model, options):
                if isinstance(item, jobs.ClassVisualizationUpdate):
                    progress = pb.ClassVisualizationProgress(
                        iteration=item.iteration, target_score=item.target_score,
                        target_probability=item.target_probability)
                    if item.preview is not None:
                        progress.preview.CopyFrom(image_pb_from_pil(item.preview))
                    yield pb.ClassVisualizationResponse(progress=progress)
                else:
                    yield pb.ClassVisualizationResponse(result=pb.ClassVisualizationResult(
                        image=image_pb_from_pil(item.image), target_class=item.target_class,
                        target_label=item.target_label, target_score=item.target_score,
                        target_probability=item.target_probability, iterations=item.iterations, size=item.size))

        async for message in call.steps(job, executes=loaded):
            message.meta.CopyFrom(call.meta(loaded, seed=options.seed))
            yield message


def _fooling_result(out: jobs.FoolingOutput) -> pb.FoolingImageResult:
    return pb.FoolingImageResult(
        image=image_pb_from_pil(out.image), comparison=image_pb_from_pil(out.comparison),
        normalized_image=numpy_to_tensor(out.normalized_image), succeeded=out.succeeded,
        png_succeeded=out.png_succeeded, iterations=out.iterations, original_class=out.original_class,
        original_label=out.original_label, predicted_class=out.predicted_class,
        predicted_label=out.predicted_label, target_probability=out.target_probability, l2=out.l2,
        linf=out.linf, relative_l2=out.relative_l2, input_size=out.input_size)


def warmup(ctx: ServiceContext, loaded: LoadedModel) -> None:
    """Run one saliency map so the first request pays no start-up cost."""
    jobs.warm_up(loaded.model)


def add_to_server(server, ctx: ServiceContext) -> None:
    pb_grpc.add_VisualizationServiceServicer_to_server(VisualizationServicer(ctx), server)
