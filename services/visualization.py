"""``pixelrpc.v1.VisualizationService``: classification, saliency, fooling images, class visualization.

Each method converts the request, runs a ``pixelrpc.models.visualization`` function in the bounded
executor (``call.run`` for unary work, ``call.steps`` for the optimisation generators, so a
cancelled or expired call stops within one step) and converts the result. All tensor work and PNG
encoding happen in the executor; the event loop only moves messages.

One request, one job slot: the model is resolved and the images are checked from their headers
(``call.admit_images``: sizes, the request's pixel sum, the server's pixel budget) on the control
executor before the call queues; then decoding, the model and the answer's encoding run in one job.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pixelrpc.clients.suite import SERVICES
from pixelrpc.models import visualization as vis
from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.options import check_count, check_positive, resolve_seed
from pixelrpc.models.registry import LoadedModel
from pixelrpc.models.visualization.classify import class_label
from pixelrpc.models.zoo import ImageModel
from pixelrpc.services.convert import image_pb_from_pil, numpy_to_tensor
from pixelrpc.services.runtime import Call, ServiceContext, rpc
from pixelrpc.v1 import visualization_pb2 as pb
from pixelrpc.v1 import visualization_pb2_grpc as pb_grpc

# This service's row of the suite table (pixelrpc.clients.suite): proto name, registry tasks, default models.
SERVICE_NAME = SERVICES["visualization"].full_name
TASKS = SERVICES["visualization"].tasks
# A request that names no model gets the first of the table's default models present in the registry (see
# ServiceContext.choose_default); the choice is reported in ResponseMeta.model_choice.
DEFAULT_MODELS = SERVICES["visualization"].default_models
MAX_CLASSIFY_IMAGES = 64
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


class VisualizationServicer(pb_grpc.VisualizationServiceServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    # ------------------------------------------------------------------ helpers
    def _model(self, request, call: Call) -> tuple[LoadedModel, ImageModel]:
        loaded = self.ctx.get_model(request.model if request.HasField("model") else None,
                                    task="classification", default=DEFAULT_MODELS, call=call)
        return self._classifier(loaded)

    @staticmethod
    def _classifier(loaded: LoadedModel) -> tuple[LoadedModel, ImageModel]:
        model = loaded.model
        if not isinstance(model, ImageModel) or not model.has_classifier:
            raise InvalidInput(f"model {loaded.manifest.ref} is not an image classifier", field="model.name")
        return loaded, model

    async def _admit(self, request, call: Call, images: list[tuple], check: Callable | None = None):
        """Resolve the model, run ``check(model)`` and plan ``images`` ``(image, field)`` from their
        headers in ONE control job (each hop to another thread costs a scheduling delay on a busy
        box), then reserve their pixels. Returns ``(loaded, model, check's result, admission)``."""
        def resolve(cached: LoadedModel | None = None):
            loaded, model = self._classifier(cached) if cached is not None else self._model(request, call)
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

    def _bounded(self, value: int, default: int, name: str, minimum: int = 1) -> int:
        """A count from the request: 0 takes ``default``; it must lie in [minimum, max_iterations]."""
        return check_count(int(value) or default, name, minimum=minimum,
                           maximum=self.ctx.settings.max_iterations)

    @staticmethod
    def _check_class(model: ImageModel, index: int, field: str) -> int:
        if not 0 <= index < model.num_classes:
            raise InvalidInput(f"{field} {index} is out of range: the model has {model.num_classes} classes "
                               f"(valid indices 0..{model.num_classes - 1})", field=field)
        return index

    # ------------------------------------------------------------------ Classify
    @rpc
    async def Classify(self, request: pb.ClassifyRequest, call: Call):
        if not request.images:
            raise InvalidInput("images is empty: send at least one image", field="images")
        if len(request.images) > MAX_CLASSIFY_IMAGES:
            raise InvalidInput(f"at most {MAX_CLASSIFY_IMAGES} images per request, got {len(request.images)}",
                               field="images")
        top_k = int(request.top_k) or 5
        loaded, model, _, admitted = await self._admit(
            request, call, [(img, f"images[{i}]") for i, img in enumerate(request.images)])

        def work():
            images = admitted.decode()  # each already S x S: the peak is one decoded image
            with torch.no_grad():
                return vis.classify(model.preprocess(images), model, top_k=top_k)

        results = await call.run(work)
        return pb.ClassifyResponse(
            results=[pb.ImageClassification(predictions=[
                pb.ClassPrediction(class_index=p.class_index, label=p.label, probability=p.probability,
                                   score=p.score) for p in preds]) for preds in results],
            input_size=model.input_size, meta=call.meta(loaded))

    # ------------------------------------------------------------------ Saliency
    @rpc
    async def Saliency(self, request: pb.SaliencyRequest, call: Call):
        if request.method not in METHOD_NAMES:
            raise InvalidInput(f"unknown saliency method {request.method}", field="method")
        method = METHOD_NAMES[request.method]
        sg = request.smoothgrad  # its seed is checked before the image is decoded and the model loaded
        seed = (resolve_seed(sg.seed if sg.HasField("seed") else None, "smoothgrad.seed")
                if method == "smoothgrad" else None)

        def check(model: ImageModel):  # in the control job, before the image's header is read
            target = (self._check_class(model, request.target_class, "target_class")
                      if request.HasField("target_class") else None)
            options: dict = {}
            if method == "smoothgrad":
                options = {"noise_level": sg.noise_level if sg.HasField("noise_level") else 0.15,
                           "samples": self._bounded(sg.samples, 25, "smoothgrad.samples"), "seed": seed}
            elif method == "integrated_gradients":
                ig = request.integrated_gradients
                if ig.baseline not in BASELINES:
                    raise InvalidInput(f"unknown baseline {ig.baseline}", field="integrated_gradients.baseline")
                options = {"steps": self._bounded(ig.steps, 50, "integrated_gradients.steps", minimum=2),
                           "baseline": BASELINES[ig.baseline]}
            return target, options

        loaded, model, (target, options), admitted = await self._admit(request, call, [(request.image, "image")],
                                                                       check)
        render = request.render_images

        def work() -> pb.SaliencyResponse:
            x = model.preprocess(admitted.decode())  # (1, 3, S, S)
            cls = target
            if cls is None:  # explain the predicted class: one extra forward pass to find it
                with torch.no_grad():
                    cls = int(model(x).argmax(1))
            result = vis.saliency(x, [cls], model, method, cancel=call.cancel, **options)
            predicted = int(result.predicted[0])
            smap = result.maps[0].float().cpu()  # (S, S)
            response = pb.SaliencyResponse(
                saliency=numpy_to_tensor(smap.numpy()),
                target_class=cls, target_label=class_label(model, cls), target_score=float(result.scores[0]),
                predicted_class=predicted, input_size=model.input_size,
                completeness_gap=float(result.completeness_gap[0]) if result.completeness_gap is not None else 0.0,
                method=METHOD_ENUMS[method])
            if render:  # the pictures only when asked for: three PNGs cost more than the map itself
                shown = model.deprocess(x)[0]
                response.heatmap.CopyFrom(image_pb_from_pil(vis.saliency_heatmap(smap)))
                response.overlay.CopyFrom(image_pb_from_pil(vis.saliency_overlay(shown, smap)))
                response.input.CopyFrom(image_pb_from_pil(shown))
            return response

        response = await call.run(work)
        response.meta.CopyFrom(call.meta(loaded, seed=seed))
        return response

    # ------------------------------------------------------------------ FoolingImage
    @rpc
    async def FoolingImage(self, request: pb.FoolingImageRequest, call: Call):
        def check(model: ImageModel):
            return (self._check_class(model, request.target_class, "target_class"),
                    self._bounded(request.max_iterations, 100, "max_iterations"),
                    check_positive(request.learning_rate or 1.0, "learning_rate"),
                    check_positive(request.magnify or 10.0, "magnify"))

        loaded, model, (target, max_iters, learning_rate, magnify), admitted = await self._admit(
            request, call, [(request.image, "image")], check)

        def job():
            x = model.preprocess(admitted.decode())  # (1, 3, S, S)
            for item in vis.fooling_steps(x, [target], model, learning_rate, max_iters):
                if isinstance(item, vis.FoolingProgress):
                    yield pb.FoolingImageResponse(progress=pb.FoolingImageProgress(
                        iteration=item.iteration, target_score=float(item.target_score[0]),
                        target_probability=float(item.target_probability[0]),
                        predicted_class=int(item.predicted[0])))
                else:
                    yield pb.FoolingImageResponse(result=_fooling_result(model, x, item, magnify))

        async for message in call.steps(job):
            message.meta.CopyFrom(call.meta(loaded))
            yield message

    # ------------------------------------------------------------------ ClassVisualization
    @rpc
    async def ClassVisualization(self, request: pb.ClassVisualizationRequest, call: Call):
        seed = resolve_seed(request.seed if request.HasField("seed") else None, "seed")
        loaded, model = await call.control(self._model, request, call)
        target = self._check_class(model, request.target_class, "target_class")
        iterations = self._bounded(request.num_iterations, 100, "num_iterations")
        size = int(request.size) or model.input_size
        if not 8 <= size <= self.ctx.settings.max_image_side:
            raise InvalidInput(f"size must be between 8 and {self.ctx.settings.max_image_side} "
                               f"(this server's max_image_side), got {size}", field="size")
        kwargs = {
            "l2_reg": request.l2_reg if request.HasField("l2_reg") else 1e-3,
            "learning_rate": check_positive(request.learning_rate or 25.0, "learning_rate"),
            "num_iterations": iterations,
            "blur_every": request.blur_every if request.HasField("blur_every") else 10,
            "max_jitter": request.max_jitter if request.HasField("max_jitter") else min(16, size // 4),
            "show_every": request.show_every or 25,
            "seed": seed,
            "size": size,
        }

        def job():
            steps = vis.class_visualization_steps(target, model, **kwargs)
            for item in steps:
                if isinstance(item, vis.ClassVisualizationProgress):
                    progress = pb.ClassVisualizationProgress(
                        iteration=item.iteration, target_score=float(item.target_score[0]),
                        target_probability=float(item.target_probability[0]))
                    if item.preview is not None:
                        progress.preview.CopyFrom(image_pb_from_pil(item.preview[0]))
                    yield pb.ClassVisualizationResponse(progress=progress)
                else:
                    yield pb.ClassVisualizationResponse(result=pb.ClassVisualizationResult(
                        image=image_pb_from_pil(item.pil[0]), target_class=target,
                        target_label=class_label(model, target), target_score=float(item.target_score[0]),
                        target_probability=float(item.target_probability[0]), iterations=item.iterations,
                        size=size))

        async for message in call.steps(job):
            message.meta.CopyFrom(call.meta(loaded, seed=seed))
            yield message


def _fooling_result(model: ImageModel, x: torch.Tensor, result: vis.FoolingResult,
                    magnify: float) -> pb.FoolingImageResult:
    original, fooled = model.deprocess(x)[0], model.deprocess(result.images)[0]
    target, before, after = int(result.target[0]), int(result.original_prediction[0]), int(result.predicted[0])
    png_prediction = int(vis.predict_after_8bit(model, result.images)[0])
    labels = (f"original: {class_label(model, before)}", f"fooled: {class_label(model, after)}")
    return pb.FoolingImageResult(
        image=image_pb_from_pil(fooled),
        comparison=image_pb_from_pil(vis.fooling_comparison(original, fooled, magnify, labels)),
        normalized_image=numpy_to_tensor(result.images.float().cpu().numpy()),
        succeeded=bool(result.succeeded[0]), png_succeeded=png_prediction == target,
        iterations=int(result.iterations[0]), original_class=before, original_label=class_label(model, before),
        predicted_class=after, predicted_label=class_label(model, after),
        target_probability=float(result.target_probability[0]), l2=float(result.l2[0]),
        linf=float(result.linf[0]), relative_l2=float(result.relative_l2[0]), input_size=x.shape[-1])


def warmup(ctx: ServiceContext, loaded: LoadedModel) -> None:
    """Run one classification and one saliency map so the first request pays no start-up cost."""
    model = loaded.model
    if not isinstance(model, ImageModel) or not model.has_classifier:
        return
    x = torch.zeros((1, 3, model.input_size, model.input_size), device=model.device)
    vis.compute_saliency_maps(x, [0], model)


def add_to_server(server, ctx: ServiceContext) -> None:
    pb_grpc.add_VisualizationServiceServicer_to_server(VisualizationServicer(ctx), server)
