"""``CaptioningService.ExplainCaption``: a saliency map per word of a caption, streamed word by word.

The servicer method (``services/captioning.py``) delegates here. Everything the request says is
checked before anything is allocated, in this order: ``max_length``, the image's presence, the model
(``model``), the caption's words against its vocabulary (``caption``), the pinned encoder (a captioner
without one is FAILED_PRECONDITION), then the image from its header (``call.admit_images`` with the
encoder's planner: the pixel limits and the server's pixel budget; and each word's map at the image's
resolution must fit in one message, ``max_message_bytes``). The job then runs in one job slot as a
domain generator (``pixelrpc.models.captioning.explain.explain_steps`` through ``call.steps``), so a
cancelled or expired call stops between words; each word's map is resized back to the image sent
there, one at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from pixelrpc.models.captioning.decoding import MAX_LENGTH_LIMIT
from pixelrpc.models.captioning.explain import (
    ExplainedWord,
    check_map_budget,
    explain_steps,
    map_to_source,
    tokenize,
)
from pixelrpc.models.captioning.features import load_pinned_encoder
from pixelrpc.models.errors import FailedPrecondition, InvalidInput
from pixelrpc.services.captioning import DEFAULT_MAX_LENGTH, DEFAULT_MODELS, decode_dtype_of
from pixelrpc.services.convert import image_pb_from_pil, numpy_to_tensor
from pixelrpc.services.runtime import Call
from pixelrpc.v1 import captioning_pb2 as pb
from pixelrpc.v1 import common_pb2

# Room for everything of a WordSaliency message but the map (token, overlay PNG, framing).
MESSAGE_MARGIN = 1 << 20


async def explain_caption(servicer, request: pb.ExplainCaptionRequest, call: Call
                          ) -> AsyncIterator[pb.ExplainCaptionResponse]:
    """The body of ``CaptioningServicer.ExplainCaption`` (``servicer``: its ``ctx`` and ``decode_dtype``)."""
    ctx = servicer.ctx
    max_length = int(request.max_length) or DEFAULT_MAX_LENGTH
    if not 1 <= max_length <= MAX_LENGTH_LIMIT:
        raise InvalidInput(f"max_length must be in [1, {MAX_LENGTH_LIMIT}], got {max_length}", field="max_length")
    if not request.HasField("image") or not request.image.data:
        raise InvalidInput("image is required: ExplainCaption explains the caption of an encoded image "
                           "(PNG, JPEG, WebP)", field="image")
    loaded = ctx.cached_model(request.model, task="captioning", field="model", call=call)
    if loaded is None:  # not loaded yet, or a default to resolve: registry work, off the loop
        loaded = await call.control(ctx.get_model, request.model, task="captioning", default=DEFAULT_MODELS,
                                    field="model", call=call)
    call.model = loaded.manifest.ref
    captioner = loaded.model
    if not hasattr(captioner, "word_to_idx") or not hasattr(captioner, "params"):
        raise FailedPrecondition(f"model {loaded.manifest.ref} is not a CaptioningRNN: only those are explained")
    tokens = tokenize(captioner, request.caption, max_length=max_length) if request.caption else None
    if not loaded.manifest.metadata.get("encoder"):
        raise FailedPrecondition(
            f"captioner {loaded.manifest.ref} has no pinned image encoder (it was trained on precomputed "
            "features), so there are no pixels to explain: use a captioner published with its encoder "
            "(e.g. the bootstrap's shapes-captioner)")
    encoder = await call.control(load_pinned_encoder, ctx.cache, loaded.manifest)
    planner = getattr(encoder.model, "plan_input", None)
    if planner is None or not hasattr(encoder.model, "embed"):
        raise FailedPrecondition(f"encoder {encoder.manifest.ref} cannot take images (it has no plan_input)")
    items = [(request.image, "image", planner)]

    def plan():  # on the control executor: the header, the working size, the size of each map
        plans = ctx.plan_images(items)
        header = plans[0].header
        check_map_budget(header.width, header.height, ctx.settings.max_message_bytes - MESSAGE_MARGIN)
        return plans

    admitted = await call.admit_images(items, await call.control(plan))
    geometry = admitted.plans[0].geometry
    dtype = decode_dtype_of(servicer.ctx, loaded)
    render = bool(request.render_overlays)

    def job():
        working = admitted.decode()[0]  # the S x S image the encoder reads
        x = encoder.model.preprocess([working])  # (1, 3, S, S)
        words: list[pb.CaptionToken] = []
        for item in explain_steps(captioner, encoder.model, x, caption=tokens, max_length=max_length, dtype=dtype):
            if isinstance(item, ExplainedWord):
                token = pb.CaptionToken(id=item.token, word=item.word, logprob=item.log_prob)
                words.append(token)
                full = map_to_source(item.saliency, geometry)  # (H, W) float32
                row, col = np.unravel_index(int(np.argmax(full)), full.shape)
                word = pb.WordSaliency(position=item.position, token=token, saliency=numpy_to_tensor(full),
                                       peak_x=int(col), peak_y=int(row))
                del full
                if render:
                    from pixelrpc.models.visualization.render import saliency_overlay

                    word.overlay.CopyFrom(image_pb_from_pil(saliency_overlay(working, item.saliency)))
                yield pb.ExplainCaptionResponse(word=word)
            else:
                width, height = geometry.source
                yield pb.ExplainCaptionResponse(result=pb.ExplainedCaption(
                    text=item.text, tokens=words, logprob=item.log_prob, finished=item.finished,
                    teacher_forced=item.teacher_forced, width=width, height=height,
                    input_size=int(x.shape[-1]),
                    encoder=common_pb2.ModelRef(name=encoder.manifest.name, version=encoder.manifest.version)))

    async for message in call.steps(job, executes=loaded):
        if message.HasField("result"):
            message.result.meta.CopyFrom(call.meta(loaded))
        yield message
