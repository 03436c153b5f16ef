"""Typed clients of ``pixelrpc.v1.VisualizationService`` (sync and asyncio).

Images may be given as encoded bytes, a file path or a PIL image. Streaming methods come in two
forms: ``*_stream`` yields every response (progress messages, then the result; closing the
iterator cancels the call), and the plain form returns the final response, calling
``on_progress(progress_message)`` for each progress message.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import grpc
import numpy as np

from pixelrpc.clients.base import AsyncServiceClient, ImageInput, ServiceClient, image_pb
from pixelrpc.clients.errors import Internal
from pixelrpc.common.refs import split_ref
from pixelrpc.v1 import common_pb2
from pixelrpc.v1 import visualization_pb2 as pb
from pixelrpc.v1 import visualization_pb2_grpc as pb_grpc

METHODS = {"vanilla": pb.SALIENCY_METHOD_VANILLA, "smoothgrad": pb.SALIENCY_METHOD_SMOOTHGRAD,
           "integrated_gradients": pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
           "integrated-gradients": pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS, "ig": pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS}
BASELINES = {"black": pb.INTEGRATED_GRADIENTS_BASELINE_BLACK, "mean": pb.INTEGRATED_GRADIENTS_BASELINE_MEAN}


# ---------------------------------------------------------------------- conversions
def model_ref(model: str | None) -> common_pb2.ModelRef | None:
    """``"name"`` or ``"name:version"``; None: the service's default model."""
    if not model:
        return None
    name, version = split_ref(model)
    return common_pb2.ModelRef(name=name, version=version)


def to_pil(image: common_pb2.Image):
    """Decode an Image message (PNG from the service) into a PIL image."""
    from PIL import Image

    return Image.open(io.BytesIO(image.data)).convert("RGB")


def to_numpy(tensor: common_pb2.Tensor) -> np.ndarray:
    """A Tensor message as a numpy array."""
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape)).astype(tensor.dtype)


# ---------------------------------------------------------------------- request builders
def classify_request(images: Sequence[ImageInput], model: str | None, top_k: int) -> pb.ClassifyRequest:
    if isinstance(images, ImageInput):
        images = [images]
    return pb.ClassifyRequest(model=model_ref(model), images=[image_pb(i) for i in images], top_k=top_k)


def saliency_request(image: ImageInput, target_class: int | None, method: str, model: str | None,
                     noise_level: float | None, samples: int, seed: int | None, steps: int,
                     baseline: str, render_images: bool = False) -> pb.SaliencyRequest:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use vanilla, smoothgrad or integrated_gradients")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; use black or mean")
    request = pb.SaliencyRequest(model=model_ref(model), image=image_pb(image), method=METHODS[method],
                                 smoothgrad=pb.SmoothGradOptions(samples=samples, noise_level=noise_level,
                                                                 seed=seed),
                                 integrated_gradients=pb.IntegratedGradientsOptions(
                                     steps=steps, baseline=BASELINES[baseline]),
                                 render_images=render_images)
    if target_class is not None:
        request.target_class = target_class
    return request


def fooling_request(image: ImageInput, target_class: int, model: str | None, learning_rate: float,
                    max_iterations: int, magnify: float) -> pb.FoolingImageRequest:
    return pb.FoolingImageRequest(model=model_ref(model), image=image_pb(image), target_class=target_class,
                                  learning_rate=learning_rate, max_iterations=max_iterations, magnify=magnify)


def class_visualization_request(target_class: int, model: str | None, num_iterations: int, learning_rate: float,
                                l2_reg: float | None, blur_every: int | None, max_jitter: int | None,
                                show_every: int, seed: int | None, size: int) -> pb.ClassVisualizationRequest:
    return pb.ClassVisualizationRequest(
        model=model_ref(model), target_class=target_class, num_iterations=num_iterations,
        learning_rate=learning_rate, l2_reg=l2_reg, blur_every=blur_every, max_jitter=max_jitter,
        show_every=show_every, seed=seed, size=size)


def _final(messages, on_progress):
    result = None
    for message in messages:
        if message.HasField("result"):
            result = message
        elif on_progress is not None:
            on_progress(message.progress)
    if result is None:
        raise Internal(grpc.StatusCode.INTERNAL, "the stream ended without a result")
    return result


# ---------------------------------------------------------------------- clients
class VisualizationClient(ServiceClient):
    """Synchronous client; every method raises ``pixelrpc.clients.errors.RpcError`` subclasses."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self.stub = pb_grpc.VisualizationServiceStub(self.channel)

    def classify(self, images: ImageInput | Sequence[ImageInput], *, model: str | None = None, top_k: int = 0,
                 timeout: float | None = None, request_id: str | None = None) -> pb.ClassifyResponse:
        return self.unary(self.stub.Classify, classify_request(images, model, top_k), timeout=timeout,
                          request_id=request_id)

    def saliency(self, image: ImageInput, *, target_class: int | None = None, method: str = "vanilla",
                 model: str | None = None, noise_level: float | None = None, samples: int = 0,
                 seed: int | None = None, steps: int = 0, baseline: str = "black", render_images: bool = False,
                 timeout: float | None = None, request_id: str | None = None) -> pb.SaliencyResponse:
        """A saliency map (``.saliency``, a tensor); ``target_class`` None explains the predicted class.

        ``render_images`` True also asks for the heatmap, overlay and input PNGs (the server renders
        them only then; ``pixelrpc.models.visualization.saliency_heatmap`` draws the heatmap from the tensor).
        """
        request = saliency_request(image, target_class, method, model, noise_level, samples, seed, steps, baseline,
                                   render_images)
        return self.unary(self.stub.Saliency, request, timeout=timeout, request_id=request_id)

    def fooling_image_stream(self, image: ImageInput, target_class: int, *, model: str | None = None,
                             learning_rate: float = 0.0, max_iterations: int = 0, magnify: float = 0.0,
                             timeout: float | None = None,
                             request_id: str | None = None) -> Iterator[pb.FoolingImageResponse]:
        request = fooling_request(image, target_class, model, learning_rate, max_iterations, magnify)
        return self.stream(self.stub.FoolingImage, request, timeout=timeout, request_id=request_id)

    def fooling_image(self, image: ImageInput, target_class: int, *, on_progress: Callable | None = None,
                      **kw) -> pb.FoolingImageResponse:
        """The final response (``.result`` set); ``on_progress`` sees every FoolingImageProgress."""
        return _final(self.fooling_image_stream(image, target_class, **kw), on_progress)

    def class_visualization_stream(self, target_class: int, *, model: str | None = None, num_iterations: int = 0,
                                   learning_rate: float = 0.0, l2_reg: float | None = None,
                                   blur_every: int | None = None, max_jitter: int | None = None,
                                   show_every: int = 0, seed: int | None = None, size: int = 0,
                                   timeout: float | None = None,
                                   request_id: str | None = None) -> Iterator[pb.ClassVisualizationResponse]:
        request = class_visualization_request(target_class, model, num_iterations, learning_rate, l2_reg,
                                              blur_every, max_jitter, show_every, seed, size)
        return self.stream(self.stub.ClassVisualization, request, timeout=timeout, request_id=request_id)

    def class_visualization(self, target_class: int, *, on_progress: Callable | None = None,
                            **kw) -> pb.ClassVisualizationResponse:
        """The final response (``.result`` set); ``on_progress`` sees every ClassVisualizationProgress."""
        return _final(self.class_visualization_stream(target_class, **kw), on_progress)


class AsyncVisualizationClient(AsyncServiceClient):
    """The asyncio flavour of VisualizationClient."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self.stub = pb_grpc.VisualizationServiceStub(self.channel)

    async def classify(self, images: ImageInput | Sequence[ImageInput], *, model: str | None = None, top_k: int = 0, timeout: float | None = None,
                       request_id: str | None = None) -> pb.ClassifyResponse:
        return await self.unary(self.stub.Classify, classify_request(images, model, top_k), timeout=timeout,
                                request_id=request_id)

    async def saliency(self, image: ImageInput, *, target_class: int | None = None, method: str = "vanilla",
                       model: str | None = None, noise_level: float | None = None, samples: int = 0,
                       seed: int | None = None, steps: int = 0, baseline: str = "black", render_images: bool = False,
                       timeout: float | None = None, request_id: str | None = None) -> pb.SaliencyResponse:
        request = saliency_request(image, target_class, method, model, noise_level, samples, seed, steps, baseline,
                                   render_images)
        return await self.unary(self.stub.Saliency, request, timeout=timeout, request_id=request_id)

    def fooling_image_stream(self, image: ImageInput, target_class: int, *, model: str | None = None,
                             learning_rate: float = 0.0, max_iterations: int = 0, magnify: float = 0.0,
                             timeout: float | None = None,
                             request_id: str | None = None) -> AsyncIterator[pb.FoolingImageResponse]:
        request = fooling_request(image, target_class, model, learning_rate, max_iterations, magnify)
        return self.stream(self.stub.FoolingImage, request, timeout=timeout, request_id=request_id)

    async def fooling_image(self, image: ImageInput, target_class: int, *, on_progress: Callable | None = None,
                            **kw) -> pb.FoolingImageResponse:
        return await _final_async(self.fooling_image_stream(image, target_class, **kw), on_progress)

    def class_visualization_stream(self, target_class: int, *, model: str | None = None, num_iterations: int = 0,
                                   learning_rate: float = 0.0, l2_reg: float | None = None,
                                   blur_every: int | None = None, max_jitter: int | None = None,
                                   show_every: int = 0, seed: int | None = None, size: int = 0,
                                   timeout: float | None = None,
                                   request_id: str | None = None) -> AsyncIterator[pb.ClassVisualizationResponse]:
        request = class_visualization_request(target_class, model, num_iterations, learning_rate, l2_reg,
                                              blur_every, max_jitter, show_every, seed, size)
        return self.stream(self.stub.ClassVisualization, request, timeout=timeout, request_id=request_id)

    async def class_visualization(self, target_class: int, *, on_progress: Callable | None = None,
                                  **kw) -> pb.ClassVisualizationResponse:
        return await _final_async(self.class_visualization_stream(target_class, **kw), on_progress)


async def _final_async(messages, on_progress):
    result = None
    async for message in messages:
        if message.HasField("result"):
            result = message
        elif on_progress is not None:
            on_progress(message.progress)
    if result is None:
        raise Internal(grpc.StatusCode.INTERNAL, "the stream ended without a result")
    return result
