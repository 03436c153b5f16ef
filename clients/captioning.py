"""Typed clients of ``pixelrpc.v1.CaptioningService`` (sync and asyncio).

An input is an image (encoded bytes, a path, or a PIL image) or a feature vector (a numpy array,
or a path to a ``.npy`` file). ``stream_caption`` yields ``TokenUpdate`` objects and ends with a
``CaptionOutput``; closing the iterator cancels the call on the server. ``caption_many`` sends
many inputs over one ``CaptionStream`` and yields ``(index, CaptionOutput | RpcError)`` as each
answer arrives, with at most ``window`` inputs in flight (sent and not yet answered): inputs are
read (files opened) only as the window allows, and the server is never sent more than it can take.
``explain`` returns an ``Explanation`` of an image's caption: every word with its saliency map (a
float32 array at the resolution of the image sent); ``explain_stream`` yields the words as they come.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
from PIL import Image

from pixelrpc.clients import errors
from pixelrpc.clients.base import AsyncServiceClient, ServiceClient, image_pb
from pixelrpc.common.refs import split_ref
from pixelrpc.v1 import captioning_pb2 as pb
from pixelrpc.v1 import captioning_pb2_grpc as pb_grpc
from pixelrpc.v1 import common_pb2

CaptionInput = bytes | str | os.PathLike | Image.Image | np.ndarray
STRATEGIES = {"greedy": pb.DECODING_STRATEGY_GREEDY, "beam": pb.DECODING_STRATEGY_BEAM,
              "sample": pb.DECODING_STRATEGY_SAMPLE}
_STRATEGY_NAMES = {v: k for k, v in STRATEGIES.items()}
# Inputs of one caption_many in flight: the server's default caption_stream_window, so that a
# stream keeps the server's window full without queueing more on the wire.
DEFAULT_WINDOW = 32


@dataclass(frozen=True)
class CaptionToken:
    id: int
    word: str
    logprob: float


@dataclass(frozen=True)
class CaptionText:
    """One caption: its text, tokens (ending with ``<END>`` when finished) and scores."""

    text: str
    tokens: tuple[CaptionToken, ...]
    score: float
    logprob: float
    finished: bool

    @classmethod
    def from_pb(cls, c: pb.Caption) -> CaptionText:
        return cls(c.text, tuple(CaptionToken(t.id, t.word, t.logprob) for t in c.tokens), c.score, c.logprob,
                   c.finished)

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]


@dataclass(frozen=True)
class CaptionOutput:
    """The answer to one input: captions (best first for beam search), the options and model used."""

    captions: tuple[CaptionText, ...]
    strategy: str
    options: pb.CaptionOptions
    encoder: str  # "name:version" of the encoder for image input, else ""
    meta: common_pb2.ResponseMeta

    @property
    def text(self) -> str:
        return self.captions[0].text if self.captions else ""

    @classmethod
    def from_pb(cls, r: pb.CaptionResult) -> CaptionOutput:
        encoder = f"{r.encoder.name}:{r.encoder.version}" if r.encoder.name else ""
        return cls(tuple(CaptionText.from_pb(c) for c in r.captions),
                   _STRATEGY_NAMES.get(r.options.strategy, "greedy"), r.options, encoder, r.meta)

    def to_json(self) -> dict:
        return {
            "captions": [{"text": c.text, "score": c.score, "logprob": c.logprob, "finished": c.finished,
                          "tokens": [{"id": t.id, "word": t.word, "logprob": t.logprob} for t in c.tokens]}
                         for c in self.captions],
            "strategy": self.strategy, "encoder": self.encoder,
            "model": f"{self.meta.model_name}:{self.meta.model_version}", "model_sha256": self.meta.model_sha256,
            "seed": self.meta.seed if self.strategy == "sample" else None, "request_id": self.meta.request_id,
        }


@dataclass(frozen=True)
class TokenUpdate:
    """A token as the server decodes it (greedy and sampling)."""

    caption_index: int
    position: int
    token: CaptionToken


@dataclass(frozen=True)
class WordExplanation:
    """One explained word: ``saliency`` float32 (H, W) at the image's resolution; ``peak`` its (x, y)
    maximum; ``overlay`` PNG bytes of the map over the encoder's input when asked for, else None."""

    position: int
    word: str
    token_id: int
    log_prob: float
    saliency: np.ndarray
    peak: tuple[int, int]
    overlay: bytes | None = None

    @classmethod
    def from_pb(cls, w: pb.WordSaliency) -> WordExplanation:
        t = w.saliency
        smap = np.frombuffer(t.data, dtype=np.dtype(t.dtype).newbyteorder("<")).reshape(tuple(t.shape))
        return cls(w.position, w.token.word, w.token.id, w.token.logprob, smap.astype(np.float32),
                   (w.peak_x, w.peak_y), w.overlay.data if w.HasField("overlay") else None)


@dataclass(frozen=True)
class Explanation:
    """An explained caption: ``caption`` (str) and ``words`` (``WordExplanation``, in order)."""

    caption: str
    words: tuple[WordExplanation, ...]
    log_prob: float
    finished: bool
    teacher_forced: bool
    size: tuple[int, int]  # (width, height) of the image, and of every map
    input_size: int  # the encoder's working side
    encoder: str
    meta: common_pb2.ResponseMeta

    def to_json(self) -> dict:
        return {"caption": self.caption, "logprob": self.log_prob, "finished": self.finished,
                "teacher_forced": self.teacher_forced, "width": self.size[0], "height": self.size[1],
                "input_size": self.input_size, "encoder": self.encoder,
                "model": f"{self.meta.model_name}:{self.meta.model_version}", "request_id": self.meta.request_id,
                "words": [{"position": w.position, "word": w.word, "logprob": w.log_prob,
                           "peak": {"x": w.peak[0], "y": w.peak[1]}, "peak_value": float(w.saliency.max())}
                          for w in self.words]}


def explain_request(image, caption: str | None, model: str | None, max_length: int,
                    overlays: bool) -> pb.ExplainCaptionRequest:
    name, version = split_ref(model or "")
    return pb.ExplainCaptionRequest(model=common_pb2.ModelRef(name=name, version=version),
                                    image=image_pb(image), caption=caption or "", max_length=max_length,
                                    render_overlays=overlays)


class _Explaining:
    """Folds an ExplainCaption stream: ``event(msg)`` gives a WordExplanation or the Explanation."""

    def __init__(self):
        self.words: list[WordExplanation] = []

    def event(self, msg: pb.ExplainCaptionResponse) -> WordExplanation | Explanation:
        if msg.HasField("word"):
            word = WordExplanation.from_pb(msg.word)
            self.words.append(word)
            return word
        r = msg.result
        encoder = f"{r.encoder.name}:{r.encoder.version}" if r.encoder.name else ""
        return Explanation(r.text, tuple(self.words), r.logprob, r.finished, r.teacher_forced,
                           (r.width, r.height), r.input_size, encoder, r.meta)


def input_job(job: pb.CaptionJob, value: CaptionInput) -> None:
    """Put an image or a feature vector into ``job``."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value, dtype=np.float64 if value.dtype == np.float64 else np.float32)
        job.features.CopyFrom(common_pb2.Tensor(shape=list(arr.shape), dtype=arr.dtype.name,
                                                data=arr.astype(arr.dtype.newbyteorder("<")).tobytes()))
    elif isinstance(value, str | os.PathLike) and str(value).lower().endswith(".npy"):
        input_job(job, np.load(value, allow_pickle=False))
    else:
        job.image.CopyFrom(image_pb(value))


def build_job(value: CaptionInput, *, model: str = "", strategy: str = "greedy", max_length: int = 0,
              beam_width: int = 0, length_penalty: float = 0.0, temperature: float | None = None,
              seed: int | None = None, num_captions: int = 0) -> pb.CaptionJob:
    """A ``CaptionJob``; ``model`` is NAME[:VERSION]; zeros take the server's defaults."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    name, version = split_ref(model)
    options = pb.CaptionOptions(strategy=STRATEGIES[strategy], max_length=max_length, beam_width=beam_width,
                                length_penalty=length_penalty, num_captions=num_captions)
    if temperature is not None:
        options.temperature = float(temperature)
    if seed is not None:
        options.seed = int(seed)
    job = pb.CaptionJob(model=common_pb2.ModelRef(name=name, version=version), options=options)
    input_job(job, value)
    return job


def _job(value: CaptionInput | pb.CaptionJob, options: dict) -> pb.CaptionJob:
    return value if isinstance(value, pb.CaptionJob) else build_job(value, **options)


def item_error(status) -> errors.RpcError:
    """The client exception of one failed CaptionStream item (a ``google.rpc.Status``): its code's
    class, message, request id and field violations, as for a failed call."""
    return errors.from_status(status)


def _event(msg: pb.StreamCaptionResponse) -> TokenUpdate | CaptionOutput:
    if msg.HasField("result"):
        return CaptionOutput.from_pb(msg.result)
    t = msg.token
    return TokenUpdate(t.caption_index, t.position, CaptionToken(t.token.id, t.token.word, t.token.logprob))


def _outcome(msg: pb.CaptionStreamResponse) -> tuple[int, CaptionOutput | errors.RpcError]:
    index = int(msg.id)
    if msg.HasField("error"):
        return index, item_error(msg.error)
    return index, CaptionOutput.from_pb(msg.result)


class CaptioningClient(ServiceClient):
    """Sync client: ``caption``, ``stream_caption``, ``caption_many``."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self._stub = pb_grpc.CaptioningServiceStub(self.channel)

    def caption(self, value: CaptionInput, *, timeout: float | None = None, request_id: str | None = None,
                **options) -> CaptionOutput:
        request = pb.CaptionRequest(job=build_job(value, **options))
        return CaptionOutput.from_pb(self.unary(self._stub.Caption, request, timeout=timeout,
                                                request_id=request_id).result)

    def stream_caption(self, value: CaptionInput, *, timeout: float | None = None,
                       request_id: str | None = None, **options) -> Iterator[TokenUpdate | CaptionOutput]:
        request = pb.StreamCaptionRequest(job=build_job(value, **options))
        for msg in self.stream(self._stub.StreamCaption, request, timeout=timeout, request_id=request_id):
            yield _event(msg)

    def caption_many(self, values: Iterable[CaptionInput | pb.CaptionJob], *, timeout: float | None = None,
                     request_id: str | None = None, window: int = DEFAULT_WINDOW, **options,
                     ) -> Iterator[tuple[int, CaptionOutput | errors.RpcError]]:
        """One CaptionStream for all inputs; yields ``(input index, output or error)`` as answers arrive.
        A bad input yields its error and the others go on. An input may also be a ready ``CaptionJob``
        (its own model and options). At most ``window`` inputs are in flight; ``timeout`` is the
        deadline of the whole stream."""
        room = threading.Semaphore(max(1, window))
        finished = threading.Event()

        def requests():  # consumed by a gRPC thread, which blocks here while the window is full
            for i, v in zip(itertools.count(), values):
                while not room.acquire(timeout=0.2):
                    if finished.is_set():
                        return
                if finished.is_set():
                    return
                yield pb.CaptionStreamRequest(id=str(i), job=_job(v, options))

        call = self._stub.CaptionStream(requests(), timeout=timeout or self.timeout,
                                        metadata=self.metadata(request_id))
        try:
            for msg in call:
                room.release()
                yield _outcome(msg)
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None
        finally:
            finished.set()
            call.cancel()

    def explain_stream(self, image, caption: str | None = None, model: str | None = None, *, max_length: int = 0,
                       overlays: bool = False, timeout: float | None = None, request_id: str | None = None,
                       ) -> Iterator[WordExplanation | Explanation]:
        """Yields a ``WordExplanation`` per word as the server computes it, then the ``Explanation``.
        Closing the iterator cancels the call."""
        fold = _Explaining()
        request = explain_request(image, caption, model, max_length, overlays)
        for msg in self.stream(self._stub.ExplainCaption, request, timeout=timeout, request_id=request_id):
            yield fold.event(msg)

    def explain(self, image, caption: str | None = None, model: str | None = None, **kw) -> Explanation:
        """Explain ``image``'s caption (the captioner's own, or ``caption``, teacher-forced): a saliency
        map per word at the image's resolution. ``max_length``, ``overlays`` (PNG per word), ``timeout``."""
        for item in self.explain_stream(image, caption, model, **kw):
            if isinstance(item, Explanation):
                return item
        raise errors.RpcError(grpc.StatusCode.INTERNAL, "the stream ended without its result")


class AsyncCaptioningClient(AsyncServiceClient):
    """Asyncio client with the same methods as ``CaptioningClient``."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self._stub = pb_grpc.CaptioningServiceStub(self.channel)

    async def caption(self, value: CaptionInput, *, timeout: float | None = None,
                      request_id: str | None = None, **options) -> CaptionOutput:
        request = pb.CaptionRequest(job=build_job(value, **options))
        resp = await self.unary(self._stub.Caption, request, timeout=timeout, request_id=request_id)
        return CaptionOutput.from_pb(resp.result)

    async def stream_caption(self, value: CaptionInput, *, timeout: float | None = None,
                             request_id: str | None = None, **options) -> AsyncIterator[TokenUpdate | CaptionOutput]:
        request = pb.StreamCaptionRequest(job=build_job(value, **options))
        async for msg in self.stream(self._stub.StreamCaption, request, timeout=timeout, request_id=request_id):
            yield _event(msg)

    async def caption_many(self, values: Iterable[CaptionInput | pb.CaptionJob], *, timeout: float | None = None,
                           request_id: str | None = None, window: int = DEFAULT_WINDOW, **options,
                           ) -> AsyncIterator[tuple[int, CaptionOutput | errors.RpcError]]:
        """As ``CaptioningClient.caption_many``: at most ``window`` inputs in flight."""
        room = asyncio.Semaphore(max(1, window))

        async def requests():
            for i, v in enumerate(values):
                await room.acquire()
                yield pb.CaptionStreamRequest(id=str(i), job=_job(v, options))

        call = self._stub.CaptionStream(requests(), timeout=timeout or self.timeout,
                                        metadata=self.metadata(request_id))
        try:
            async for msg in call:
                room.release()
                yield _outcome(msg)
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None
        finally:
            call.cancel()

    async def explain_stream(self, image, caption: str | None = None, model: str | None = None, *,
                             max_length: int = 0, overlays: bool = False, timeout: float | None = None,
                             request_id: str | None = None) -> AsyncIterator[WordExplanation | Explanation]:
        """As ``CaptioningClient.explain_stream``."""
        fold = _Explaining()
        request = explain_request(image, caption, model, max_length, overlays)
        async for msg in self.stream(self._stub.ExplainCaption, request, timeout=timeout, request_id=request_id):
            yield fold.event(msg)

    async def explain(self, image, caption: str | None = None, model: str | None = None, **kw) -> Explanation:
        """As ``CaptioningClient.explain``."""
        async for item in self.explain_stream(image, caption, model, **kw):
            if isinstance(item, Explanation):
                return item
        raise errors.RpcError(grpc.StatusCode.INTERNAL, "the stream ended without its result")
