"""VisualizationService through real gRPC channels: every RPC, validation, errors and cancellation.

The served model is a randomly initialised 5-class SqueezeNet 1.1 with a 32-pixel input, published
under the service's default name; no weights are downloaded.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pixelrpc.clients.errors import DeadlineExceeded, InvalidArgument, NotFound
from pixelrpc.clients.visualization import VisualizationClient, to_numpy, to_pil
from pixelrpc.models import visualization as vis
from pixelrpc.models import zoo
from pixelrpc.models.registry import ModelCache
from pixelrpc.models.visualization import jobs
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server
from pixelrpc.v1 import visualization_pb2 as pb

FAST = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.2, max_iterations=1000, max_image_side=64)
NAMES = ["ant", "bee", "cat", "dog", "eel"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from pixelrpc.models.registry import Registry

    reg = Registry(tmp_path_factory.mktemp("registry"))
    torch.manual_seed(0)
    zoo.publish_squeezenet(reg, "squeezenet1_1", zoo.build_squeezenet(5).eval(), class_names=NAMES, input_size=32)
    zoo.publish_squeezenet(reg, "trunk", zoo.build_squeezenet_features(), class_names=[],
                           tasks=("feature-extraction",), input_size=32)
    return reg


@pytest.fixture(scope="module")
def server(registry):
    with running_server(["visualization"], FAST, registry=registry) as srv:
        yield srv


@pytest.fixture
def client(server):
    with VisualizationClient(server.address, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def model(registry) -> zoo.ImageModel:
    """The same model, loaded in the test process, for comparing with the domain functions."""
    return ModelCache(registry).get("squeezenet1_1").model


def encoded(w: int, h: int, fmt: str = "PNG", seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# ---------------------------------------------------------------------------- Classify
def test_classify_images_of_any_size_and_format(client, model):
    images = [encoded(50, 40), encoded(64, 64, "JPEG", seed=1), encoded(33, 70, "WEBP", seed=2, mode="L")]
    response = client.classify(images, top_k=3)
    assert response.input_size == 32 and len(response.results) == 3
    assert response.meta.model_name == "squeezenet1_1" and response.meta.model_sha256
    expected = vis.classify(model.preprocess([_decoded(b) for b in images]), model, top_k=3)
    for got, want in zip(response.results, expected, strict=True):
        assert [p.class_index for p in got.predictions] == [p.class_index for p in want]
        assert [p.label for p in got.predictions] == [NAMES[p.class_index] for p in want]
        assert np.allclose([p.probability for p in got.predictions], [p.probability for p in want], atol=1e-6)
    assert len(client.classify(images[0], top_k=50).results[0].predictions) == 5


# ---------------------------------------------------------------------------- Saliency
def test_saliency_vanilla_matches_the_domain_function(client, model):
    image = encoded(48, 40, seed=3)
    response = client.saliency(image, target_class=2)
    x = model.preprocess([_decoded(image)])
    expected = vis.compute_saliency_maps(x, [2], model)[0].numpy()
    got = to_numpy(response.saliency)
    assert got.dtype == np.float32 and got.shape == (32, 32)
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-9)
    assert response.target_class == 2 and response.target_label == "cat" and response.input_size == 32
    assert response.method == pb.SALIENCY_METHOD_VANILLA
    # The map only by default; the three pictures when asked for, rendered from the same map.
    assert not (response.HasField("heatmap") or response.HasField("overlay") or response.HasField("input"))
    pictures = client.saliency(image, target_class=2, render_images=True)
    assert np.array_equal(to_numpy(pictures.saliency), got)
    for picture in (pictures.heatmap, pictures.overlay, pictures.input):
        assert to_pil(picture).size == (32, 32)
    assert np.array_equal(np.asarray(to_pil(pictures.heatmap)), np.asarray(vis.saliency_heatmap(got)))
    with torch.no_grad():
        assert response.predicted_class == int(model(x).argmax(1))


def test_saliency_predicted_class_smoothgrad_and_integrated_gradients(client, model):
    image = encoded(32, 32, seed=4)
    auto = client.saliency(image)
    assert auto.target_class == auto.predicted_class
    smooth = client.saliency(image, target_class=1, method="smoothgrad", samples=3, noise_level=0.1, seed=9)
    again = client.saliency(image, target_class=1, method="smoothgrad", samples=3, noise_level=0.1, seed=9)
    assert smooth.meta.seed == 9 and smooth.method == pb.SALIENCY_METHOD_SMOOTHGRAD
    assert np.array_equal(to_numpy(smooth.saliency), to_numpy(again.saliency))
    unseeded = client.saliency(image, target_class=1, method="smoothgrad", samples=2)
    replay = client.saliency(image, target_class=1, method="smoothgrad", samples=2, seed=unseeded.meta.seed)
    assert np.array_equal(to_numpy(unseeded.saliency), to_numpy(replay.saliency))
    ig = client.saliency(image, target_class=1, method="integrated_gradients", steps=8, baseline="mean")
    x = model.preprocess([_decoded(image)])
    expected = vis.integrated_gradients(x, [1], model, steps=8, baseline="zero")
    assert np.allclose(to_numpy(ig.saliency), expected.maps[0].numpy(), rtol=1e-4, atol=1e-8)
    assert ig.completeness_gap == pytest.approx(float(expected.completeness_gap[0]), abs=1e-5)


# ---------------------------------------------------------------------------- FoolingImage
def test_fooling_image_streams_progress_then_result(client, model):
    image = encoded(40, 40, seed=5)
    with torch.no_grad():
        predicted = int(model(model.preprocess([_decoded(image)])).argmax(1))
    target = (predicted + 1) % 5
    messages = list(client.fooling_image_stream(image, target, max_iterations=15, learning_rate=2.0))
    progress, last = messages[:-1], messages[-1]
    assert all(m.HasField("progress") and m.meta.request_id for m in progress)
    assert last.HasField("result") and last.meta.model_name == "squeezenet1_1"
    r = last.result
    assert [m.progress.iteration for m in progress] == list(range(1, r.iterations + 1))
    assert r.original_class == predicted and r.original_label == NAMES[predicted]
    assert r.succeeded == (r.predicted_class == target)
    assert r.iterations == 15 or r.succeeded
    assert to_pil(r.image).size == (32, 32) and to_pil(r.comparison).size == (96, 32 + 14)
    tensor = to_numpy(r.normalized_image)
    assert tensor.shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert int(model(torch.from_numpy(tensor)).argmax(1)) == r.predicted_class
        png = model.preprocess([to_pil(r.image)])
        assert r.png_succeeded == (int(model(png).argmax(1)) == target)
    assert r.l2 >= r.linf >= 0 and r.relative_l2 >= 0


# ---------------------------------------------------------------------------- ClassVisualization
def test_class_visualization_streams_previews_and_is_seeded(client):
    kwargs = dict(num_iterations=6, show_every=3, seed=5, learning_rate=5.0, max_jitter=2)
    messages = list(client.class_visualization_stream(3, **kwargs))
    progress, last = messages[:-1], messages[-1]
    assert [m.progress.iteration for m in progress] == [1, 2, 3, 4, 5, 6]
    assert [m.progress.iteration for m in progress if m.progress.HasField("preview")] == [1, 3, 6]
    assert all(m.meta.seed == 5 for m in messages)
    r = last.result
    assert r.target_class == 3 and r.target_label == "dog" and r.iterations == 6 and r.size == 32
    assert to_pil(r.image).size == (32, 32)
    again = client.class_visualization(3, **kwargs)
    assert again.result.image.data == r.image.data
    bigger = client.class_visualization(0, num_iterations=1, size=48)
    assert to_pil(bigger.result.image).size == (48, 48) and bigger.result.size == 48


# ---------------------------------------------------------------------------- errors
def test_bad_class_indices_are_invalid_argument(client):
    image = encoded(32, 32)
    for call in (lambda: client.saliency(image, target_class=5),
                 lambda: client.fooling_image(image, 7),
                 lambda: client.class_visualization(99, num_iterations=1)):
        with pytest.raises(InvalidArgument) as err:
            call()
        assert "out of range" in err.value.details and "5 classes" in err.value.details
        assert err.value.violations[0][0] == "target_class"


def test_corrupt_image_unknown_model_and_wrong_task(client):
    with pytest.raises(InvalidArgument) as err:
        client.saliency(b"\x89PNG\r\n\x1a\n not really", target_class=0)
    assert err.value.violations[0][0] == "image"
    with pytest.raises(InvalidArgument) as err:
        client.classify([encoded(8, 8), b"garbage"])
    assert err.value.violations[0][0] == "images[1]"
    with pytest.raises(NotFound, match="no-such-model"):
        client.classify([encoded(8, 8)], model="no-such-model")
    with pytest.raises(InvalidArgument, match="does not serve task 'classification'"):
        client.fooling_image(encoded(8, 8), 0, model="trunk")


def test_limits_are_enforced(client):
    with pytest.raises(InvalidArgument, match="max_iterations") as err:
        client.class_visualization(0, num_iterations=1001)
    assert err.value.violations[0][0] == "num_iterations"
    with pytest.raises(InvalidArgument, match="max_image_side"):
        client.class_visualization(0, num_iterations=1, size=65)
    with pytest.raises(InvalidArgument, match="max_iterations"):
        client.fooling_image(encoded(8, 8), 0, max_iterations=5000)
    with pytest.raises(InvalidArgument, match="smoothgrad.samples"):
        client.saliency(encoded(8, 8), target_class=0, method="smoothgrad", samples=2000)


# ---------------------------------------------------------------------------- cancellation
class _CountingSteps:
    """Wraps class_visualization_steps to count the steps the server actually runs."""

    def __init__(self, inner):
        self.inner = inner
        self.steps = 0
        self.closed = False

    def __call__(self, *args, **kwargs):
        try:
            for item in self.inner(*args, **kwargs):
                self.steps += 1
                yield item
        finally:
            self.closed = True


def test_cancel_mid_stream_stops_the_loop(client, server, monkeypatch):
    counter = _CountingSteps(vis.class_visualization_steps)
    monkeypatch.setattr(jobs, "class_visualization_steps", counter)
    stream = client.class_visualization_stream(1, num_iterations=1000, show_every=1000)
    assert next(stream).progress.iteration == 1
    assert next(stream).progress.iteration == 2
    stream.close()  # cancels the RPC
    deadline = time.monotonic() + 5
    while not counter.closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert counter.closed, "the server kept the generator open after the cancel"
    ran = counter.steps
    time.sleep(0.3)
    assert counter.steps == ran < 1000
    assert server.ctx.jobs.running == 0


def test_deadline_stops_the_loop(client, server, monkeypatch):
    counter = _CountingSteps(vis.class_visualization_steps)
    monkeypatch.setattr(jobs, "class_visualization_steps", counter)
    with pytest.raises(DeadlineExceeded):
        client.class_visualization(1, num_iterations=1000, show_every=1000, timeout=0.5)
    deadline = time.monotonic() + 5
    while not counter.closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert counter.closed and counter.steps < 1000
    assert server.ctx.jobs.running == 0
