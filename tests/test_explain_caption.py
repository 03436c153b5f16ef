"""Explain-a-caption: a saliency map per word, from the domain generator to the RPC, clients, CLI and gate.

The gradients are checked against central finite differences on tiny float64 models (an LSTM and a
vanilla RNN captioner, a smooth conv encoder); the service runs on a random LSTM captioner pinned to
a random SqueezeNet trunk at 32 px; the quality gate runs on the quick-bootstrapped default models.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import grpc
import numpy as np
import pytest
import torch
from admission_images import noise_png
from click.testing import CliRunner
from conftest import torch_threads
from PIL import Image
from registry_helpers import publish_tiny_encoder

from pixelrpc.clients.captioning import AsyncCaptioningClient, CaptioningClient, Explanation, WordExplanation
from pixelrpc.clients.errors import RpcError
from pixelrpc.models.captioning import explain as ex
from pixelrpc.models.captioning import rnn_layers as L
from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN, save_to_registry
from pixelrpc.models.captioning.decoding import decode
from pixelrpc.models.errors import FailedPrecondition, InvalidInput
from pixelrpc.models.imaging import working_box
from pixelrpc.services.settings import Settings

WORDS = ["<NULL>", "<START>", "<END>", "a", "cat", "dog", "on", "mat", "the", "sat", "red", "ball"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


class SmoothEncoder:
    """A tiny float64 encoder with smooth activations (finite differences need no kinks):
    embed(x) = mean over pixels of tanh(conv3x3(x)) -> (N, D)."""

    def __init__(self, d: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, d, 3, padding=1).double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g, dtype=torch.float64))
            self.conv.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64) * 0.1)

    def embed(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def tiny_captioner(cell: str, d: int, seed: int = 0, dtype=np.float64) -> CaptioningRNN:
    model = CaptioningRNN(VOCAB, input_dim=d, wordvec_dim=6, hidden_dim=7, cell_type=cell, dtype=dtype, seed=seed)
    model.params["W_vocab"] = model.params["W_vocab"] * 3.0
    return model


def reference_log_probs(model: CaptioningRNN, features: np.ndarray, tokens: list[int]) -> np.ndarray:
    """log p(w_k | features, w_<k) step by step with the single-step layers (no batching trick)."""
    p = model.params
    h = (features[None] @ p["W_proj"] + p["b_proj"])  # (1, H)
    c = np.zeros_like(h)
    prev, out = model.start_idx, []
    for w in tokens:
        x = p["W_embed"][[prev]]  # (1, W)
        if model.cell_type == "lstm":
            h, c, _ = L.lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
        else:
            h, _ = L.rnn_step_forward(x, h, p["Wx"], p["Wh"], p["b"])
        out.append(L.log_softmax(h @ p["W_vocab"] + p["b_vocab"])[0, w])
        prev = w
    return np.array(out)


# ----------------------------------------------------------------------------- domain: gradients


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_feature_gradients_match_finite_differences(cell):
    d = 5
    model = tiny_captioner(cell, d, seed=3)
    rng = np.random.default_rng(0)
    f = rng.standard_normal(d)
    tokens = [VOCAB[w] for w in "a cat sat on the mat".split()]
    logp, grads, end_lp = ex.word_feature_gradients(model, f, tokens)
    np.testing.assert_allclose(logp, reference_log_probs(model, f, tokens), rtol=1e-10, atol=1e-12)
    assert end_lp == pytest.approx(reference_log_probs(model, f, [*tokens, VOCAB["<END>"]])[-1], abs=1e-12)
    h = 1e-6
    numeric = np.empty_like(grads)  # (T, D)
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        numeric[:, j] = (reference_log_probs(model, f + e, tokens) - reference_log_probs(model, f - e, tokens)) / (2 * h)
    np.testing.assert_allclose(grads, numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(grads).max() > 1e-3  # not vacuous


def test_pixel_gradients_match_finite_differences_through_the_encoder():
    d = 4
    model, encoder = tiny_captioner("lstm", d, seed=5), SmoothEncoder(d, seed=1)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tokens = [VOCAB[w] for w in "the red ball".split()]

    def logp(xx):
        return reference_log_probs(model, ex.encoder_features(encoder, xx), tokens)

    _, fgrads, _ = ex.word_feature_gradients(model, ex.encoder_features(encoder, x), tokens)
    grads = ex.pixel_gradients(encoder, x, fgrads)  # (T, 3, S, S)
    rng = np.random.default_rng(7)
    h = 1e-6
    for _ in range(12):
        c, i, j = int(rng.integers(3)), int(rng.integers(6)), int(rng.integers(6))
        e = torch.zeros_like(x)
        e[0, c, i, j] = h
        numeric = (logp(x + e) - logp(x - e)) / (2 * h)  # (T,)
        np.testing.assert_allclose(grads[:, c, i, j].numpy(), numeric, rtol=1e-5, atol=1e-9)
    sal = ex.saliency_of(grads)
    assert sal.shape == (3, 6, 6) and sal.dtype == np.float32
    np.testing.assert_allclose(sal, grads.abs().amax(1).numpy(), rtol=1e-6)


def test_an_encoder_without_vmap_rules_falls_back_to_a_batch_of_copies(monkeypatch):
    encoder = SmoothEncoder(4, seed=2)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    g = np.random.default_rng(1).standard_normal((3, 4))
    batched = ex.pixel_gradients(encoder, x, g)
    grad = torch.autograd.grad

    def no_vmap(*args, is_grads_batched=False, **kw):
        if is_grads_batched:
            raise RuntimeError("Batching rule not implemented")
        return grad(*args, **kw)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    np.testing.assert_allclose(ex.pixel_gradients(encoder, x, g).numpy(), batched.numpy(), rtol=1e-10)


def test_generated_mode_explains_the_greedy_caption_and_chunks_do_not_change_the_maps():
    d = 4
    model, encoder = tiny_captioner("lstm", d, seed=8), SmoothEncoder(d, seed=3)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    words, caption = ex.explain_caption(model, encoder, x, max_length=6)
    greedy = decode(model, ex.encoder_features(encoder, x), strategy="greedy", max_length=6)[0]
    assert [w.token for w in words] == [t for t in greedy.tokens if t != VOCAB["<END>"]]
    assert caption.text == greedy.text and not caption.teacher_forced
    np.testing.assert_allclose([w.log_prob for w in words], greedy.logprobs[: len(words)], atol=1e-9)
    one_by_one, _ = ex.explain_caption(model, encoder, x, max_length=6, chunk_pixels=1)
    for a, b in zip(words, one_by_one, strict=True):
        assert a.saliency.shape == (8, 8) and (a.saliency >= 0).all()
        np.testing.assert_allclose(a.saliency, b.saliency, rtol=1e-6, atol=1e-12)


def test_teacher_forcing_and_its_refusals():
    d = 4
    model, encoder = tiny_captioner("lstm", d, seed=9), SmoothEncoder(d)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    words, caption = ex.explain_caption(model, encoder, x, caption="The cat sat on the mat.")
    assert [w.word for w in words] == "the cat sat on the mat".split() and caption.teacher_forced
    f = ex.encoder_features(encoder, x)
    np.testing.assert_allclose([w.log_prob for w in words],
                               reference_log_probs(model, f, [VOCAB[w.word] for w in words]), atol=1e-10)
    with pytest.raises(InvalidInput, match="'zebra', 'zoo'") as err:
        ex.tokenize(model, "a zebra at the zoo", max_length=30)
    assert "'at'" in err.value.message and err.value.violations[0].field == "caption"
    for bad in ("   ", "a <END> cat", "a " * 31):
        with pytest.raises(InvalidInput):
            ex.tokenize(model, bad, max_length=30)
    no_start = CaptioningRNN({"<NULL>": 0, "a": 1}, input_dim=d, wordvec_dim=3, hidden_dim=3, dtype=np.float64)
    with pytest.raises(FailedPrecondition, match="<START>"):
        ex.explain_caption(no_start, encoder, x, caption="a")


def test_map_to_source_fills_the_crop_box_and_zeroes_the_rest():
    smap = np.arange(16, dtype=np.float32).reshape(4, 4) + 1
    wide = working_box(12, 6, 4, crop=True)  # the centre 6 x 6 of a 12 x 6 image
    full = ex.map_to_source(smap, wide)
    assert full.shape == (6, 12) and full.dtype == np.float32
    assert (full[:, :3] == 0).all() and (full[:, 9:] == 0).all() and (full[:, 3:9] > 0).all()
    same = ex.map_to_source(smap, working_box(4, 4, 4, crop=True))
    np.testing.assert_array_equal(same, smap)
    with pytest.raises(InvalidInput, match="max_message_bytes"):
        ex.check_map_budget(5000, 4000, 64 << 20)


# ----------------------------------------------------------------------------- the service


def png(size=(40, 30), seed=0) -> bytes:
    return noise_png(seed, size)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from pixelrpc.models import zoo

    registry, encoder = publish_tiny_encoder(tmp_path_factory)
    captioner = CaptioningRNN(VOCAB, input_dim=512, wordvec_dim=8, hidden_dim=16, cell_type="lstm", seed=2)
    captioner.params["W_vocab"] = captioner.params["W_vocab"] * 3.0
    captioner.params["b_vocab"][VOCAB["<END>"]] = -1e3  # never ends: max_length words
    save_to_registry(captioner, registry, "shapes-captioner", encoder=encoder)
    save_to_registry(CaptioningRNN(VOCAB, input_dim=16, seed=1), registry, "features-only")
    return {"registry": registry, "captioner": captioner,
            "encoder": zoo.load_squeezenet(encoder, lambda f: registry.read_file(encoder, f), "cpu")}


@pytest.fixture(scope="module")
def server(models):
    from pixelrpc.services.testing import running_server

    settings = Settings(max_concurrency=2, queue_depth=8, worker_threads=1)
    with torch_threads(1), running_server(["captioning"], settings, registry=models["registry"]) as handle:
        yield handle


@pytest.fixture
def client(server):
    with CaptioningClient(server.address, timeout=30) as c:
        yield c


def test_explain_over_grpc_matches_the_domain_and_the_caption_rpc(client, models):
    image = png((40, 30))
    out = client.explain(image, max_length=5)
    assert isinstance(out, Explanation) and len(out.words) == 5 and out.size == (40, 30)
    assert out.caption == " ".join(w.word for w in out.words) and out.input_size == 32
    assert out.encoder == "tiny-encoder:1" and out.meta.model_name == "shapes-captioner"
    caption = client.caption(image, max_length=5)
    assert [w.token_id for w in out.words] == caption.captions[0].token_ids
    np.testing.assert_allclose([w.log_prob for w in out.words], [t.logprob for t in caption.captions[0].tokens],
                               atol=1e-4)
    # the same maps in process: decode to the working size, preprocess, explain, resize back
    from pixelrpc.models.imaging import ImageLimits, decode_working, read_header

    plan = models["encoder"].plan_input(read_header(image, ImageLimits()), ImageLimits())
    x = models["encoder"].preprocess([decode_working(image, plan)])
    local, _ = ex.explain_caption(models["captioner"], models["encoder"], x, max_length=5)
    for got, want in zip(out.words, local, strict=True):
        assert got.saliency.shape == (30, 40) and got.saliency.dtype == np.float32
        assert (got.saliency[:, :5] == 0).all() and (got.saliency[:, 35:] == 0).all()  # outside the crop
        np.testing.assert_allclose(got.saliency, ex.map_to_source(want.saliency, plan.geometry),
                                   rtol=1e-4, atol=1e-6 * float(want.saliency.max()))
        assert got.saliency[got.peak[1], got.peak[0]] == got.saliency.max()
        assert got.overlay is None


def test_teacher_forced_stream_with_overlays_and_errors(client):
    items = list(client.explain_stream(png(), caption="the red ball sat on a mat", overlays=True))
    words, final = items[:-1], items[-1]
    assert all(isinstance(w, WordExplanation) for w in words) and isinstance(final, Explanation)
    assert final.caption == "the red ball sat on a mat" and final.teacher_forced
    assert [w.position for w in words] == list(range(7))
    assert Image.open(io.BytesIO(words[0].overlay)).size == (32, 32)
    cases = [
        (dict(caption="a zebra on a mat"), grpc.StatusCode.INVALID_ARGUMENT, "'zebra'", "caption"),
        (dict(max_length=1000), grpc.StatusCode.INVALID_ARGUMENT, "max_length", "max_length"),
        (dict(model="features-only"), grpc.StatusCode.FAILED_PRECONDITION, "no pinned image encoder", None),
        (dict(model="nope"), grpc.StatusCode.NOT_FOUND, "nope", None),
    ]
    for kwargs, code, needle, field in cases:
        with pytest.raises(RpcError) as err:
            client.explain(png(), **kwargs)
        assert err.value.code == code and needle in err.value.details, err.value
        if field:
            assert [f for f, _ in err.value.violations] == [field]
    with pytest.raises(RpcError) as err:
        client.explain(b"not an image")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.violations[0][0] == "image"


def test_async_client_explains(server):
    async def main():
        async with AsyncCaptioningClient(server.address, timeout=30) as c:
            streamed = [item async for item in c.explain_stream(png(seed=3), max_length=3)]
            return streamed, await c.explain(png(seed=3), caption="a cat")

    streamed, forced = asyncio.run(main())
    assert len(streamed) == 4 and isinstance(streamed[-1], Explanation)
    assert [w.word for w in forced.words] == ["a", "cat"] and forced.words[1].saliency.shape == (30, 40)


@pytest.fixture
def slow_chunks(monkeypatch):
    """One word per encoder backward, each taking 0.2 s; counts the backward passes."""
    calls = []
    fast = ex.pixel_gradients

    def slow(*args, **kw):
        calls.append(time.monotonic())
        time.sleep(0.2)
        return fast(*args, **kw)

    monkeypatch.setattr(ex, "pixel_gradients", slow)
    monkeypatch.setattr(ex, "CHUNK_PIXELS", 1)
    return calls


def test_cancel_and_deadline_stop_between_words(client, slow_chunks):
    stream = client.explain_stream(png(), max_length=40)
    assert isinstance(next(stream), WordExplanation)
    stream.close()  # cancels the call
    time.sleep(0.6)
    after_cancel = len(slow_chunks)
    time.sleep(0.6)
    assert len(slow_chunks) == after_cancel < 8  # 40 words would take 40 backward passes
    slow_chunks.clear()
    with pytest.raises(RpcError) as err:
        client.explain(png(), max_length=40, timeout=1.0)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.6)
    stopped = len(slow_chunks)
    time.sleep(0.6)
    assert len(slow_chunks) == stopped < 10


def test_cli_explain_writes_an_overlay_per_word(server, tmp_path):
    from pixelrpc.cli import cli

    image = tmp_path / "scene.png"
    image.write_bytes(png(seed=4))
    out = tmp_path / "maps"
    result = CliRunner().invoke(cli, ["caption", str(image), "--explain", "--caption", "a red ball on the mat",
                                      "--out", str(out), "--addr", server.address, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert [w["word"] for w in record["words"]] == "a red ball on the mat".split()
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == [f"{i:02d}-{w}.png" for i, w in enumerate("a red ball on the mat".split())]
    assert all(0 <= w["peak"]["x"] < 40 and 0 <= w["peak"]["y"] < 30 for w in record["words"])
    text = CliRunner().invoke(cli, ["caption", str(image), "--explain", "--max-length", "3", "--out", str(out),
                                    "--addr", server.address])
    assert text.exit_code == 0, text.output
    assert "peak at (x=" in text.output and len(list(out.glob("*.png"))) >= 5
    bad = CliRunner().invoke(cli, ["caption", str(image), str(image), "--explain", "--addr", server.address])
    assert bad.exit_code != 0 and "one image" in bad.output


# ----------------------------------------------------------------------------- the quality gate


def test_the_gate_passes_on_the_quick_default_models(quick_bootstrap):
    from pixelrpc.models import bootstrap as bs
    from pixelrpc.models.captioning.explain_gate import explain_gate
    from pixelrpc.models.registry import load_model

    registry = quick_bootstrap.registry
    captioner = registry.resolve(bs.CAPTIONER_NAME)
    reported = captioner.metadata["metrics"]["held_out"]["explain_saliency"]
    check = next(g for g in captioner.metadata["gates"] if g["metric"].startswith("explained words"))
    assert check["passed"] and check["value"] == reported["ratio"] >= bs.QUICK.gates.min_explain_ratio
    assert reported["words"] >= 20 and reported["scenes"] == bs.QUICK.explain_scenes
    # recomputed from the published models, as a service loads them
    with torch_threads(1):
        again = explain_gate(load_model(registry, captioner, "cpu"),
                             load_model(registry, registry.resolve(bs.CLASSIFIER_NAME), "cpu"),
                             bs.held_out_batch(bs.QUICK.seed, bs.QUICK.explain_scenes))
    assert again.ratio == pytest.approx(reported["ratio"], rel=1e-3) and again.words == reported["words"]
    print(f"explain gate on the quick models: {again.ratio:.2f}x over {again.words} words of {again.scenes} "
          f"scenes (colour words {again.colour_ratio:.2f}x, shape words {again.shape_ratio:.2f}x)")
