"""Typed clients of ``pixelrpc.v1.StyleTransferService`` (sync and asyncio).

Images may be given as encoded bytes, a path, or a PIL image. ``stylize`` yields ``StyleStep``
objects and ends with a ``StyleOutput``; closing the iterator cancels the call on the server.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from pixelrpc.clients.base import AsyncServiceClient, ImageInput, ServiceClient, image_pb
from pixelrpc.common.refs import split_ref
from pixelrpc.v1 import common_pb2
from pixelrpc.v1 import style_transfer_pb2 as pb
from pixelrpc.v1 import style_transfer_pb2_grpc as pb_grpc

_INITS = {"content": pb.STYLE_INIT_CONTENT, "random": pb.STYLE_INIT_RANDOM}
_OPTIMIZERS = {"adam": pb.STYLE_OPTIMIZER_ADAM, "lbfgs": pb.STYLE_OPTIMIZER_LBFGS}
# keyword -> StyleParameters field
_SCALARS = {"image_size": "image_size", "style_size": "style_size", "content_layer": "content_layer",
            "content_weight": "content_weight", "tv_weight": "tv_weight", "iterations": "iterations",
            "lr": "learning_rate", "decayed_lr": "decayed_learning_rate", "decay_at": "decay_at"}


@dataclass(frozen=True)
class StyleLosses:
    content: float
    style: float
    tv: float
    total: float

    @classmethod
    def from_pb(cls, m: pb.StyleLosses) -> StyleLosses:
        return cls(m.content, m.style, m.tv, m.total)


@dataclass(frozen=True)
class StyleStep:
    """One progress message; ``preview_png`` is set every ``preview_every`` iterations."""

    iteration: int
    iterations: int
    losses: StyleLosses
    elapsed_ms: float
    learning_rate: float
    preview_png: bytes = b""

    @property
    def preview(self) -> Image.Image | None:
        return Image.open(io.BytesIO(self.preview_png)) if self.preview_png else None


@dataclass(frozen=True)
class StyleOutput:
    """The final result: the PNG, its losses, the parameters the server ran with and the meta."""

    png: bytes
    width: int
    height: int
    losses: StyleLosses
    parameters: pb.StyleParameters
    meta: common_pb2.ResponseMeta

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png))

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:
            f.write(self.png)

    @classmethod
    def from_pb(cls, r: pb.StyleResult) -> StyleOutput:
        return cls(r.image.data, r.width, r.height, StyleLosses.from_pb(r.losses), r.parameters, r.meta)


def build_job(content: ImageInput, styles: Sequence[ImageInput], *, style_weights: Sequence[float] | None = None,
              preset: str = "", model: str = "", seed: int | None = None, style_layers: Sequence[int] | None = None,
              layer_weights: Sequence[float] | None = None, init: str | None = None,
              preserve_color: bool = False, optimizer: str | None = None, **params) -> pb.StyleJob:
    """A ``StyleJob``. ``style_weights`` blend the style images; ``style_layers``/``layer_weights`` are the
    per-layer style weights; other keywords (image_size, style_size, content_layer, content_weight,
    tv_weight, iterations, lr, decayed_lr, decay_at) override the preset. ``model`` is NAME[:VERSION].
    ``optimizer``: "adam" (default) or "lbfgs"."""
    unknown = set(params) - set(_SCALARS)
    if unknown:
        raise TypeError(f"unknown style parameter(s) {sorted(unknown)}; known: {sorted(_SCALARS)}")
    if style_weights is not None and len(style_weights) != len(styles):
        raise ValueError(f"{len(styles)} style images but {len(style_weights)} style weights")
    parameters = pb.StyleParameters(preserve_color=preserve_color)
    for key, value in params.items():
        if value is not None:
            setattr(parameters, _SCALARS[key], value)
    if style_layers is not None or layer_weights is not None:
        parameters.style_layers.extend(style_layers or [])
        parameters.style_weights.extend(layer_weights or [])
    if init is not None:
        if init not in _INITS:
            raise ValueError(f"init must be one of {sorted(_INITS)}, got {init!r}")
        parameters.init = _INITS[init]
    if optimizer is not None:
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
        parameters.optimizer = _OPTIMIZERS[optimizer]
    name, version = split_ref(model)
    job = pb.StyleJob(content=image_pb(content), preset=preset, parameters=parameters,
                      model=common_pb2.ModelRef(name=name, version=version))
    for i, style in enumerate(styles):
        entry = job.styles.add(image=image_pb(style))
        if style_weights is not None:
            entry.weight = float(style_weights[i])
    if seed is not None:
        job.seed = int(seed)
    return job


def _event(msg: pb.StylizeResponse) -> StyleStep | StyleOutput:
    if msg.HasField("result"):
        return StyleOutput.from_pb(msg.result)
    p = msg.progress
    return StyleStep(p.iteration, p.iterations, StyleLosses.from_pb(p.losses), p.elapsed_ms, p.learning_rate,
                     p.preview.data)


class StyleClient(ServiceClient):
    """Sync client: ``stylize`` (streamed), ``stylize_unary``, ``presets``."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self._stub = pb_grpc.StyleTransferServiceStub(self.channel)

    def stylize(self, content: ImageInput, styles: Sequence[ImageInput], *, preview_every: int = 0,
                timeout: float | None = None, request_id: str | None = None,
                **job) -> Iterator[StyleStep | StyleOutput]:
        request = pb.StylizeRequest(job=build_job(content, styles, **job), preview_every=preview_every)
        for msg in self.stream(self._stub.Stylize, request, timeout=timeout, request_id=request_id):
            yield _event(msg)

    def stylize_unary(self, content: ImageInput, styles: Sequence[ImageInput], *, timeout: float | None = None,
                      request_id: str | None = None, **job) -> StyleOutput:
        request = pb.StylizeUnaryRequest(job=build_job(content, styles, **job))
        return StyleOutput.from_pb(self.unary(self._stub.StylizeUnary, request, timeout=timeout,
                                              request_id=request_id).result)

    def presets(self) -> dict[str, pb.StyleParameters]:
        resp = self.unary(self._stub.ListStylePresets, pb.ListStylePresetsRequest())
        return {p.name: p.parameters for p in resp.presets}


class AsyncStyleClient(AsyncServiceClient):
    """Asyncio client with the same methods as ``StyleClient``."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self._stub = pb_grpc.StyleTransferServiceStub(self.channel)

    async def stylize(self, content: ImageInput, styles: Sequence[ImageInput], *, preview_every: int = 0,
                      timeout: float | None = None, request_id: str | None = None,
                      **job) -> AsyncIterator[StyleStep | StyleOutput]:
        request = pb.StylizeRequest(job=build_job(content, styles, **job), preview_every=preview_every)
        async for msg in self.stream(self._stub.Stylize, request, timeout=timeout, request_id=request_id):
            yield _event(msg)

    async def stylize_unary(self, content: ImageInput, styles: Sequence[ImageInput], *,
                            timeout: float | None = None, request_id: str | None = None, **job) -> StyleOutput:
        request = pb.StylizeUnaryRequest(job=build_job(content, styles, **job))
        resp = await self.unary(self._stub.StylizeUnary, request, timeout=timeout, request_id=request_id)
        return StyleOutput.from_pb(resp.result)

    async def presets(self) -> dict[str, pb.StyleParameters]:
        resp = await self.unary(self._stub.ListStylePresets, pb.ListStylePresetsRequest())
        return {p.name: p.parameters for p in resp.presets}
