"""CaptioningService over real gRPC: unary, server streaming, bidirectional streaming with dynamic
batching, errors, cancellation, SIGTERM drain, the unbatched path and the CLI.

Captioners are small random LSTMs published in a temporary registry; image input goes through a
randomly initialised torchvision SqueezeNet 1.1 trunk registered as the encoder.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import numpy as np
import pytest
from admission_images import noise_png
from click.testing import CliRunner
from conftest import torch_threads
from PIL import Image
from registry_helpers import publish_tiny_encoder
from slow_decoding import slow_steps_here, slow_steps_pythonpath

from pixelrpc.clients.captioning import CaptioningClient, CaptionOutput, TokenUpdate, build_job
from pixelrpc.clients.errors import RpcError
from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN, save_to_registry
from pixelrpc.models.captioning.decoding import DecodeOptions, decode
from pixelrpc.models.captioning.features import embed_images
from pixelrpc.services.captioning import BATCHERS_KEY, DEFAULT_MODELS
from pixelrpc.services.settings import Settings

DEFAULT_MODEL = DEFAULT_MODELS[0]

WORDS = ["<NULL>", "<START>", "<END>", "a", "cat", "dog", "on", "mat", "the", "sat", "red", "ball"]
VOCAB = {w: i for i, w in enumerate(WORDS)}
D = 16


def make_captioner(input_dim: int, seed: int, endless: bool = False) -> CaptioningRNN:
    model = CaptioningRNN(VOCAB, input_dim=input_dim, wordvec_dim=8, hidden_dim=16, cell_type="lstm", seed=seed)
    model.params["W_vocab"] = model.params["W_vocab"] * 3.0  # peaked, varied outputs
    model.params["b_vocab"][VOCAB["<END>"]] = -1e3 if endless else 0.8
    return model


def png_bytes(seed: int, size=(40, 30)) -> bytes:
    return noise_png(seed, size)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from pixelrpc.models import zoo

    registry, encoder = publish_tiny_encoder(tmp_path_factory)
    out = {
        "features": make_captioner(D, seed=1),
        "image": make_captioner(512, seed=2),
        "endless": make_captioner(D, seed=3, endless=True),
    }
    save_to_registry(out["features"], registry, DEFAULT_MODEL)
    save_to_registry(out["image"], registry, "img-captioner", encoder=encoder)
    save_to_registry(out["image"], registry, "orphan-captioner",
                     encoder={"name": "missing-encoder", "version": 1, "sha256": "0" * 64})
    save_to_registry(out["endless"], registry, "endless")
    save_to_registry(out["features"], registry, "limited", metadata={"serving": {"max_concurrency": 1, "timeout_s": 0.5}})
    out["registry"] = registry
    out["encoder"] = zoo.load_squeezenet(encoder, lambda f: registry.read_file(encoder, f), "cpu")
    return out


@pytest.fixture(scope="module")
def server(models):
    from pixelrpc.services.testing import running_server

    settings = Settings(max_batch_size=64, max_batch_delay_ms=30.0, max_concurrency=2, queue_depth=16,
                        worker_threads=2)
    with torch_threads(1), running_server(["captioning"], settings, registry=models["registry"]) as handle:
        yield handle


@pytest.fixture(scope="module")
def thread_server(models):
    """Decoding in a thread of the server process, where tests can slow the steps down
    (``slow_steps`` patches this process; the decoding process is a fresh interpreter)."""
    from pixelrpc.services.testing import running_server

    settings = Settings(max_batch_size=64, max_batch_delay_ms=30.0, max_concurrency=2, queue_depth=16,
                        worker_threads=2, caption_decode="thread")
    with torch_threads(1), running_server(["captioning"], settings, registry=models["registry"]) as handle:
        yield handle


@pytest.fixture
def client(server):
    with CaptioningClient(server.address, timeout=30) as c:
        yield c


def batcher_of(server, name: str):
    found = [b for key, b in server.ctx.state[BATCHERS_KEY].items() if key[0] == name]
    assert found, f"no batcher for {name}"
    return found[0]


def multi_request_steps(server, name: str) -> int:
    """Decoding steps so far that advanced more than one request of model ``name``."""
    batchers = [b for key, b in server.ctx.state.get(BATCHERS_KEY, {}).items() if key[0] == name]
    return sum(n for size, n in batchers[0].stats.batch_sizes.items() if size > 1) if batchers else 0


def assert_same(out: CaptionOutput, expected: list, words=WORDS):
    assert [c.token_ids for c in out.captions] == [c.tokens for c in expected]
    for got, want in zip(out.captions, expected, strict=True):
        assert np.max(np.abs(np.subtract([t.logprob for t in got.tokens], want.logprobs))) <= 1e-6
        assert got.text == want.text and got.finished == want.finished
        assert [t.word for t in got.tokens] == [words[t] for t in want.tokens]


# ----------------------------------------------------------------------------- unary


def test_unary_feature_input_matches_in_process_decoding(client, models):
    model = models["features"]
    rng = np.random.default_rng(0)
    for strategy, kw in [("greedy", {}), ("beam", {"beam_width": 4, "num_captions": 3, "length_penalty": 0.5}),
                         ("sample", {"seed": 7, "num_captions": 2, "temperature": 1.3})]:
        f = rng.standard_normal(D).astype(np.float32)
        out = client.caption(f, strategy=strategy, max_length=12, **kw)
        expected = decode(model, f, DecodeOptions(strategy=strategy, max_length=12, **kw))
        assert_same(out, expected)
        assert out.meta.model_name == DEFAULT_MODEL and out.meta.model_version == 1
        assert "preferred default for captioning" in out.meta.model_choice
        assert len(out.meta.model_sha256) == 64 and out.meta.request_id
        assert out.strategy == strategy and out.encoder == ""
    assert out.meta.seed == 7


def test_unset_seed_is_chosen_reported_and_reproducible(client):
    f = np.linspace(-1, 1, D).astype(np.float32)
    first = client.caption(f, strategy="sample", num_captions=3)
    assert first.meta.seed != 0
    again = client.caption(f, strategy="sample", num_captions=3, seed=first.meta.seed)
    assert [c.token_ids for c in again.captions] == [c.token_ids for c in first.captions]


def test_image_input_goes_through_the_pinned_encoder(client, models):
    data = png_bytes(1)
    out = client.caption(data, model="img-captioner", max_length=10)
    with Image.open(io.BytesIO(data)) as img:
        features = embed_images(models["encoder"], [img.convert("RGB")])[0]
    assert_same(out, decode(models["image"], features, DecodeOptions(max_length=10)))
    assert out.encoder == "tiny-encoder:1"


@pytest.mark.parametrize(("kwargs", "code", "needle"), [
    ({"value": np.zeros(D, np.float32), "model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "no-such-model"),
    ({"value": np.zeros(5, np.float32)}, grpc.StatusCode.INVALID_ARGUMENT, "dimension 5"),
    ({"value": b"\x89PNG not really", "model": "img-captioner"}, grpc.StatusCode.INVALID_ARGUMENT, "image"),
    ({"value": png_bytes(2)}, grpc.StatusCode.FAILED_PRECONDITION, "takes feature vectors"),
    ({"value": png_bytes(3), "model": "orphan-captioner"}, grpc.StatusCode.FAILED_PRECONDITION,
     "missing-encoder:1"),
    ({"value": np.zeros(D, np.float32), "strategy": "beam", "beam_width": 99}, grpc.StatusCode.INVALID_ARGUMENT,
     "beam_width"),
])
def test_errors_have_the_right_status(client, kwargs, code, needle):
    value = kwargs.pop("value")
    with pytest.raises(RpcError) as err:
        client.caption(value, **kwargs)
    assert err.value.code == code and needle in err.value.details
    if needle == "dimension 5":
        assert "16" in err.value.details  # both dimensions are named
    if needle == "beam_width":
        assert ("job.options.beam_width", err.value.violations[0][1]) in err.value.violations


# ----------------------------------------------------------------------------- server streaming


def test_stream_sends_tokens_before_the_caption(client, models):
    f = np.random.default_rng(4).standard_normal(D).astype(np.float32)
    events, stamps = [], []
    for event in client.stream_caption(f, strategy="sample", seed=11, num_captions=2, max_length=15):
        events.append(event)
        stamps.append(time.perf_counter())
    assert isinstance(events[-1], CaptionOutput) and all(isinstance(e, TokenUpdate) for e in events[:-1])
    assert len(events) > 2 and stamps[0] < stamps[-1]
    final = events[-1]
    for j, caption in enumerate(final.captions):
        streamed = [e for e in events[:-1] if e.caption_index == j]
        assert [e.token.id for e in streamed] == caption.token_ids
        assert [e.position for e in streamed] == list(range(len(caption.tokens)))
    assert_same(final, decode(models["features"], f, DecodeOptions(strategy="sample", seed=11, num_captions=2,
                                                                     max_length=15)))
    beam = list(client.stream_caption(f, strategy="beam", beam_width=3, num_captions=2))
    assert len(beam) == 1 and len(beam[0].captions) == 2  # beam search: only the final n-best


# ----------------------------------------------------------------------------- bidirectional


def test_caption_stream_answers_32_interleaved_requests_and_batches_them(client, models, server):
    multi_before = multi_request_steps(server, DEFAULT_MODEL)
    rng = np.random.default_rng(5)
    jobs, expected = [], {}
    for i in range(32):
        f = rng.standard_normal(D).astype(np.float32)
        kind = i % 8
        if kind == 3:
            jobs.append(build_job(np.zeros(7, np.float32)))  # wrong dimension
            expected[i] = grpc.StatusCode.INVALID_ARGUMENT
        elif kind == 5:
            jobs.append(build_job(f, model="no-such-model"))
            expected[i] = grpc.StatusCode.NOT_FOUND
        elif kind == 7:
            jobs.append(build_job(b"garbage", model="img-captioner"))
            expected[i] = grpc.StatusCode.INVALID_ARGUMENT
        else:
            strategy = ("greedy", "beam", "sample")[i % 3]
            options = DecodeOptions(strategy=strategy, max_length=8 + i % 6, beam_width=2, seed=100 + i,
                                    num_captions=2 if strategy != "greedy" else 1)
            jobs.append(build_job(f, strategy=strategy, max_length=options.max_length, beam_width=2,
                                  seed=100 + i, num_captions=options.num_captions))
            expected[i] = decode(models["features"], f, options)
    answers = list(client.caption_many(jobs))
    assert sorted(i for i, _ in answers) == list(range(32))
    for i, outcome in answers:
        if isinstance(expected[i], grpc.StatusCode):
            assert isinstance(outcome, RpcError) and outcome.code == expected[i], (i, outcome)
        else:
            assert isinstance(outcome, CaptionOutput), (i, outcome)
            assert_same(outcome, expected[i])
            assert outcome.meta.compute_ms > 0, "a batched caption reports its decoding steps' time"
    # The server decoded some of them together: steps with more than one request happened.
    assert multi_request_steps(server, DEFAULT_MODEL) > multi_before
    assert batcher_of(server, DEFAULT_MODEL).stats.max_batch > 1


def test_caption_stream_refuses_a_duplicate_open_id(server):
    from pixelrpc.v1 import captioning_pb2 as pb
    from pixelrpc.v1 import captioning_pb2_grpc as pb_grpc

    job = build_job(np.zeros(D, np.float32), model="endless", max_length=60)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CaptioningServiceStub(channel)
        answers = list(stub.CaptionStream(iter([pb.CaptionStreamRequest(id="x", job=job),
                                                pb.CaptionStreamRequest(id="x", job=job),
                                                pb.CaptionStreamRequest(id="", job=job)]), timeout=30))
    errors = [a for a in answers if a.HasField("error")]
    assert len(answers) == 3 and len(errors) == 2
    assert {e.error.code for e in errors} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert any(a.id == "x" and a.HasField("result") for a in answers)


def test_caption_stream_applies_model_limits_per_request(server):
    """A model's max_concurrency and timeout_s bound each request of a stream, as each unary call: a
    stream longer than timeout_s, one request at a time, never holds more than one slot of the model."""
    from pixelrpc.v1 import captioning_pb2 as pb
    from pixelrpc.v1 import captioning_pb2_grpc as pb_grpc

    answered = threading.Semaphore(0)

    def requests():
        for i in range(4):
            yield pb.CaptionStreamRequest(id=str(i), job=build_job(np.zeros(D, np.float32), model="limited"))
            answered.acquire()
            time.sleep(0.25)  # 4 requests: the stream outlives the model's timeout_s of 0.5 s

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CaptioningServiceStub(channel)
        answers = []
        for answer in stub.CaptionStream(requests(), timeout=30):
            answers.append(answer)
            answered.release()
    assert [a.id for a in answers] == ["0", "1", "2", "3"]
    assert [a.error.message for a in answers if a.HasField("error")] == []


# ----------------------------------------------------------------------------- cancellation


@pytest.fixture
def slow_steps(monkeypatch):
    """Every decoding step takes 20 ms more, so a 100-token caption takes seconds."""
    slow_steps_here(monkeypatch, 0.02)


def steps_so_far(server, name: str) -> int:
    batchers = [b for key, b in server.ctx.state.get(BATCHERS_KEY, {}).items() if key[0] == name]
    return batchers[0].stats.steps if batchers else 0


def test_client_cancel_stops_the_work(thread_server, slow_steps):
    server = thread_server
    before = steps_so_far(server, "endless")
    client = CaptioningClient(server.address, timeout=30)
    stream = client.stream_caption(np.ones(D, np.float32), model="endless", max_length=100)
    for _ in range(3):
        assert isinstance(next(stream), TokenUpdate)
    stream.close()  # cancels the call
    batcher = batcher_of(server, "endless")
    deadline = time.monotonic() + 5
    while (batcher.active or batcher.leaving) and time.monotonic() < deadline:  # the loop confirmed the drop
        time.sleep(0.02)
    assert not batcher.active and not batcher.pending
    steps = batcher.stats.steps
    time.sleep(0.2)
    assert batcher.stats.steps == steps < before + 30  # nothing runs any more, long before 100 steps
    client.close()


def test_deadline_stops_the_work(thread_server, slow_steps):
    server = thread_server
    with CaptioningClient(server.address, timeout=30) as client, pytest.raises(RpcError) as err:
        client.caption(np.ones(D, np.float32), model="endless", max_length=100, timeout=0.3)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    batcher = batcher_of(server, "endless")
    deadline = time.monotonic() + 5
    while batcher.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not batcher.active


SERVER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pixelrpc.services.server import create_server, serve_until_signal
    from pixelrpc.services.settings import Settings

    async def main():
        settings = Settings.from_env(port=0, registry=sys.argv[1], metrics_port=0, shutdown_delay=0.5,
                                     shutdown_grace=20.0, caption_decode=sys.argv[2])
        server, port = await create_server(["captioning"], settings)
        await server.start()
        print(f"PORT {port}", flush=True)
        return await serve_until_signal([server])

    sys.exit(asyncio.run(main()))
""")

def slow_server_env(tmp_path) -> dict:
    """The server and its decoding process take 30 ms more per step."""
    return {**os.environ, "PIXELRPC_DEVICE": "cpu", "PYTHONPATH": slow_steps_pythonpath(tmp_path, 0.03)}


@pytest.mark.parametrize("decode_in", ["thread", "process"])
def test_sigterm_drains_an_open_stream(models, tmp_path, decode_in):
    """SIGTERM to the server's whole process group (as a terminal's Ctrl-C or a supervisor does): the
    open stream runs to its end, its decoding process included (it left the group)."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(models["registry"].root), decode_in],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=slow_server_env(tmp_path), start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line + proc.stderr.read()
        with CaptioningClient(f"127.0.0.1:{int(line.split()[1])}", timeout=30) as c:
            stream = c.stream_caption(np.ones(D, np.float32), model="endless", max_length=40)
            first = next(stream)
            assert isinstance(first, TokenUpdate)
            threading.Timer(0.1, os.killpg, (proc.pid, signal.SIGTERM)).start()
            rest = list(stream)  # the open stream runs to its end (40 steps of 30 ms: well after the signal)
        assert isinstance(rest[-1], CaptionOutput) and len(rest[-1].captions[0].tokens) == 40
        assert len(rest) == 40  # 39 more tokens and the caption
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# ----------------------------------------------------------------------------- unbatched, CLI


def test_unbatched_server_gives_the_same_answers(models):
    from pixelrpc.services.testing import running_server

    f = np.random.default_rng(8).standard_normal(D).astype(np.float32)
    with running_server(["captioning"], Settings(max_batch_size=1), registry=models["registry"]) as srv, \
            CaptioningClient(srv.address, timeout=30) as c:
        for strategy in ("greedy", "beam", "sample"):
            out = c.caption(f, strategy=strategy, seed=3, max_length=10)
            assert_same(out, decode(models["features"], f, DecodeOptions(strategy=strategy, seed=3 if strategy ==
                                                                           "sample" else None, max_length=10)))
        events = list(c.stream_caption(f, max_length=10))
        assert isinstance(events[-1], CaptionOutput) and len(events) == len(events[-1].captions[0].tokens) + 1
        assert srv.ctx.state.get(BATCHERS_KEY, {}) == {}


def test_cli_captions_files_in_one_stream(server, models, tmp_path):
    from pixelrpc.cli import cli

    rng = np.random.default_rng(9)
    np.save(tmp_path / "one.npy", rng.standard_normal(D).astype(np.float32))
    np.save(tmp_path / "two.npy", rng.standard_normal((2, D)).astype(np.float32))
    (tmp_path / "pic.png").write_bytes(png_bytes(4))
    runner = CliRunner()
    result = runner.invoke(cli, ["caption", str(tmp_path / "one.npy"), str(tmp_path / "two.npy"),
                                 "--addr", server.address, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["input"] for r in rows] == [str(tmp_path / "one.npy"), f"{tmp_path / 'two.npy'}[0]",
                                          f"{tmp_path / 'two.npy'}[1]"]
    expected = decode(models["features"], np.load(tmp_path / "one.npy"), DecodeOptions())[0]
    assert rows[0]["captions"][0]["text"] == expected.text

    result = runner.invoke(cli, ["caption", str(tmp_path / "one.npy"), "--addr", server.address, "--stream"],
                           catch_exceptions=False)
    assert result.exit_code == 0 and result.output.startswith(f"{tmp_path / 'one.npy'}:")
    assert result.output.strip().endswith(expected.text) if expected.text else True

    result = runner.invoke(cli, ["caption", str(tmp_path / "pic.png"), str(tmp_path / "one.npy"),
                                 "--model", "img-captioner", "--addr", server.address])
    assert result.exit_code != 0 and "1 of 2 inputs failed" in result.output

