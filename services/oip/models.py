"""Per-task adapters: an Open Inference Protocol request (tensors, parameters) -> the native servicer's
domain call -> output tensors.

Each adapter holds the service's own native servicer (built on the same ``ServiceContext``: the same
registry, model cache, job slots, pixel budget and captioning batchers) and calls the helpers its
RPCs call, so OIP and the native API compute the same thing the same way:

- ``ClassifierAdapter`` (visualization): ``VisualizationServicer._admit`` then ``jobs.classify_images`` /
  ``jobs.saliency_map`` (the native Classify and Saliency calls) in one job slot;
- ``CaptionerAdapter`` (captioning): FEATURES rows go straight to the model's dynamic batcher
  (``CaptioningServicer.batcher_for``: the rows, and every native Caption, decode together), IMAGE
  rows through ``CaptioningServicer.caption`` (the pinned encoder, then the batcher); streams use
  ``plan`` + ``events``;
- ``StyleAdapter`` (style): ``StyleTransferServicer._run`` (``call.steps``: a cancelled call stops
  within one iteration).

Tensor names and types are fixed (``inputs``/``outputs``: reported by ModelMetadata and ModelConfig,
documented in docs/oip.md). Transport-free: the gRPC servicer (``server.py``) and V2 REST
(``services/http/v2.py``) both call these, through ``InferenceServicer.infer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelrpc.models.errors import InvalidInput, clip
from pixelrpc.models.options import resolve_seed
from pixelrpc.services.oip.tensors import BYTES, Tensor, bytes_tensor, numeric_tensor
from pixelrpc.services.runtime import Call, ServiceContext
from pixelrpc.v1 import common_pb2

# Triton's request parameters, which every model accepts (tritonclient and KServe tooling set them):
# ``timeout`` bounds the request (``server.InferenceServicer.infer``; in ModelStreamInfer each request
# alone), the others are ignored here.
RESERVED_PARAMETERS = {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                       "binary_data_output", "headers"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size
    optional: bool = False
    image: bool = False  # BYTES elements are encoded images (base64 text in V2 REST JSON, docs/http.md)


@dataclass
class InferRequest:
    """A checked OIP request: ``version`` 0 is the model's default; ``outputs`` the requested output
    names with their parameters (empty: the model's default outputs)."""

    model: str
    version: int
    id: str
    inputs: dict[str, Tensor]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> common_pb2.ModelRef:
        return common_pb2.ModelRef(name=self.model, version=self.version)


@dataclass
class InferResult:
    """Output tensors of one response; ``final`` is False for a streamed partial response."""

    model: str
    version: int
    outputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    final: bool = True


def parse_version(version: str) -> int:
    """An OIP version string ("" is the default) as a registry version number."""
    if not version:
        return 0
    if not version.isascii() or not version.isdigit() or (len(version) > 1 and version[0] == "0"):
        raise InvalidInput(f"model_version {clip(version)!r} is not a version number (ASCII digits, "
                           "no leading zero; empty for the default)", field="model_version")
    return int(version)


class Params:
    """Typed access to request parameters; refusals name the parameter."""

    def __init__(self, values: dict[str, Any], known: set[str]):
        unknown = sorted(k for k in values if k not in known and k not in RESERVED_PARAMETERS
                         and not k.startswith("triton_"))
        if unknown:
            raise InvalidInput(f"unknown parameter {clip(unknown[0])!r}; this model takes "
                               f"{', '.join(sorted(known)) or 'none'}", field=f"parameters.{clip(unknown[0])}")
        self.values = values

    def get(self, name: str, kind: type, default=None):
        value = self.values.get(name)
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidInput(f"parameter {name} must be {kind.__name__}, got {type(value).__name__} "
                               f"{clip(repr(value))}", field=f"parameters.{name}")
        return value

    def numbers(self, name: str, kind: type) -> list | None:
        """A list of numbers given as a string: "1,4,6" (JSON-free, as parameters are scalars)."""
        text = self.get(name, str)
        if text is None:
            return None
        try:
            return [kind(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise InvalidInput(f"parameter {name} must be comma-separated {kind.__name__} values, got "
                               f"{clip(text)!r}", field=f"parameters.{name}") from None


def expect(inputs: dict[str, Tensor], name: str, datatypes: tuple[str, ...], rank: int,
           *, required: bool = True) -> Tensor | None:
    """The input ``name`` with one of ``datatypes`` and ``rank`` dimensions (else INVALID_ARGUMENT naming it)."""
    tensor = inputs.get(name)
    if tensor is None:
        if required:
            raise InvalidInput(f"input {name} is required", field=f"inputs[{name}]")
        return None
    if tensor.datatype not in datatypes:
        raise InvalidInput(f"input {name} must be {' or '.join(datatypes)}, got {tensor.datatype}",
                           field=f"inputs[{name}].datatype")
    if len(tensor.shape) != rank:
        raise InvalidInput(f"input {name} must have {rank} dimension{'s' if rank > 1 else ''}, got shape "
                           f"{list(tensor.shape)}", field=f"inputs[{name}].shape")
    return tensor


def only_known(inputs: dict[str, Tensor], known: tuple[str, ...]) -> None:
    for name in inputs:
        if name not in known:
            raise InvalidInput(f"unknown input {clip(name)!r}; this model takes {', '.join(known)}",
                               field=f"inputs[{clip(name)}]")


def images_of(tensor: Tensor, limit: int) -> list[common_pb2.Image]:
    """A BYTES [N] tensor of encoded images as native Image messages (1 <= N <= limit)."""
    n = tensor.shape[0]
    if not 1 <= n <= limit:
        raise InvalidInput(f"input {tensor.name} has {n} images; send 1 to {limit}", field=f"inputs[{tensor.name}].shape")
    return [common_pb2.Image(data=b) for b in tensor.data.tolist()]


class Adapter:
    """One task's mapping; subclasses define ``inputs``, ``outputs``, ``parameters`` and ``infer``."""

    task = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    default_outputs: tuple[str, ...] = ()
    parameters: frozenset[str] = frozenset()
    decoupled = False  # sends partial responses on ModelStreamInfer

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    def describe(self, manifest) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(inputs, outputs) of a model of this task, with the sizes its manifest tells."""
        return self.inputs, self.outputs

    def requested(self, req: InferRequest) -> dict[str, dict[str, Any]]:
        names = [s.name for s in self.outputs]
        for name in req.outputs:
            if name not in names:
                raise InvalidInput(f"unknown output {clip(name)!r}; this model gives {', '.join(names)}",
                                   field=f"outputs[{clip(name)}]")
        return req.outputs or {name: {} for name in self.default_outputs}

    async def infer(self, req: InferRequest, call: Call) -> InferResult:
        raise NotImplementedError

    async def stream(self, req: InferRequest, call: Call) -> AsyncIterator[InferResult]:
        """ModelStreamInfer: partial responses, then the final one (default: just the final)."""
        yield await self.infer(req, call)


# ---------------------------------------------------------------------- classifiers
class ClassifierAdapter(Adapter):
    task = "classification"
    inputs = (TensorSpec("IMAGE", BYTES, (-1,), optional=True, image=True),
              TensorSpec("PIXELS", "UINT8", (-1, -1, -1, 3), optional=True),
              TensorSpec("TARGET_CLASS", "INT32", (-1,), optional=True))
    outputs = (TensorSpec("PROBABILITIES", "FP32", (-1, -1)), TensorSpec("SALIENCY", "FP32", (-1, -1, -1)))
    default_outputs = ("PROBABILITIES",)

    def describe(self, manifest):
        meta = manifest.metadata
        classes, side = int(meta.get("num_classes") or -1), int(meta.get("input_size") or -1)
        return self.inputs, (TensorSpec("PROBABILITIES", "FP32", (-1, classes)),
                             TensorSpec("SALIENCY", "FP32", (-1, side, side)))

    def __init__(self, ctx: ServiceContext):
        super().__init__(ctx)
        from pixelrpc.services.visualization import VisualizationServicer

        self.servicer = VisualizationServicer(ctx)

    async def infer(self, req: InferRequest, call: Call) -> InferResult:
        from PIL import Image

        from pixelrpc.models.imaging import check_geometry
        from pixelrpc.models.visualization import jobs
        from pixelrpc.models.visualization.options import MAX_CLASSIFY_IMAGES, SaliencyOptions
        from pixelrpc.v1 import visualization_pb2

        Params(req.parameters, set())
        only_known(req.inputs, ("IMAGE", "PIXELS", "TARGET_CLASS"))
        wanted = self.requested(req)
        if ("IMAGE" in req.inputs) == ("PIXELS" in req.inputs):
            raise InvalidInput("send exactly one of the inputs IMAGE (BYTES [N], encoded PNG/JPEG/WebP) and "
                               "PIXELS (UINT8 [N, H, W, 3])", field="inputs")
        request = visualization_pb2.ClassifyRequest(model=req.ref)
        limits = self.ctx.settings.image_limits
        if "IMAGE" in req.inputs:
            images = images_of(expect(req.inputs, "IMAGE", (BYTES,), 1), MAX_CLASSIFY_IMAGES)
            loaded, model, _, admitted = await self.servicer._admit(
                request, call, [(img, f"inputs[IMAGE][{i}]") for i, img in enumerate(images)])
            count, decode = len(images), admitted.decode  # each already S x S
        else:
            pixels = expect(req.inputs, "PIXELS", ("UINT8",), 4)
            count, h, w, c = pixels.shape
            if c != 3 or not 1 <= count <= MAX_CLASSIFY_IMAGES or min(h, w) < 1:
                raise InvalidInput(f"input PIXELS must be [N, H, W, 3] with 1 <= N <= {MAX_CLASSIFY_IMAGES}, got "
                                   f"{list(pixels.shape)}", field="inputs[PIXELS].shape")
            if h * w > limits.max_pixels or count * h * w > limits.max_request_pixels:
                raise InvalidInput(f"input PIXELS: {count} images of {w}x{h} are over this server's "
                                   f"max_image_pixels={limits.max_pixels:,} or max_request_pixels="
                                   f"{limits.max_request_pixels:,}", field="inputs[PIXELS].shape")
            loaded, model = await call.control(self.servicer._model, request, call)
            check_geometry(w, h, model.input_size, limits, "inputs[PIXELS]")  # aspect, upscale
            release = self.ctx.pixels.reserve(count * h * w)  # the images' copies, until they are resized
            call.on_end.append(release)
            data = pixels.data

            def decode():
                try:
                    return [Image.fromarray(np.ascontiguousarray(data[i]), mode="RGB") for i in range(count)]
                finally:
                    release()
        target = expect(req.inputs, "TARGET_CLASS", ("INT32", "INT64"), 1, required=False)
        targets: list[int | None] = [None] * count
        if target is not None:
            if target.shape[0] != count:
                raise InvalidInput(f"input TARGET_CLASS has {target.shape[0]} entries for {count} images",
                                   field="inputs[TARGET_CLASS].shape")
            targets = [int(t) for t in target.data]
            for t in targets:
                if not 0 <= t < model.num_classes:
                    raise InvalidInput(f"input TARGET_CLASS: class {t} is out of range, the model has "
                                       f"{model.num_classes} classes (0..{model.num_classes - 1})",
                                       field="inputs[TARGET_CLASS]")
        def work():  # the native Classify's and Saliency's domain calls, in one job slot
            images = decode()
            probs = jobs.class_probabilities(model, images)  # (N, K), the native Classify's numbers
            maps = None
            if "SALIENCY" in wanted:
                maps = np.stack([jobs.saliency_map(model, image, SaliencyOptions(target_class=t), call.cancel).saliency
                                 for image, t in zip(images, targets, strict=True)])
            return probs, maps

        probs, maps = await call.run(work, executes=(loaded, count))  # N images, one execution
        outputs = []
        if "PROBABILITIES" in wanted:
            k = Params(wanted["PROBABILITIES"], {"classification"}).get("classification", int)
            outputs.append(self._classification(probs, model, k) if k else
                           numeric_tensor("PROBABILITIES", "FP32", probs))
        if maps is not None:
            outputs.append(numeric_tensor("SALIENCY", "FP32", maps))
        return InferResult(loaded.manifest.name, loaded.manifest.version, outputs)

    @staticmethod
    def _classification(probs: np.ndarray, model, k: int) -> Tensor:
        """Triton's classification extension: the top ``k`` as BYTES "score:index:label", best first."""
        from pixelrpc.models.visualization.classify import class_label

        if k < 1:
            raise InvalidInput(f"classification must be >= 1, got {k}", field="outputs[PROBABILITIES].classification")
        k = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        rows = [f"{probs[n, i]:f}:{i}:{class_label(model, int(i))}" for n in range(probs.shape[0]) for i in order[n]]
        return bytes_tensor("PROBABILITIES", rows, (probs.shape[0], k))


async def gather_all(coroutines: list) -> list:
    """Await ``coroutines`` (one directly; several as tasks, the rest cancelled when one fails)."""
    if len(coroutines) == 1:
        return [await coroutines[0]]
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


# ---------------------------------------------------------------------- captioners
class CaptionerAdapter(Adapter):
    task = "captioning"
    inputs = (TensorSpec("FEATURES", "FP32", (-1, -1), optional=True),
              TensorSpec("IMAGE", BYTES, (-1,), optional=True, image=True))
    outputs = (TensorSpec("CAPTION", BYTES, (-1,)), TensorSpec("TOKENS", "INT32", (-1, -1)),
               TensorSpec("LOG_PROB", "FP32", (-1,)))
    default_outputs = ("CAPTION", "TOKENS", "LOG_PROB")
    parameters = frozenset({"strategy", "beam_width", "max_length", "temperature", "seed", "length_penalty"})
    decoupled = True
    MAX_ROWS = 64

    def describe(self, manifest):
        dim = int(manifest.metadata.get("input_dim") or -1)
        return (TensorSpec("FEATURES", "FP32", (-1, dim), optional=True), self.inputs[1]), self.outputs

    def __init__(self, ctx: ServiceContext):
        super().__init__(ctx)
        from pixelrpc.services.captioning import CaptioningServicer

        self.servicer = CaptioningServicer(ctx)  # shares the context's batchers (ctx.state)

    def options(self, req: InferRequest):
        """The request's parameters as native CaptionOptions, refused (naming the parameter) if bad."""
        from pixelrpc.v1 import captioning_pb2 as pb

        only_known(req.inputs, ("FEATURES", "IMAGE"))
        params = Params(req.parameters, set(self.parameters))
        if ("FEATURES" in req.inputs) == ("IMAGE" in req.inputs):
            raise InvalidInput("send exactly one of the inputs FEATURES (FP32 [N, D]) and IMAGE (BYTES [N])",
                               field="inputs")
        strategy = params.get("strategy", str)
        beam, temperature = params.get("beam_width", int), params.get("temperature", float)
        if strategy is None:
            strategy = "beam" if beam and beam > 1 else "sample" if temperature is not None else "greedy"
        strategies = {"greedy": pb.DECODING_STRATEGY_GREEDY, "beam": pb.DECODING_STRATEGY_BEAM,
                      "sample": pb.DECODING_STRATEGY_SAMPLE}
        if strategy not in strategies:
            raise InvalidInput(f"parameter strategy must be one of {', '.join(strategies)}, got {clip(strategy)!r}",
                               field="parameters.strategy")
        opts = pb.CaptionOptions(strategy=strategies[strategy], max_length=params.get("max_length", int, 0),
                                 beam_width=beam or 0, length_penalty=params.get("length_penalty", float, 0.0))
        if temperature is not None:
            opts.temperature = temperature
        seed = params.get("seed", int)
        if seed is not None:
            opts.seed = resolve_seed(seed, "parameters.seed")
        return opts

    def features(self, req: InferRequest) -> Tensor | None:
        features = expect(req.inputs, "FEATURES", ("FP32", "FP64"), 2, required=False)
        if features is not None and not 1 <= features.shape[0] <= self.MAX_ROWS:
            raise InvalidInput(f"input FEATURES has {features.shape[0]} rows; send 1 to {self.MAX_ROWS}",
                               field="inputs[FEATURES].shape")
        return features

    def jobs(self, req: InferRequest) -> list:
        """Native CaptionJobs, one per row (streams, and images: they take the servicer's encoder path)."""
        from pixelrpc.services.captioning import options_from_pb
        from pixelrpc.services.convert import numpy_to_tensor
        from pixelrpc.v1 import captioning_pb2 as pb

        opts = self.options(req)
        options_from_pb(opts, field="parameters")  # refuse bad options before anything runs
        features = self.features(req)
        if features is not None:
            return [pb.CaptionJob(model=req.ref, options=opts, features=numpy_to_tensor(row)) for row in features.data]
        images = images_of(expect(req.inputs, "IMAGE", (BYTES,), 1), self.MAX_ROWS)
        return [pb.CaptionJob(model=req.ref, options=opts, image=img) for img in images]

    async def _captioner(self, req: InferRequest, call: Call, admit: bool = True):
        """The captioner, resolved as the native Caption does (with ``admit``, its serving limits applied
        to ``call``); FEATURES must have its input dimension (refused naming the tensor)."""
        counted = call if admit else None
        loaded = self.ctx.cached_model(req.ref, task="captioning", call=counted) or await call.control(
            self.ctx.get_model, req.ref, task="captioning", call=counted)
        features = req.inputs.get("FEATURES")
        dim = loaded.model.input_dim
        if features is not None and features.shape[1] != dim:
            raise InvalidInput(f"input FEATURES must be [N, {dim}] for {loaded.manifest.ref}, got "
                               f"{list(features.shape)}", field="inputs[FEATURES].shape")
        return loaded

    async def _decode(self, plan, call: Call):
        """One row through the model's dynamic batcher (``batcher_for``, shared with the native API),
        or alone in the executor when batching is off; returns its ``Finished``."""
        from pixelrpc.services.captioning import batcher_for

        batcher = batcher_for(self.ctx, plan.loaded)
        if batcher is not None:
            finished = await batcher.decode(plan.features, plan.options, call.cancel)
            call.compute_ms += finished.compute_ms
            return finished
        async for item in self.servicer.events(plan, call, want_tokens=False):
            return item
        raise AssertionError("decoding always ends with Finished")

    async def infer(self, req: InferRequest, call: Call) -> InferResult:
        from pixelrpc.models.captioning.decoding import check_features
        from pixelrpc.services.captioning import CaptionPlan, options_from_pb

        wanted = self.requested(req)
        opts = self.options(req)
        features = self.features(req)
        if features is None:  # images: the servicer's own path (encoder in a job slot, then the batcher)
            results = await gather_all([self.servicer.caption(job, call) for job in self.jobs(req)])
            best = [(c.text, [t.id for t in c.tokens], c.logprob) for c in (r.captions[0] for r in results)]
            meta = results[0].meta
            return InferResult(meta.model_name, meta.model_version, self._outputs(best, wanted),
                               {"seed": int(meta.seed)} if meta.seed else {})
        options = options_from_pb(opts, field="parameters")
        loaded = await self._captioner(req, call)
        rows = check_features(loaded.model, np.array(features.data), field="inputs[FEATURES]")
        finished = await gather_all([self._decode(CaptionPlan(loaded, row, options), call) for row in rows])
        best = [(c.text, list(c.tokens), c.logprob) for c in (f.captions[0] for f in finished)]
        return InferResult(loaded.manifest.name, loaded.manifest.version, self._outputs(best, wanted),
                           {"seed": int(options.seed)} if options.seed is not None else {})

    @staticmethod
    def _outputs(captions: list[tuple[str, list[int], float]], wanted) -> list[Tensor]:
        """(text, token ids, log-probability) of each row's best caption as the output tensors."""
        width = max((len(tokens) for _, tokens, _ in captions), default=0)
        tokens = np.zeros((len(captions), width), dtype=np.int32)
        for n, (_, ids, _) in enumerate(captions):
            tokens[n, :len(ids)] = ids
        every = {"CAPTION": bytes_tensor("CAPTION", [text for text, _, _ in captions]),
                 "TOKENS": numeric_tensor("TOKENS", "INT32", tokens),
                 "LOG_PROB": numeric_tensor("LOG_PROB", "FP32", [lp for _, _, lp in captions])}
        return [every[name] for name in every if name in wanted]

    async def stream(self, req: InferRequest, call: Call) -> AsyncIterator[InferResult]:
        """Tokens as they are decoded (outputs TOKEN, WORD, TOKEN_LOG_PROB; parameters caption_index and
        position), then the final response. One row per streamed request."""
        from pixelrpc.models.captioning.decoding import TokenEvent

        jobs = self.jobs(req)
        wanted = self.requested(req)
        if len(jobs) != 1:
            raise InvalidInput(f"a streamed caption request takes one row, got {len(jobs)}; send one request "
                               "per image", field="inputs")
        if "FEATURES" in req.inputs:
            await self._captioner(req, call, admit=False)  # the dimension check; plan() admits the model
        plan = await self.servicer.plan(jobs[0], call)
        name, version = plan.loaded.manifest.name, plan.loaded.manifest.version
        words = plan.loaded.model.idx_to_word
        async for item in self.servicer.events(plan, call, want_tokens=True):
            if isinstance(item, TokenEvent):
                yield InferResult(name, version, [
                    numeric_tensor("TOKEN", "INT32", [item.token]), bytes_tensor("WORD", [words[item.token]]),
                    numeric_tensor("TOKEN_LOG_PROB", "FP32", [item.logprob])],
                    {"caption_index": int(item.caption), "position": int(item.position)}, final=False)
            else:
                best = item.captions[0]
                yield InferResult(name, version, self._outputs([(best.text, list(best.tokens), best.logprob)], wanted))


# ---------------------------------------------------------------------- style
class StyleAdapter(Adapter):
    task = "feature-extraction"
    inputs = (TensorSpec("CONTENT", BYTES, (1,), image=True), TensorSpec("STYLE", BYTES, (-1,), image=True))
    outputs = (TensorSpec("IMAGE", BYTES, (1,), image=True),)
    default_outputs = ("IMAGE",)
    parameters = frozenset({"preset", "iterations", "image_size", "style_size", "content_layer", "content_weight",
                            "tv_weight", "style_layers", "style_weights", "style_blend", "learning_rate",
                            "seed", "show_every", "init", "optimizer"})
    decoupled = True

    def __init__(self, ctx: ServiceContext):
        super().__init__(ctx)
        from pixelrpc.services.style import StyleTransferServicer

        self.servicer = StyleTransferServicer(ctx)

    def job(self, req: InferRequest):
        from pixelrpc.v1 import style_transfer_pb2 as pb

        only_known(req.inputs, ("CONTENT", "STYLE"))
        p = Params(req.parameters, set(self.parameters))
        content = expect(req.inputs, "CONTENT", (BYTES,), 1)
        if content.shape != (1,):
            raise InvalidInput(f"input CONTENT must be [1], got {list(content.shape)}", field="inputs[CONTENT].shape")
        style = expect(req.inputs, "STYLE", (BYTES,), 1)
        blend = p.numbers("style_blend", float)
        if blend is not None and len(blend) != style.shape[0]:
            raise InvalidInput(f"parameter style_blend has {len(blend)} weights for {style.shape[0]} STYLE images",
                               field="parameters.style_blend")
        job = pb.StyleJob(content=common_pb2.Image(data=content.data[0]), preset=p.get("preset", str, ""), model=req.ref,
                          styles=[pb.StyleImage(image=common_pb2.Image(data=b)) for b in style.data.tolist()])
        for i, w in enumerate(blend or ()):
            job.styles[i].weight = w
        given = job.parameters
        for name in ("iterations", "image_size", "style_size", "content_layer"):
            value = p.get(name, int)
            if value is not None:
                if value < 0:
                    raise InvalidInput(f"parameter {name} must be >= 0, got {value}", field=f"parameters.{name}")
                setattr(given, name, value)
        for name in ("content_weight", "tv_weight", "learning_rate"):
            value = p.get(name, float)
            if value is not None:
                setattr(given, name, value)
        given.style_layers.extend(p.numbers("style_layers", int) or ())
        given.style_weights.extend(p.numbers("style_weights", float) or ())
        init = p.get("init", str)
        if init is not None:
            inits = {"content": pb.STYLE_INIT_CONTENT, "random": pb.STYLE_INIT_RANDOM}
            if init not in inits:
                raise InvalidInput(f"parameter init must be content or random, got {clip(init)!r}", field="parameters.init")
            given.init = inits[init]
        optimizer = p.get("optimizer", str)
        if optimizer is not None:
            optimizers = {"adam": pb.STYLE_OPTIMIZER_ADAM, "lbfgs": pb.STYLE_OPTIMIZER_LBFGS}
            if optimizer not in optimizers:
                raise InvalidInput(f"parameter optimizer must be adam or lbfgs, got {clip(optimizer)!r}",
                                   field="parameters.optimizer")
            given.optimizer = optimizers[optimizer]
        seed = p.get("seed", int)
        if seed is not None:
            job.seed = resolve_seed(seed, "parameters.seed")
        show_every = p.get("show_every", int, 0)
        if show_every < 0:
            raise InvalidInput(f"parameter show_every must be >= 0, got {show_every}", field="parameters.show_every")
        return job, show_every

    async def stream(self, req: InferRequest, call: Call, previews: bool = True) -> AsyncIterator[InferResult]:
        """A progress response per iteration (ITERATION, LOSS [content, style, tv, total] and, every
        ``show_every`` iterations, PREVIEW), then the final one (IMAGE)."""
        from pixelrpc.services.convert import image_pb_from_pil

        job, show_every = self.job(req)
        show_every = show_every if previews else 0
        wanted = self.requested(req)
        async for plan, progress in self.servicer._run(job, call, show_every):
            name, version = plan.loaded.manifest.name, plan.loaded.manifest.version
            losses = [progress.content_loss, progress.style_loss, progress.tv_loss, progress.total_loss]
            params = {"iteration": int(progress.iteration), "iterations": int(progress.iterations),
                      "seed": int(plan.seed)}
            if progress.final:
                outputs = [bytes_tensor("IMAGE", [image_pb_from_pil(progress.image).data])] if "IMAGE" in wanted else []
                yield InferResult(name, version, outputs, params)
                continue  # the job's generator ends after its final report (and counts its execution)
            outputs = [numeric_tensor("ITERATION", "INT32", [progress.iteration]),
                       numeric_tensor("LOSS", "FP32", losses)]
            if progress.preview is not None:
                outputs.append(bytes_tensor("PREVIEW", [image_pb_from_pil(progress.preview).data]))
            yield InferResult(name, version, outputs, params, final=False)

    async def infer(self, req: InferRequest, call: Call) -> InferResult:
        final = None
        async for result in self.stream(req, call, previews=False):
            if result.final:
                final = result
        assert final is not None, "the style job always ends with its final report"
        return final


ADAPTERS: dict[str, type[Adapter]] = {"visualization": ClassifierAdapter, "captioning": CaptionerAdapter,
                                      "style": StyleAdapter}
# Names of the BYTES tensors that hold encoded images, in every adapter (and the streamed PREVIEW).
IMAGE_TENSORS = frozenset({s.name for a in ADAPTERS.values() for s in (*a.inputs, *a.outputs) if s.image} | {"PREVIEW"})
