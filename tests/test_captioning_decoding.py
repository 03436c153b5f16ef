"""Decoding: greedy, beam search, sampling, streaming and batch invariance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pixelrpc.models.captioning import rnn_layers as L
from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN
from pixelrpc.models.captioning.decoding import (
    BatchDecoder,
    DecodeOptions,
    Finished,
    TokenEvent,
    beam_search,
    decode,
    decode_batch,
    decode_steps,
    greedy,
    sample_captions,
)
from pixelrpc.models.errors import FailedPrecondition, InvalidInput

# Float32 decoding (the default for float32 models) against the float64 teacher-forced reference.
LOGP_TOL = 2e-5
WORDS = ["<NULL>", "<START>", "<END>", "a", "cat", "dog", "on", "mat", "the", "sat"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


def make_model(cell_type="lstm", seed=0, scale=3.0, vocab=VOCAB, D=8):
    """A random model with peaked output distributions (scaled W_vocab), so captions vary."""
    model = CaptioningRNN(vocab, input_dim=D, wordvec_dim=6, hidden_dim=12, cell_type=cell_type, seed=seed)
    model.params["W_vocab"] = model.params["W_vocab"] * scale
    model.params["b_vocab"][2] = 0.5  # <END> is reachable, so captions have different lengths
    return model


def teacher_forced_logprobs(model: CaptioningRNN, features: np.ndarray, tokens: list[int]) -> np.ndarray:
    """log p(token_t | tokens_<t, image) for every t, by running the sequence layers (float64)."""
    p = {k: v.astype(np.float64) for k, v in model.params.items()}
    inputs = np.array([[model.start_idx] + tokens[:-1]])  # (1, T)
    h0 = features[None].astype(np.float64) @ p["W_proj"] + p["b_proj"]  # (1, H)
    forward = L.lstm_forward if model.cell_type == "lstm" else L.rnn_forward
    h, _ = forward(p["W_embed"][inputs], h0, p["Wx"], p["Wh"], p["b"])  # (1, T, H)
    logp = L.log_softmax(h @ p["W_vocab"] + p["b_vocab"], axis=2)[0]  # (T, V)
    return logp[np.arange(len(tokens)), tokens]


@pytest.fixture(params=["rnn", "lstm"])
def model(request):
    return make_model(request.param)


@pytest.fixture
def features():
    return np.random.default_rng(7).standard_normal((6, 8)).astype(np.float32)


def test_greedy_picks_the_argmax_and_reports_true_logprobs(model, features):
    for f in features:
        cap = greedy(model, f, max_length=12)
        assert cap.logprobs == pytest.approx(list(teacher_forced_logprobs(model, f, cap.tokens)), abs=LOGP_TOL)
        assert cap.finished == (cap.tokens[-1] == VOCAB["<END>"])
        assert len(cap.tokens) <= 12 and VOCAB["<END>"] not in cap.tokens[:-1]
        assert cap.words == [WORDS[t] for t in (cap.tokens[:-1] if cap.finished else cap.tokens)]
        # Every prefix choice was the argmax: no single-token change of the last step scores higher.
        prefix = cap.tokens[:-1]
        alternatives = [teacher_forced_logprobs(model, f, prefix + [t])[-1] for t in range(len(WORDS))]
        assert cap.tokens[-1] == int(np.argmax(alternatives))
    assert np.array_equal(model.sample(features, 12)[:, 0], [greedy(model, f, 12).tokens[0] for f in features])


def test_beam_width_one_equals_greedy(model, features):
    for f in features:
        g = greedy(model, f, max_length=15)
        for alpha in (0.0, 0.7):
            (b,) = beam_search(model, f, beam_width=1, max_length=15, length_penalty=alpha)
            assert b.tokens == g.tokens
            assert b.logprobs == pytest.approx(g.logprobs, abs=1e-12)


def test_beam_nbest_is_sorted_and_scored(model, features):
    for f in features:
        for alpha in (0.0, 1.0):
            nbest = beam_search(model, f, beam_width=5, max_length=10, length_penalty=alpha)
            assert 1 <= len(nbest) <= 5
            scores = [c.score for c in nbest]
            assert scores == sorted(scores, reverse=True)
            for c in nbest:
                assert c.score == pytest.approx(sum(c.logprobs) / len(c.tokens) ** alpha, abs=1e-12)
                assert c.logprobs == pytest.approx(list(teacher_forced_logprobs(model, f, c.tokens)), abs=LOGP_TOL)
            assert len({tuple(c.tokens) for c in nbest}) == len(nbest)


def test_wide_beam_is_exhaustive_on_a_tiny_problem():
    # V = 4 and max_length 2: at most 4 + 3 * 4 = 16 candidates, so K = 16 explores all of them.
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "x": 3}
    model = make_model("rnn", seed=3, vocab=vocab, D=8)
    f = np.random.default_rng(1).standard_normal(8)
    complete = [[t] for t in range(4) if t == 2] + [[a, b] for a, b in itertools.product(range(4), repeat=2) if a != 2]
    totals = sorted(((float(teacher_forced_logprobs(model, f, seq).sum()), seq) for seq in complete), reverse=True)
    nbest = beam_search(model, f, beam_width=16, max_length=2, num_captions=5)
    assert [c.tokens for c in nbest] == [seq for _, seq in totals[:5]]
    assert [c.score for c in nbest] == pytest.approx([t for t, _ in totals[:5]], abs=2 * LOGP_TOL)


def test_sampling_is_reproducible_per_seed(model, features):
    f = features[0]
    a = sample_captions(model, f, seed=42, num_captions=3, temperature=1.5)
    b = sample_captions(model, f, seed=42, num_captions=3, temperature=1.5)
    assert [c.tokens for c in a] == [c.tokens for c in b]
    # Caption j does not depend on how many were asked for.
    assert sample_captions(model, f, seed=42, num_captions=1, temperature=1.5)[0].tokens == a[0].tokens
    others = {tuple(sample_captions(model, f, seed=s, temperature=1.5)[0].tokens) for s in range(20)}
    assert len(others) > 1, "different seeds should give different captions at temperature 1.5"
    for c in a:  # reported log-probabilities are the model's own (temperature 1)
        assert c.logprobs == pytest.approx(list(teacher_forced_logprobs(model, f, c.tokens)), abs=LOGP_TOL)


def test_float64_decoding_reports_exact_logprobs(model, features):
    for f in features:
        for options in (DecodeOptions(max_length=12), DecodeOptions(strategy="beam", beam_width=3, max_length=10),
                        DecodeOptions(strategy="sample", seed=4, num_captions=2, max_length=10)):
            for c in decode(model, f, options, dtype=np.float64):
                assert c.logprobs == pytest.approx(list(teacher_forced_logprobs(model, f, c.tokens)), abs=1e-10)
            f32 = decode(model, f, options)
            assert len(f32) == len(decode(model, f, options, dtype=np.float64))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampling_follows_the_tempered_distribution(temperature):
    model = make_model("lstm", seed=1, scale=1.0)
    f = np.random.default_rng(2).standard_normal(8)
    n = 4000
    results = decode_batch(model, np.repeat(f[None], n, axis=0),
                           [DecodeOptions(strategy="sample", seed=s, temperature=temperature, max_length=1)
                            for s in range(n)])
    counts = np.bincount([r[0].tokens[0] for r in results], minlength=len(WORDS)) / n
    first = np.array([teacher_forced_logprobs(model, f, [t])[0] for t in range(len(WORDS))])  # log p(w_1)
    expected = np.exp(first / temperature)
    expected /= expected.sum()
    assert np.max(np.abs(counts - expected)) < 4 * np.sqrt(0.25 / n)  # 4 sigma of a binomial


def test_batched_decoding_equals_unbatched(model):
    rng = np.random.default_rng(11)
    features = rng.standard_normal((24, 8))
    options = []
    for i in range(24):
        kind = ("greedy", "beam", "sample")[i % 3]
        options.append(DecodeOptions(strategy=kind, max_length=10 + i % 5, beam_width=1 + i % 4,
                                     num_captions=1 + (i % 2 if kind != "greedy" else 0),
                                     seed=1000 + i, temperature=0.7 + 0.1 * (i % 4)))
    batched = decode_batch(model, features, options)
    for f, o, got in zip(features, options, batched, strict=True):
        alone = decode(model, f, o)
        assert [c.tokens for c in got] == [c.tokens for c in alone]
        for x, y in zip(got, alone, strict=True):
            assert np.max(np.abs(np.subtract(x.logprobs, y.logprobs))) <= 1e-6


def test_requests_can_join_a_running_batch(model):
    rng = np.random.default_rng(12)
    features = rng.standard_normal((5, 8))
    opts = [DecodeOptions(max_length=12), DecodeOptions(strategy="beam", beam_width=3, max_length=12),
            DecodeOptions(strategy="sample", seed=5, max_length=12)]
    decoder = BatchDecoder(model)
    handles = {decoder.add(features[0], opts[0]): 0}
    decoder.step()
    handles[decoder.add(features[1], opts[1])] = 1
    decoder.step()
    decoder.step()
    handles[decoder.add(features[2], opts[2])] = 2
    doomed = decoder.add(features[3], opts[0])
    decoder.cancel(doomed)
    results = {}
    while decoder.active:
        decoder.step()
        results.update(decoder.pop_finished())
    results.update(decoder.pop_finished())
    assert doomed not in results and decoder.num_rows == 0
    for handle, i in handles.items():
        alone = decode(model, features[i], opts[i])
        assert [c.tokens for c in results[handle]] == [c.tokens for c in alone]


def test_decode_steps_streams_tokens_then_the_caption(model, features):
    for options in (DecodeOptions(max_length=9), DecodeOptions(strategy="sample", seed=3, num_captions=2)):
        items = list(decode_steps(model, features[1], options))
        assert isinstance(items[-1], Finished) and all(isinstance(i, TokenEvent) for i in items[:-1])
        for j, cap in enumerate(items[-1].captions):
            streamed = [e for e in items[:-1] if e.caption == j]
            assert [e.token for e in streamed] == cap.tokens
            assert [e.position for e in streamed] == list(range(len(cap.tokens)))
            assert [e.logprob for e in streamed] == cap.logprobs
    beam_items = list(decode_steps(model, features[1], DecodeOptions(strategy="beam", beam_width=3)))
    assert len(beam_items) == 1 and isinstance(beam_items[0], Finished)


def test_invalid_requests_are_refused_with_field_names(model):
    f = np.zeros(8)
    with pytest.raises(InvalidInput) as err:
        decode(model, f, strategy="beam", beam_width=0, max_length=0)
    fields = {v.field for v in err.value.violations}
    assert fields == {"options.beam_width", "options.max_length"}
    with pytest.raises(InvalidInput, match="temperature"):
        decode(model, f, strategy="sample", temperature=0.0, seed=1)
    with pytest.raises(InvalidInput, match="unknown strategy"):
        decode(model, f, strategy="nucleus")
    with pytest.raises(InvalidInput, match="one caption"):
        decode(model, f, strategy="greedy", num_captions=2)
    with pytest.raises(InvalidInput, match=r"dimension 5 .* takes dimension 8"):
        decode(model, np.zeros(5))
    with pytest.raises(InvalidInput, match="NaN"):
        decode(model, np.full(8, np.nan))


def test_a_vocabulary_without_start_cannot_decode():
    model = CaptioningRNN({"<NULL>": 0, "cat": 1}, input_dim=3, wordvec_dim=2, hidden_dim=4, seed=0)
    with pytest.raises(FailedPrecondition, match="<START>"):
        greedy(model, np.zeros(3))


def _mixed_options(i: int, max_length: int = 8) -> DecodeOptions:
    kind = ("greedy", "beam", "sample")[i % 3]
    return DecodeOptions(strategy=kind, max_length=max_length, beam_width=2 + i % 3,
                         num_captions=1 + (i % 2 if kind != "greedy" else 0), seed=77 + i, temperature=0.9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", ["tiny", "served"])
def test_a_caption_is_the_same_alone_and_in_any_batch(dtype, sizes):
    """Batch invariance: a request decoded alone and inside batches of many sizes, at every position
    and next to every strategy, gets the same tokens (exactly) and log-probabilities (within 1e-6;
    in fact bitwise). "served" has the benchmark's sizes, where BLAS picks its large-matrix kernels."""
    if sizes == "tiny":
        model, D = make_model("lstm", seed=5), 8
    else:
        vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2} | {f"w{i}": i for i in range(3, 1004)}
        model = CaptioningRNN(vocab, input_dim=512, wordvec_dim=256, hidden_dim=512, cell_type="lstm", seed=5)
        model.params["W_vocab"] *= 4.0
        D = 512
    rng = np.random.default_rng(3)
    features = rng.standard_normal((70, D)).astype(np.float32)
    alone = [decode(model, features[i], _mixed_options(i), dtype=dtype) for i in range(len(features))]

    def check(idx):
        got = decode_batch(model, features[idx], [_mixed_options(i) for i in idx], dtype=dtype)
        for i, captions in zip(idx, got, strict=True):
            assert [c.tokens for c in captions] == [c.tokens for c in alone[i]], (i, len(idx))
            for x, y in zip(captions, alone[i], strict=True):
                assert np.max(np.abs(np.subtract(x.logprobs, y.logprobs))) <= 1e-6
                assert x.logprobs == y.logprobs  # bitwise, in fact

    sizes_to_try = (2, 3, 5, 8, 13, 33, 70) if sizes == "tiny" else (2, 7, 40)
    for n in sizes_to_try:
        check(list(range(n)))  # request i at position i
        check(list(rng.permutation(len(features))[:n]))  # at other positions, next to other requests
    # Greedy requests alone in a batch take the vectorised path: the same numbers again.
    greedy_idx = [i for i in range(len(features)) if i % 3 == 0]
    check(greedy_idx)
    check(greedy_idx[::-1])
