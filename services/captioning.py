"""``pixelrpc.v1.CaptioningService``: captions from images or feature vectors, batched across callers.

A request is planned first (model, options, input -> one feature vector): a feature vector is
checked against the captioner's input dimension; an image is checked from its header against the
server's limits (``call.admit_images``), then decoded straight to the encoder's input size and run
through the captioner's pinned encoder in one job slot. A named model that is already loaded is
resolved on the event loop (a cache hit, no registry read); anything else on the control executor,
so planning never waits behind inference. Decoding then goes through the
model's ``ModelBatcher`` (``services/captioning_batcher.py``), which decodes concurrent requests
together; with ``max_batch_size`` 1 each request is decoded alone in the executor instead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc
import numpy as np
from google.rpc import status_pb2

from pixelrpc.common.suite import SERVICES
from pixelrpc.models.captioning.decoding import (
    MAX_LENGTH_LIMIT,
    Caption,
    DecodeOptions,
    Finished,
    TokenEvent,
    check_features,
    decode,
    decode_steps,
)
from pixelrpc.models.captioning.features import embed_images, load_pinned_encoder
from pixelrpc.models.errors import CancelToken, FailedPrecondition, InvalidInput, PixelRPCError, clip
from pixelrpc.models.options import resolve_seed
from pixelrpc.models.registry import LoadedModel
from pixelrpc.services import tracing
from pixelrpc.services.captioning_batcher import BatchPolicy, ModelBatcher
from pixelrpc.services.convert import tensor_to_numpy
from pixelrpc.services.decode_worker import ENGINES, DecodeEngine
from pixelrpc.services.errors import rich_status, status_code_for
from pixelrpc.services.runtime import Call, ImageAdmission, ServiceContext, rpc
from pixelrpc.services.streaming import Lane
from pixelrpc.v1 import captioning_pb2 as pb
from pixelrpc.v1 import captioning_pb2_grpc as pb_grpc
from pixelrpc.v1 import common_pb2

log = logging.getLogger("pixelrpc.captioning")

# This service's row of the suite table (pixelrpc.common.suite): proto name, registry tasks, default models.
SERVICE_NAME = SERVICES["captioning"].full_name
TASKS = SERVICES["captioning"].tasks
# A request that names no model gets the first of the table's default models present in the registry (see
# ServiceContext.choose_default); the choice is reported in ResponseMeta.model_choice.
DEFAULT_MODELS = SERVICES["captioning"].default_models
DEFAULT_MAX_LENGTH = 30
DEFAULT_BEAM_WIDTH = 3
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_DELAY_MS = 2.0
BATCHERS_KEY = "captioning_batchers"
ENGINE_KEY = "captioning_decode_engine"
_STRATEGIES = {pb.DECODING_STRATEGY_UNSPECIFIED: "greedy", pb.DECODING_STRATEGY_GREEDY: "greedy",
               pb.DECODING_STRATEGY_BEAM: "beam", pb.DECODING_STRATEGY_SAMPLE: "sample"}
_STRATEGY_PB = {"greedy": pb.DECODING_STRATEGY_GREEDY, "beam": pb.DECODING_STRATEGY_BEAM,
                "sample": pb.DECODING_STRATEGY_SAMPLE}


@dataclass
class CaptionPlan:
    """A checked request: the captioner, one feature vector (D,), resolved options."""

    loaded: LoadedModel
    features: np.ndarray
    options: DecodeOptions
    encoder: LoadedModel | None = None


def options_from_pb(opts: pb.CaptionOptions, field: str = "job.options") -> DecodeOptions:
    """Request options with the service's defaults filled in, validated; a sampling seed is drawn if unset."""
    if opts.strategy not in _STRATEGIES:
        raise InvalidInput(f"{field}.strategy {opts.strategy} is not a DecodingStrategy value",
                           field=f"{field}.strategy")
    strategy = _STRATEGIES[opts.strategy]
    options = DecodeOptions(
        strategy=strategy,
        max_length=int(opts.max_length) or DEFAULT_MAX_LENGTH,
        beam_width=int(opts.beam_width) or DEFAULT_BEAM_WIDTH,
        length_penalty=float(opts.length_penalty),
        temperature=float(opts.temperature) if opts.HasField("temperature") else 1.0,
        seed=int(opts.seed) if opts.HasField("seed") else None,
        num_captions=int(opts.num_captions) or 1,
    ).validate(MAX_LENGTH_LIMIT, field=field)
    if strategy == "sample" and options.seed is None:  # validate() checked a given seed (models.options)
        options = replace(options, seed=resolve_seed(None, f"{field}.seed"))
    return options


def options_pb(o: DecodeOptions) -> pb.CaptionOptions:
    out = pb.CaptionOptions(strategy=_STRATEGY_PB[o.strategy], max_length=o.max_length,
                            num_captions=o.num_captions)
    if o.strategy == "beam":
        out.beam_width, out.length_penalty = o.beam_width, o.length_penalty
    if o.strategy == "sample":
        out.temperature, out.seed = o.temperature, int(o.seed)
    return out


def caption_pb(c: Caption, idx_to_word) -> pb.Caption:
    tokens = [pb.CaptionToken(id=t, word=idx_to_word[t], logprob=lp) for t, lp in zip(c.tokens, c.logprobs,
                                                                                       strict=True)]
    return pb.Caption(text=c.text, tokens=tokens, score=c.score, logprob=c.logprob, finished=c.finished)


def error_pb(exc: BaseException, request_id: str) -> status_pb2.Status:
    """One CaptionStream item's error: the google.rpc.Status a failed call would carry (code, message,
    BadRequest field violations, RequestInfo with the stream's request id), read by clients alike."""
    if isinstance(exc, PixelRPCError):
        code, message = status_code_for(exc), exc.message
    else:
        code = grpc.StatusCode.INTERNAL
        message = f"internal error (request id {request_id}); the server logged the details"
    return rich_status(code, message, exc, request_id)


def batcher_for(ctx: ServiceContext, loaded: LoadedModel) -> ModelBatcher | None:
    """The model's batcher (one per service context and loaded model), or None when batching is off
    (max_batch_size 1)."""
    size = int(ctx.serving_config(loaded, "max_batch_size", DEFAULT_MAX_BATCH_SIZE))
    if size <= 1:
        return None
    batchers: dict[tuple, ModelBatcher] = ctx.state.setdefault(BATCHERS_KEY, {})
    key = (loaded.manifest.name, loaded.manifest.version, loaded.manifest.sha256, id(loaded.model))
    batcher = batchers.get(key)
    if batcher is None:
        live = {id(m.model) for m in ctx.cache.loaded()}
        for old, unused in list(batchers.items()):  # models unloaded since: their decoders go
            if old[3] not in live and unused.idle:
                del batchers[old]
                unused.close()
        delay_ms = float(ctx.serving_config(loaded, "max_batch_delay_ms", DEFAULT_MAX_BATCH_DELAY_MS))
        policy = BatchPolicy(max_batch_size=size, max_delay_s=max(0.0, delay_ms) / 1000.0,
                             max_pending=max(1, ctx.settings.queue_depth) * size)
        # The batcher serves requests that were admitted already: it waits for its job slot in line
        # (reacquire) and is never refused, whatever the queue holds.
        on_batch, on_inferences = ctx.metrics.batch_observer(ctx.name, loaded.manifest.ref)
        batcher = batchers[key] = ModelBatcher(
            loaded.model, policy=policy, dtype=decode_dtype_of(ctx, loaded), engine=decode_engine_of(ctx), acquire_slot=ctx.jobs.reacquire,
            release_slot=ctx.jobs.release, max_length_limit=MAX_LENGTH_LIMIT,
            observe_batch=on_batch, count_inferences=on_inferences)
    return batcher


def decode_dtype_of(ctx: ServiceContext, loaded: LoadedModel) -> str | None:
    """The decoding dtype: setting ``decode_dtype`` > manifest ``serving.decode_dtype`` > the model's
    own (float32 for trained captioners). Both float32 and float64 are batch-invariant."""
    return loaded.serving.decode_dtype_for(ctx.settings.decode_dtype or "", loaded.manifest.ref)


def decode_engine_of(ctx: ServiceContext) -> DecodeEngine:
    """The service's decoding loop (setting ``caption_decode``: a worker process or a thread), one per
    service context, stopped with its jobs."""
    engine = ctx.state.get(ENGINE_KEY)
    if engine is None:
        mode = ctx.settings.caption_decode
        if mode not in ENGINES:
            raise ValueError(f"caption_decode={mode!r}: expected one of {', '.join(ENGINES)}")
        engine = ctx.state[ENGINE_KEY] = ENGINES[mode]()
        ctx.jobs.on_shutdown.append(engine.close)
    return engine


class CaptioningServicer(pb_grpc.CaptioningServiceServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.batchers: dict[tuple, ModelBatcher] = ctx.state.setdefault(BATCHERS_KEY, {})
        decode_engine_of(ctx)  # an unknown caption_decode fails when the server starts
        ctx.pending_sources.append(lambda: sum(len(b.pending) for b in list(self.batchers.values())))

    # ------------------------------------------------------------------ planning
    def resolve(self, job: pb.CaptionJob, call: Call | None = None) -> tuple[LoadedModel, DecodeOptions, str]:
        """Model and options (blocking: the first use of a model loads it)."""
        loaded = self.ctx.get_model(job.model, task="captioning", default=DEFAULT_MODELS, field="job.model",
                                    call=call)
        return (loaded, *self.options_and_input(job))

    @staticmethod
    def options_and_input(job: pb.CaptionJob) -> tuple[DecodeOptions, str]:
        options = options_from_pb(job.options)
        which = job.WhichOneof("input")
        if which is None:
            raise InvalidInput("job.image or job.features is required", field="job.input")
        return options, which

    def features_of(self, loaded: LoadedModel, job: pb.CaptionJob) -> np.ndarray:
        arr = tensor_to_numpy(job.features, field="job.features")
        if arr.dtype.kind != "f":
            raise InvalidInput(f"job.features must be float32 or float64, got {job.features.dtype}",
                               field="job.features.dtype")
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1:
            raise InvalidInput(f"job.features must have shape [D] or [1, D], got {list(arr.shape)}",
                               field="job.features.shape")
        return check_features(loaded.model, arr, field="job.features")[0]  # (D,)

    def encode_image(self, loaded: LoadedModel, encoder: LoadedModel, admitted: ImageAdmission) -> np.ndarray:
        """Decode the admitted image to the encoder's input size and embed it (blocking, CPU/GPU heavy)."""
        features = embed_images(encoder.model, admitted.decode())[0]  # (D,)
        if features.shape[0] != loaded.model.input_dim:
            raise FailedPrecondition(
                f"encoder {encoder.manifest.ref} gives {features.shape[0]} features but captioner "
                f"{loaded.manifest.ref} takes {loaded.model.input_dim}")
        return features

    async def plan(self, job: pb.CaptionJob, call: Call, run=None) -> CaptionPlan:
        """``run`` runs the encoder: ``call.run`` (a job slot through the queue), or a stream's lane."""
        loaded = self.ctx.cached_model(job.model, task="captioning", field="job.model", call=call)
        if loaded is None:  # not loaded yet, or a default to resolve: registry work, off the loop
            loaded, options, which = await call.control(self.resolve, job, call)
        else:
            options, which = self.options_and_input(job)
        call.model = loaded.manifest.ref
        if which == "features":
            return CaptionPlan(loaded, self.features_of(loaded, job), options)
        encoder = await call.control(load_pinned_encoder, self.ctx.cache, loaded.manifest)
        planner = getattr(encoder.model, "plan_input", None)
        if planner is None:
            raise FailedPrecondition(f"encoder {encoder.manifest.ref} cannot take images (it has no plan_input)")
        admitted = await call.admit_images([(job.image, "job.image", planner)], wait=run is not None)
        with tracing.span(self.ctx.tracer, "encode image", {tracing.MODEL_ATTR: encoder.manifest.ref,
                                                             tracing.REQUEST_ID_ATTR: call.request_id}):
            features = await (run or call.run)(self.encode_image, loaded, encoder, admitted)  # one slot: decode + encode
        return CaptionPlan(loaded, features, options, encoder)

    # ------------------------------------------------------------------ decoding
    async def events(self, plan: CaptionPlan, call: Call, want_tokens: bool,
                     run=None) -> AsyncIterator[TokenEvent | Finished]:
        """Decode through the model's batcher; without one, in the executor (``run``: see ``plan``)."""
        batcher = batcher_for(self.ctx, plan.loaded)
        dtype = decode_dtype_of(self.ctx, plan.loaded)
        if batcher is None:  # one execution, one inference: a batch of one
            for count in self.ctx.metrics.batch_observer(self.ctx.name, plan.loaded.manifest.ref):
                count(1)
        if batcher is not None:
            async for item in batcher.stream(plan.features, plan.options, call.cancel, want_tokens):
                if isinstance(item, Finished):  # the decoding steps this request took part in
                    call.compute_ms += item.compute_ms
                yield item
        elif want_tokens:
            async for item in call.steps(lambda: decode_steps(plan.loaded.model, plan.features, plan.options,
                                                              dtype=dtype)):
                yield item
        else:
            captions = await (run or call.run)(decode, plan.loaded.model, plan.features, plan.options,
                                               dtype=dtype)
            yield Finished(captions)

    async def caption(self, job: pb.CaptionJob, call: Call, run=None) -> pb.CaptionResult:
        plan = await self.plan(job, call, run)
        batcher = batcher_for(self.ctx, plan.loaded)
        if batcher is not None:  # the common path, without an async generator per request
            with tracing.span(self.ctx.tracer, "decode caption (batched)", {
                    tracing.MODEL_ATTR: plan.loaded.manifest.ref, tracing.REQUEST_ID_ATTR: call.request_id}):
                finished = await batcher.decode(plan.features, plan.options, call.cancel)
            call.compute_ms += finished.compute_ms
            return self.result_pb(plan, finished, call)
        async for item in self.events(plan, call, want_tokens=False, run=run):
            if isinstance(item, Finished):
                return self.result_pb(plan, item, call)
        raise AssertionError("decoding always ends with Finished")

    def result_pb(self, plan: CaptionPlan, finished: Finished, call: Call) -> pb.CaptionResult:
        words = plan.loaded.model.idx_to_word
        out = pb.CaptionResult(captions=[caption_pb(c, words) for c in finished.captions],
                               options=options_pb(plan.options),
                               meta=call.meta(plan.loaded, seed=plan.options.seed))
        if plan.encoder is not None:
            out.encoder.CopyFrom(common_pb2.ModelRef(name=plan.encoder.manifest.name,
                                                     version=plan.encoder.manifest.version))
        return out

    # ------------------------------------------------------------------ RPCs
    @rpc
    async def Caption(self, request: pb.CaptionRequest, call: Call):
        return pb.CaptionResponse(result=await self.caption(request.job, call))

    @rpc
    async def StreamCaption(self, request: pb.StreamCaptionRequest, call: Call):
        plan = await self.plan(request.job, call)
        words = plan.loaded.model.idx_to_word
        async for item in self.events(plan, call, want_tokens=True):
            if isinstance(item, TokenEvent):
                token = pb.CaptionToken(id=item.token, word=words[item.token], logprob=item.logprob)
                yield pb.StreamCaptionResponse(token=pb.TokenUpdate(caption_index=item.caption,
                                                                    position=item.position, token=token))
            else:
                yield pb.StreamCaptionResponse(result=self.result_pb(plan, item, call))

    @rpc
    async def CaptionStream(self, request_iterator, call: Call):
        """Each request is planned and decoded as its own task; answers go out as they are ready.

        Flow control: the next request is read only while fewer than ``caption_stream_window`` items
        of this stream are in progress (read and not yet answered), so gRPC's flow control holds a
        fast client back instead of the server buffering its images. Image items are encoded in the
        stream's lane (one job slot, waited for, never refused: the items of an admitted stream do not
        compete one by one for the server-wide queue); decoding goes to the model's batcher.
        """
        room = asyncio.Semaphore(max(1, int(self.ctx.settings.caption_stream_window)))
        lane = Lane(call)
        answers: asyncio.Queue = asyncio.Queue()
        open_ids: set[str] = set()
        tasks: set[asyncio.Task] = set()
        received = 0  # requests read; each gets exactly one answer
        end_of_requests = object()

        async def answer(req: pb.CaptionStreamRequest) -> None:
            try:
                with call.item() as item:  # a model's timeout_s and max_concurrency apply per request
                    result = await self.caption(req.job, item, run=functools.partial(lane.run, cancel=item.cancel))
                response = pb.CaptionStreamResponse(id=req.id, result=result)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every item gets an answer; the stream goes on
                if not isinstance(exc, PixelRPCError):
                    log.error("CaptionStream item %r failed (request id %s)", req.id, call.request_id, exc_info=exc)
                response = pb.CaptionStreamResponse(id=req.id, error=error_pb(exc, call.request_id))
            finally:
                open_ids.discard(req.id)
            answers.put_nowait(response)

        async def read() -> None:
            nonlocal received
            requests = request_iterator.__aiter__()
            try:
                while True:
                    await room.acquire()  # released once the item's answer is handed to the sender
                    try:
                        req = await requests.__anext__()
                    except StopAsyncIteration:
                        return
                    received += 1
                    if not req.id or req.id in open_ids:
                        why = "is required" if not req.id else f"{clip(req.id)!r} is already in progress on this stream"
                        err = InvalidInput(f"id {why}: give each request a unique id", field="id")
                        answers.put_nowait(pb.CaptionStreamResponse(id=req.id, error=error_pb(err, call.request_id)))
                        continue
                    open_ids.add(req.id)
                    task = asyncio.get_running_loop().create_task(answer(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                answers.put_nowait(end_of_requests)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            reading, answered = True, 0
            while reading or answered < received:
                item = await answers.get()
                if item is end_of_requests:
                    reading = False
                    continue
                answered += 1
                yield item
                room.release()
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            lane.close()

    @rpc
    async def ExplainCaption(self, request: pb.ExplainCaptionRequest, call: Call):
        from pixelrpc.services.captioning_explain import explain_caption  # its own module (imports this one)

        async for message in explain_caption(self, request, call):
            yield message


def add_to_server(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    pb_grpc.add_CaptioningServiceServicer_to_server(CaptioningServicer(ctx), server)


def _decodes(model) -> bool:
    """Whether ``model`` can decode (a captioner with ``<START>`` and ``<END>``): what warm-ups warm."""
    return getattr(model, "start_idx", None) is not None and getattr(model, "end_idx", None) is not None


async def warmup_async(ctx: ServiceContext, loaded: LoadedModel) -> None:
    """Decode one caption through the model's batcher: the decoding process is started and given the
    model (its weights prepared, its products probed) before the service reports SERVING."""
    model = loaded.model
    if not _decodes(model):
        return
    batcher = batcher_for(ctx, loaded)
    if batcher is not None:
        await batcher.decode(np.zeros(model.input_dim, np.float32), DecodeOptions(max_length=2), CancelToken())


def warmup(ctx: ServiceContext, loaded: LoadedModel) -> None:
    """Decode one caption so the first request does not pay for lazy initialisation (the decoding
    layout of the weights, the BLAS row padding of their shapes)."""
    model = loaded.model
    if not _decodes(model):
        return
    dtype = decode_dtype_of(ctx, loaded)
    decode(model, np.zeros(model.input_dim), DecodeOptions(max_length=2), dtype=dtype)
