"""CaptioningRNN: parameters, known loss values, gradient checks of every parameter, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from pixelrpc.models.captioning.captioning_rnn import (
    CaptioningRNN,
    load_from_registry,
    save_to_registry,
)
from pixelrpc.models.errors import FailedPrecondition, InvalidInput, ModelCorrupt
from pixelrpc.models.gradcheck import numerical_gradient, rel_error_norm
from pixelrpc.models.registry import ModelCache, Registry

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "cat": 3, "dog": 4, "sat": 5}


def linspace_model(cell_type: str, vocab: dict[str, int]) -> CaptioningRNN:
    model = CaptioningRNN(vocab, input_dim=20, wordvec_dim=30, hidden_dim=40, cell_type=cell_type, dtype=np.float64)
    for key, value in model.params.items():
        model.params[key] = np.linspace(-1.4, 1.3, num=value.size).reshape(value.shape)
    return model


def test_parameter_shapes_and_dtype():
    for cell, G in (("rnn", 7), ("lstm", 28)):
        model = CaptioningRNN(VOCAB, input_dim=5, wordvec_dim=6, hidden_dim=7, cell_type=cell, seed=0)
        shapes = {k: v.shape for k, v in model.params.items()}
        assert shapes == {"W_proj": (5, 7), "b_proj": (7,), "W_embed": (6, 6), "Wx": (6, G), "Wh": (7, G),
                          "b": (G,), "W_vocab": (7, 6), "b_vocab": (6,)}
        assert all(v.dtype == np.float32 for v in model.params.values())
    assert CaptioningRNN(VOCAB, dtype=np.float64).params["Wx"].dtype == np.float64


def test_unknown_cell_type_is_refused():
    with pytest.raises(ValueError, match="gru"):
        CaptioningRNN(VOCAB, cell_type="gru")


@pytest.mark.parametrize(("cell_type", "feature_range", "expected"), [
    # The published CS231n checks: parameters and features from linspace, V = 3, T = 13.
    ("rnn", (-1.5, 0.3), 9.83235591003),
    ("lstm", (-0.5, 1.7), 9.82445935443),
])
def test_loss_matches_the_assignment_known_values(cell_type, feature_range, expected):
    # The assignment's own vocabulary: V = len(word_to_idx) = 3, indices not 0 .. V-1, no <START>/<END>.
    model = linspace_model(cell_type, {"<NULL>": 0, "cat": 2, "dog": 3})
    N, T = 10, 13
    features = np.linspace(*feature_range, num=N * 20).reshape(N, 20)
    captions = (np.arange(N * T) % 3).reshape(N, T)
    loss, grads = model.loss(features, captions)
    assert loss == pytest.approx(expected, abs=1e-10)
    assert set(grads) == set(model.params)
    assert all(grads[k].shape == model.params[k].shape for k in grads)


def test_null_targets_do_not_count():
    model = CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=3, hidden_dim=5, dtype=np.float64, seed=1)
    features = np.ones((1, 4))
    short = np.array([[1, 3, 2, 0, 0]])
    loss_short, grads = model.loss(features, short)
    # Padding adds nothing: the same caption without its <NULL> tail has the same loss.
    assert loss_short == pytest.approx(model.loss(features, np.array([[1, 3, 2]]))[0], rel=1e-12)
    assert model.loss(features, np.array([[1, 4, 2, 0, 0]]))[0] != loss_short
    # Words never read as input get no embedding gradient.
    assert np.all(grads["W_embed"][[4, 5]] == 0) and np.any(grads["W_embed"][3] != 0)


def test_loss_reads_params_on_every_call():
    model = CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=3, hidden_dim=5, seed=2)
    features, captions = np.ones((2, 4)), np.array([[1, 3, 4, 2], [1, 5, 2, 0]])
    before = model.loss(features, captions)[0]
    model.params["b_vocab"] = model.params["b_vocab"] + np.arange(6, dtype=np.float32)
    assert model.loss(features, captions)[0] != before


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_every_parameter_gradient_matches_numeric(cell_type):
    rng = np.random.default_rng(231)
    model = CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=5, hidden_dim=6, cell_type=cell_type,
                          dtype=np.float64, seed=3)
    for key in model.params:  # break the zero biases so every gradient path is exercised
        model.params[key] = model.params[key] + 0.3 * rng.standard_normal(model.params[key].shape)
    features = rng.standard_normal((3, 4))
    captions = rng.integers(0, len(VOCAB), size=(3, 7))
    captions[:, 0] = 1
    captions[0, 4:] = 0  # some padding
    loss, grads = model.loss(features, captions)
    for key, param in model.params.items():
        num = numerical_gradient(lambda: model.loss(features, captions)[0], param, h=1e-6)
        err = rel_error_norm(num, grads[key])
        assert err < 1e-6, f"{cell_type} d{key}: norm-relative error {err:.2e}"


def test_sample_is_greedy_and_padded_after_end():
    model = CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=5, hidden_dim=6, cell_type="lstm", seed=4)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5, 4)).astype(np.float32)
    out = model.sample(features, max_length=8)
    assert out.shape == (5, 8) and np.issubdtype(out.dtype, np.integer)
    # Recompute the first greedy token by hand: argmax of the vocabulary scores after <START>.
    p = {k: v.astype(np.float64) for k, v in model.params.items()}
    h0 = features @ p["W_proj"] + p["b_proj"]
    a = p["W_embed"][[1] * 5] @ p["Wx"] + h0 @ p["Wh"] + p["b"]
    H = 6
    sig = 1 / (1 + np.exp(-a))
    h1 = sig[:, 2 * H: 3 * H] * np.tanh(sig[:, :H] * np.tanh(a[:, 3 * H:]))
    np.testing.assert_array_equal(out[:, 0], np.argmax(h1 @ p["W_vocab"] + p["b_vocab"], axis=1))
    for row in out:
        ends = np.flatnonzero(row == 2)
        if len(ends):
            assert np.all(row[ends[0] + 1:] == 0)


def test_registry_round_trip(tmp_path):
    registry = Registry(tmp_path)
    model = CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=5, hidden_dim=6, cell_type="lstm", seed=5)
    encoder = {"name": "squeezenet1_1-features", "version": 2, "sha256": "ab" * 32}
    manifest = save_to_registry(model, registry, "tiny-captioner", encoder=encoder,
                                metadata={"metrics": {"bleu4": 0.1}})
    assert manifest.tasks == ("captioning",) and manifest.framework == "numpy"
    meta = manifest.metadata
    assert meta["architecture"] == "captioning-rnn" and meta["cell_type"] == "lstm"
    assert meta["encoder"] == encoder and meta["metrics"] == {"bleu4": 0.1}
    assert meta["idx_to_word"][3] == "cat"

    loaded = ModelCache(registry).get("tiny-captioner").model  # through the registry's loader table
    assert isinstance(loaded, CaptioningRNN) and loaded.cell_type == "lstm"
    for key, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[key], value)
    features = np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_array_equal(loaded.sample(features, 6), model.sample(features, 6))


def test_registry_refuses_inconsistent_models(tmp_path):
    registry = Registry(tmp_path)
    model = CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=5, hidden_dim=6, seed=6)
    manifest = save_to_registry(model, registry, "m")
    meta = dict(manifest.metadata, hidden_dim=7)  # weights no longer fit the stated dimensions
    bad = registry.publish("m", {"params.safetensors": registry.read_file(manifest, "params.safetensors")},
                           tasks=["captioning"], framework="numpy", metadata=meta)
    with pytest.raises(ModelCorrupt, match="W_proj"):
        load_from_registry(bad, lambda f: registry.read_file(bad, f))
    with pytest.raises(InvalidInput, match="feature-extraction"):
        save_to_registry(model, registry, "m", encoder=manifest)  # a captioner is not an encoder


SPARSE = {"<NULL>": 0, "<START>": 1, "cat": 3, "<END>": 4, "dog": 9}  # V = 5: index 2 a hole, dog beyond


def test_sparse_vocabulary_is_accepted_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="pixelrpc.models.captioning.captioning_rnn"):
        model = CaptioningRNN(SPARSE, input_dim=4, wordvec_dim=5, hidden_dim=6, seed=7)
    assert "sparse vocabulary" in caplog.text and "'dog' (9)" in caplog.text and "[2]" in caplog.text
    assert model.vocab_size == 5 and model.params["W_embed"].shape == (5, 5)
    assert model.idx_to_word == ["<NULL>", "<START>", "<#2>", "cat", "<END>"] and model.is_sparse
    # decode_ids: words by index, also beyond V-1; holes by their name; stops at <END>.
    assert model.decode_ids([1, 3, 2, 9, 0, 4, 3]) == "cat <#2> dog"
    with pytest.raises(InvalidInput, match="index 7"):
        model.decode_ids([3, 7])
    with pytest.raises(InvalidInput, match="index -1"):
        model.decode_ids([-1])
    with pytest.raises(InvalidInput, match="caption index 9"):  # the model cannot read 'dog'
        model.loss(np.ones((1, 4)), np.array([[1, 9, 4]]))
    assert model.sample(np.ones((2, 4)), max_length=4).shape == (2, 4)  # <START>, <END> below V: decodes
    dense = CaptioningRNN({"<NULL>": 0, "<START>": 1, "<END>": 2}, input_dim=4, wordvec_dim=5, hidden_dim=6)
    assert not dense.is_sparse and "word_to_idx" not in dense.config()


def test_sparse_vocabulary_round_trips_through_the_registry(tmp_path):
    registry = Registry(tmp_path)
    model = CaptioningRNN(SPARSE, input_dim=4, wordvec_dim=5, hidden_dim=6, cell_type="lstm", seed=8)
    manifest = save_to_registry(model, registry, "sparse")
    assert manifest.metadata["word_to_idx"] == SPARSE and manifest.metadata["vocab_size"] == 5
    loaded = ModelCache(registry).get("sparse").model
    assert loaded.word_to_idx == SPARSE and loaded.idx_to_word == model.idx_to_word
    assert loaded.config() == model.config() and loaded.decode_ids([9, 3]) == "dog cat"
    features = np.random.default_rng(2).standard_normal((2, 4))
    np.testing.assert_array_equal(loaded.sample(features, 5), model.sample(features, 5))
    meta = dict(manifest.metadata, word_to_idx={**SPARSE, "extra": 11})  # V = 6: disagrees with the weights
    bad = registry.publish("sparse", {"params.safetensors": registry.read_file(manifest, "params.safetensors")},
                           tasks=["captioning"], framework="numpy", metadata=meta)
    with pytest.raises(ModelCorrupt, match="disagree"):
        load_from_registry(bad, lambda f: registry.read_file(bad, f))


def test_decoding_needs_start_and_end_below_v():
    far = {"<NULL>": 0, "cat": 1, "<START>": 5, "<END>": 2}  # V = 4: <START> cannot be embedded
    model = CaptioningRNN(far, input_dim=4, wordvec_dim=5, hidden_dim=6, seed=9)
    assert model.start_idx is None and model.end_idx == 2
    with pytest.raises(FailedPrecondition, match="<START> has index 5, beyond the V-1 = 3"):
        model.sample(np.ones((1, 4)))
    loss, _ = model.loss(np.ones((1, 4)), np.array([[1, 3, 2]]))  # the loss does not need them
    assert np.isfinite(loss)


@pytest.mark.parametrize(("vocab", "message"), [
    ({"<NULL>": 0, "cat": 0}, "both '<NULL>' and 'cat' to index 0"),
    ({"<NULL>": 0, "cat": -1}, "non-negative integer"),
    ({"<NULL>": 0, "cat": 1.0}, "non-negative integer"),
    ({"cat": 0}, "<NULL> padding token"),
    ({}, "non-empty"),
])
def test_vocabularies_that_cannot_work_are_refused(vocab, message):
    with pytest.raises(ValueError, match=message):
        CaptioningRNN(vocab)
