"""StyleTransferService over real gRPC: streaming, unary, limits, errors, cancellation, queueing, CLI.

The feature network is a randomly initialised SqueezeNet 1.1 trunk published in a temporary
registry under the service's default name, so these tests need no shared data.
"""

from __future__ import annotations

import gc
import io
import time
import warnings

import grpc
import numpy as np
import pytest
import torch
from conftest import torch_threads
from PIL import Image

from pixelrpc.clients.errors import RpcError
from pixelrpc.clients.style import StyleOutput, StyleStep
from pixelrpc.services.settings import Settings
from pixelrpc.services.style import DEFAULT_MODELS

DEFAULT_MODEL = DEFAULT_MODELS[0]

TINY = dict(image_size=32, style_size=32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pixelrpc.models import zoo
    from pixelrpc.models.registry import Registry
    from pixelrpc.services.testing import running_server

    registry = Registry(tmp_path_factory.mktemp("registry"))
    torch.manual_seed(0)
    zoo.publish_squeezenet(registry, DEFAULT_MODEL, zoo.build_squeezenet_features().eval(), class_names=[],
                           tasks=("feature-extraction",), mean=zoo.CAFFE_MEAN_PIXEL, std=zoo.CAFFE_STD,
                           value_scale=255.0, metadata={"source": "test"})
    settings = Settings(max_image_side=256, max_iterations=400, max_concurrency=1, queue_depth=0,
                        worker_threads=2)
    with torch_threads(1), running_server(["style"], settings, registry=registry) as handle:
        yield handle


@pytest.fixture
def client(server):
    from pixelrpc.clients.style import StyleClient

    with StyleClient(server.address, timeout=60) as c:
        yield c


def _png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)).resize((w, h))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


CONTENT, STYLE, STYLE2 = _png(48, 40, 0), _png(40, 40, 1), _png(36, 52, 2)


def _wait_idle(server, seconds: float = 10.0) -> float:
    start = time.monotonic()
    while server.ctx.jobs.running and time.monotonic() - start < seconds:
        time.sleep(0.01)
    return time.monotonic() - start


def test_stream_reports_progress_in_order_with_previews_then_the_result(client):
    events = list(client.stylize(CONTENT, [STYLE, STYLE2], style_weights=[3, 1], preview_every=3, iterations=7,
                                 seed=5, **TINY))
    steps, result = events[:-1], events[-1]
    assert all(isinstance(e, StyleStep) for e in steps) and isinstance(result, StyleOutput)
    assert [s.iteration for s in steps] == list(range(1, 8))
    assert [s.iteration for s in steps if s.preview_png] == [3, 6]
    assert steps[2].preview.size == (38, 32)
    assert all(a.elapsed_ms <= b.elapsed_ms for a, b in zip(steps, steps[1:], strict=False))
    image = result.image
    assert image.format == "PNG" and image.size == (result.width, result.height) == (38, 32)
    assert result.meta.model_name == DEFAULT_MODEL and len(result.meta.model_sha256) == 64
    assert "preferred default for feature-extraction (choice 1" in result.meta.model_choice
    assert result.meta.seed == 5 and result.meta.request_id
    assert result.parameters.iterations == 7 and list(result.parameters.style_layers) == [1, 4, 6, 7]
    assert result.losses.total == pytest.approx(result.losses.content + result.losses.style + result.losses.tv)


def test_unary_gives_the_streamed_result_for_the_same_seed(client):
    job = dict(iterations=4, seed=9, init="random", preset="the_scream", **TINY)
    unary = client.stylize_unary(CONTENT, [STYLE], **job)
    streamed = [e for e in client.stylize(CONTENT, [STYLE], **job) if isinstance(e, StyleOutput)][0]
    assert unary.png == streamed.png
    assert unary.meta.seed == 9
    assert unary.parameters.content_weight == pytest.approx(3e-2)  # the preset's, echoed back


def test_server_picks_and_reports_a_seed(client):
    a = client.stylize_unary(CONTENT, [STYLE], iterations=1, **TINY)
    b = client.stylize_unary(CONTENT, [STYLE], iterations=1, **TINY)
    assert a.meta.seed != b.meta.seed


def test_presets_are_listed(client):
    presets = client.presets()
    assert sorted(presets) == ["composition_vii", "starry_night", "the_scream"]
    assert list(presets["composition_vii"].style_weights) == [20000, 500, 12, 1]
    assert presets["composition_vii"].style_size == 512


@pytest.mark.parametrize("job, field, words", [
    (dict(preset="mona_lisa"), "preset", "known presets"),
    (dict(content_layer=13), "content_layer", "layers 0..12"),
    (dict(style_layers=[1, 4], layer_weights=[1.0]), "job.parameters.style_weights", "together"),
    (dict(iterations=401), "job.parameters.iterations", "max_iterations=400"),
    (dict(image_size=300), "job.parameters.image_size", "max_image_side=256"),
    (dict(content_weight=-1.0), "content_weight", ">= 0"),
    (dict(style_weights=[0.0, 0.0]), "style_blend", "must not all be 0"),
])
def test_bad_parameters_are_invalid_argument(client, job, field, words):
    args = dict(TINY, iterations=2)
    args.update(job)
    with pytest.raises(RpcError) as info:
        client.stylize_unary(CONTENT, [STYLE, STYLE2], **args)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details
    assert any(field in f for f, _ in info.value.violations)


def test_huge_or_elongated_images_name_the_limit(client):
    with pytest.raises(RpcError) as info:  # the result would be 400 x 64
        client.stylize_unary(_png(250, 40, 3), [STYLE], iterations=1, image_size=64)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_image_side=256" in info.value.details
    assert ("job.parameters.image_size", ) == tuple(f for f, _ in info.value.violations)
    with pytest.raises(RpcError) as info:  # the style image, resized, would be 400 x 64
        client.stylize_unary(CONTENT, [_png(250, 40, 3)], iterations=1, image_size=32, style_size=64)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_image_side=256" in info.value.details
    assert ("job.parameters.style_size", ) == tuple(f for f, _ in info.value.violations)
    with pytest.raises(RpcError) as info:
        client.stylize_unary(b"not an image", [STYLE], iterations=1, **TINY)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # an image larger than the limit is fine when the job computes on a small version of it
    assert client.stylize_unary(_png(400, 300, 4), [_png(300, 400, 5)], iterations=1, **TINY).width == 43


def test_unknown_model_is_not_found(client):
    with pytest.raises(RpcError) as info:
        client.stylize_unary(CONTENT, [STYLE], model="no-such-model", iterations=1, **TINY)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in info.value.details


def _alive_objectives(seconds: float = 10.0) -> int:
    """How many StyleObjective (a job's targets and tensors) are still alive, waiting up to ``seconds``
    for a worker thread to finish the step it was in when the call ended."""
    from pixelrpc.models.style import StyleObjective

    deadline = time.monotonic() + seconds
    while True:
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # isinstance() on lazy torch modules may warn
            alive = sum(type(o) is StyleObjective for o in gc.get_objects())
        if alive == 0 or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_cancel_stops_the_job_and_frees_it(server, client):
    stream = client.stylize(CONTENT, [STYLE], iterations=400, image_size=96, style_size=96)
    first = next(stream)
    assert isinstance(first, StyleStep) and first.iteration == 1
    next(stream)
    stream.close()  # cancels the call
    waited = _wait_idle(server)
    assert server.ctx.jobs.running == 0 and waited < 5.0
    assert _alive_objectives() == 0


def test_deadline_stops_the_job(server, client):
    with pytest.raises(RpcError) as info:
        list(client.stylize(CONTENT, [STYLE], iterations=400, image_size=96, style_size=96, timeout=1.0))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_idle(server) < 5.0 and server.ctx.jobs.running == 0
    assert _alive_objectives() == 0


def test_a_busy_server_refuses_beyond_its_queue(server, client):
    """max_concurrency=1 and queue_depth=0: while one job runs, another gets RESOURCE_EXHAUSTED."""
    from pixelrpc.clients.style import StyleClient

    stream = client.stylize(CONTENT, [STYLE], iterations=400, image_size=96, style_size=96)
    next(stream)
    try:
        with StyleClient(server.address, timeout=30) as other:
            with pytest.raises(RpcError) as info:
                other.stylize_unary(CONTENT, [STYLE], iterations=1, **TINY)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue_depth=0" in info.value.details
    finally:
        stream.close()
    _wait_idle(server)
    assert client.stylize_unary(CONTENT, [STYLE], iterations=1, **TINY).width == 38


def test_cli_style_writes_the_result_and_previews(server, tmp_path):
    from pixelrpc.cli import main

    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes(CONTENT)
    style.write_bytes(STYLE)
    out, previews = tmp_path / "out" / "result.png", tmp_path / "previews"
    code = main(["style", str(content), str(style), str(style), "--style-weights", "1,2", "--size", "32",
                 "--style-size", "32", "--iterations", "4", "--previews", str(previews), "--preview-every", "2",
                 "--seed", "3", "-o", str(out), "--addr", server.address])
    assert code == 0
    assert Image.open(out).size == (38, 32)
    assert sorted(p.name for p in previews.iterdir()) == ["preview_00002.png", "preview_00004.png"]
    code = main(["style", str(content), str(style), "--unary", "--preset", "the_scream", "--size", "32",
                 "--iterations", "2", "-o", str(tmp_path / "unary.png"), "--addr", server.address, "--json"])
    assert code == 0 and (tmp_path / "unary.png").is_file()


def test_cli_reports_errors_in_one_line(server, tmp_path, capsys):
    from pixelrpc.cli import main

    content = tmp_path / "content.png"
    content.write_bytes(CONTENT)
    code = main(["style", str(content), str(content), "--iterations", "401", "-o", str(tmp_path / "x.png"),
                 "--addr", server.address])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: INVALID_ARGUMENT") and "max_iterations=400" in err[-1]
