"""Flow control of streams (issue 10, points 2 and 3), over real gRPC.

- Streaming jobs whose clients stop reading give their job slots back: stalled Stylize,
  FoolingImage and ClassVisualization streams (more of them than slots) do not delay a short job by
  more than about one step, and they finish once their clients read again.
- A stream whose client reads nothing for ``stream_stall_seconds`` is ended with ABORTED; its slot
  is freed.
- CaptionStream with many image items answers every item under a tiny queue; many concurrent unary
  Caption clients wait in the default queue instead of being refused.

A "stalled" client is a channel with a 1 KiB HTTP/2 receive window (``grpc.http2.lookahead_bytes``,
BDP probing off) that never reads: gRPC stops accepting the server's messages after a few of them,
as it does after about 4 MiB with a default client. Timing checks compare with step times measured
here, never with absolute durations.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from pixelrpc.clients.captioning import CaptioningClient, CaptionOutput
from pixelrpc.models import zoo
from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN, save_to_registry
from pixelrpc.models.registry import Registry
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server
from pixelrpc.v1 import common_pb2
from pixelrpc.v1 import style_transfer_pb2 as spb
from pixelrpc.v1 import style_transfer_pb2_grpc as spb_grpc
from pixelrpc.v1 import visualization_pb2 as vpb
from pixelrpc.v1 import visualization_pb2_grpc as vpb_grpc

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.5, max_image_side=64, max_concurrency=2,
                queue_depth=4, worker_threads=2)
STALLED_CLIENT = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
WORDS = ["<NULL>", "<START>", "<END>", "a", "cat", "dog", "on", "mat", "the", "sat", "red", "ball"]


def png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A 5-class SqueezeNet (classification, style features), a trunk and an image captioner on it."""
    reg = Registry(tmp_path_factory.mktemp("registry"))
    torch.manual_seed(0)
    zoo.publish_squeezenet(reg, "squeezenet1_1", zoo.build_squeezenet(5).eval(),
                           class_names=["ant", "bee", "cat", "dog", "eel"], input_size=32)
    trunk = zoo.publish_squeezenet(reg, "trunk", zoo.build_squeezenet_features().eval(), class_names=[],
                                   tasks=("feature-extraction",), input_size=32)
    captioner = CaptioningRNN({w: i for i, w in enumerate(WORDS)}, input_dim=512, wordvec_dim=8, hidden_dim=16,
                              cell_type="lstm", seed=1)
    save_to_registry(captioner, reg, "shapes-captioner", encoder=trunk)
    return reg


def wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


def stylize_request(iterations: int, preview_every: int = 0) -> spb.StylizeRequest:
    job = spb.StyleJob(content=common_pb2.Image(data=png(32, 32, 0)),
                       styles=[spb.StyleImage(image=common_pb2.Image(data=png(32, 32, 1)))],
                       parameters=spb.StyleParameters(image_size=32, style_size=32, iterations=iterations), seed=1)
    return spb.StylizeRequest(job=job, preview_every=preview_every)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- stalled clients


def test_stalled_streams_give_their_slots_to_a_short_job_and_finish_when_read(registry):
    with running_server(["style", "visualization"], BASE.replace(max_iterations=1000),
                        registry=registry) as srv, \
            grpc.insecure_channel(srv.address) as channel, \
            grpc.insecure_channel(srv.address, options=STALLED_CLIENT) as slow_channel:
        style, vis = spb_grpc.StyleTransferServiceStub(channel), vpb_grpc.VisualizationServiceStub(channel)
        slow_style = spb_grpc.StyleTransferServiceStub(slow_channel)
        slow_vis = vpb_grpc.VisualizationServiceStub(slow_channel)
        image = common_pb2.Image(data=png(32, 32, 2))

        queued = {}  # the short jobs' wait for a job slot (ResponseMeta.queue_ms), in seconds

        def short_style():
            last = list(style.Stylize(stylize_request(2), timeout=60))[-1]
            queued["style"] = last.result.meta.queue_ms / 1000

        def short_vis():
            queued["vis"] = vis.Classify(vpb.ClassifyRequest(images=[image]), timeout=60).meta.queue_ms / 1000

        # Alone: the short jobs' time, and a step's time from a longer job of each kind.
        short_style(), short_vis()  # warm up (model load)
        alone_style, alone_vis = min(timed(short_style) for _ in range(3)), min(timed(short_vis) for _ in range(3))
        step = max(timed(lambda: list(style.Stylize(stylize_request(12), timeout=60))) / 12,
                   timed(lambda: list(vis.FoolingImage(vpb.FoolingImageRequest(
                       image=image, target_class=1, learning_rate=1e-6, max_iterations=12), timeout=60))) / 12)

        # More stalled streams than slots, per service; they compute until the client's window is full.
        stalled = [slow_style.Stylize(stylize_request(40, preview_every=1), timeout=120) for _ in range(3)]
        stalled += [slow_vis.FoolingImage(vpb.FoolingImageRequest(image=image, target_class=1, learning_rate=1e-6,
                                                                  max_iterations=400), timeout=120)
                    for _ in range(2)]
        stalled.append(slow_vis.ClassVisualization(vpb.ClassVisualizationRequest(
            target_class=2, num_iterations=40, show_every=1, size=32, seed=3), timeout=120))
        jobs = {name: srv.contexts[name].jobs for name in ("style", "visualization")}
        wait_for(lambda: all(j.parked == 3 and j.running == 0 for j in jobs.values()))

        # The short jobs now run at once: nothing holds the slots. They wait for a slot less than one
        # step (in fact not at all), and take about as long as alone (generous margin for a busy machine).
        with_style, with_vis = timed(short_style), timed(short_vis)
        assert queued["style"] < step and queued["vis"] < step, (queued, step)
        assert with_style < alone_style + 3 * step + 0.5, (with_style, alone_style, step)
        assert with_vis < alone_vis + 3 * step + 0.5, (with_vis, alone_vis, step)

        # A parked stream whose client cancels is closed at once; the others, read again, take a slot
        # again and run to their results.
        stalled.pop(0).cancel()
        wait_for(lambda: jobs["style"].parked == 2)
        for call in stalled:
            assert list(call)[-1].HasField("result")
        assert all(j.parked == 0 and j.running == 0 for j in jobs.values())


def test_a_stream_whose_client_reads_nothing_is_aborted_and_its_slot_freed(registry, caplog):
    settings = BASE.replace(max_concurrency=1, stream_stall_seconds=1.0)
    with running_server(["style"], settings, registry=registry) as srv, \
            grpc.insecure_channel(srv.address, options=STALLED_CLIENT) as slow_channel, \
            grpc.insecure_channel(srv.address) as channel, caplog.at_level(logging.INFO, "pixelrpc.access"):
        jobs = srv.ctx.jobs
        call = spb_grpc.StyleTransferServiceStub(slow_channel).Stylize(stylize_request(200, preview_every=1),
                                                                       timeout=60)
        wait_for(lambda: jobs.parked == 1)
        started = time.monotonic()
        wait_for(lambda: jobs.parked == 0 and jobs.running == 0)  # ended by the server, slot freed
        assert time.monotonic() - started < 10
        # The slot serves others; the stalled client, reading at last, gets what was buffered, then ABORTED.
        stub = spb_grpc.StyleTransferServiceStub(channel)
        assert list(stub.Stylize(stylize_request(2), timeout=60))[-1].HasField("result")
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "stream stalled" in err.value.details() and "PIXELRPC_STREAM_STALL_SECONDS" in err.value.details()
        wait_for(lambda: any(getattr(r, "access", {}).get("code") == "ABORTED" for r in caplog.records), 5)


# ----------------------------------------------------------------------------- captioning


def test_caption_stream_answers_every_image_item_under_a_tiny_queue(registry):
    settings = BASE.replace(max_concurrency=1, queue_depth=2)
    images = [png(40, 30, seed) for seed in range(60)]
    features = [np.random.default_rng(i).standard_normal(512).astype(np.float32) for i in range(20)]
    inputs = images[:30] + features + images[30:]
    with running_server(["captioning"], settings, registry=registry) as srv, \
            CaptioningClient(srv.address, timeout=120) as client:
        # Two streams at once, beside unary calls that fill the queue's two places.
        with ThreadPoolExecutor(4) as pool:
            other = pool.submit(lambda: list(client.caption_many(images[:40], window=8)))
            answers = list(client.caption_many(inputs))
            assert all(isinstance(o, CaptionOutput) for _, o in other.result())
        assert sorted(i for i, _ in answers) == list(range(len(inputs)))
        assert all(isinstance(o, CaptionOutput) and o.text for _, o in answers), \
            [o for _, o in answers if not isinstance(o, CaptionOutput)][:3]
        assert srv.ctx.jobs.running == 0


def test_concurrent_unary_caption_clients_wait_in_the_default_queue(registry):
    clients = 40  # more than max_concurrency + the old queue_depth of 16
    images = [png(40, 30, seed) for seed in range(clients)]
    barrier = threading.Barrier(clients)
    with running_server(["captioning"], Settings(shutdown_delay=0.0), registry=registry) as srv, \
            CaptioningClient(srv.address, timeout=120) as client:
        client.caption(images[0])  # load the models

        def one(i: int):
            barrier.wait()
            return [client.caption(images[i]) for _ in range(2)]

        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(clients)))
        assert all(isinstance(out, CaptionOutput) for outs in results for out in outs)


def test_caption_stream_items_wait_for_the_pixel_budget_instead_of_failing(registry):
    """A stream's items each fit the server-wide decoded-pixel budget but not all at once: they wait
    for room (the stream was admitted) rather than failing one by one with RESOURCE_EXHAUSTED."""
    images = [png(40, 30, seed) for seed in range(24)]
    settings = BASE.replace(max_pixels_in_flight=2 * 40 * 30 + 100)  # two RGB PNGs of 40x30 at a time
    with running_server(["captioning"], settings, registry=registry) as srv, \
            CaptioningClient(srv.address, timeout=120) as client:
        answers = list(client.caption_many(images, window=16))
        assert sorted(i for i, _ in answers) == list(range(len(images)))
        assert all(isinstance(o, CaptionOutput) for _, o in answers), \
            [o for _, o in answers if not isinstance(o, CaptionOutput)][:3]
        assert srv.ctx.pixels.used == 0
