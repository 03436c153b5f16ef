"""Recurrent layers: hand-computed forward values and float64 numeric gradient checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixelrpc.models.captioning import rnn_layers as L
from pixelrpc.models.gradcheck import numerical_gradient, numerical_gradient_array, rel_error_elementwise

H_LAYER = 1e-5
TOL = 1e-5


@pytest.fixture
def rng():
    return np.random.default_rng(231)


def assert_grads_match(f, inputs: dict[str, np.ndarray], dout: np.ndarray, analytic: dict[str, np.ndarray]):
    for name, x in inputs.items():
        num = numerical_gradient_array(f, x, dout, h=H_LAYER)
        err = rel_error_elementwise(num, analytic[name])
        assert err < TOL, f"d{name}: relative error {err:.2e}"


# ----------------------------------------------------------------------------- forward values


def test_rnn_step_forward_hand_computed():
    x = np.array([[1.0, 2.0]])
    prev_h = np.array([[-1.0]])
    Wx = np.array([[0.5], [0.25]])
    Wh = np.array([[1.0]])
    b = np.array([0.5])
    next_h, _ = L.rnn_step_forward(x, prev_h, Wx, Wh, b)
    # 1*0.5 + 2*0.25 - 1*1 + 0.5 = 0.5
    assert next_h.shape == (1, 1)
    assert next_h[0, 0] == pytest.approx(math.tanh(0.5), abs=1e-15)


def test_lstm_step_forward_gate_order_is_i_f_o_g():
    # One hidden unit, no input weights: the pre-activations are b = [0, ln 3, -ln 3, ln 2]
    # -> i = 1/2, f = 3/4, o = 1/4, g = tanh(ln 2) = 3/5.
    x = np.zeros((1, 2))
    prev_h = np.zeros((1, 1))
    prev_c = np.array([[2.0]])
    Wx = np.zeros((2, 4))
    Wh = np.zeros((1, 4))
    b = np.array([0.0, math.log(3), -math.log(3), math.log(2)])
    next_h, next_c, _ = L.lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b)
    expected_c = 0.75 * 2.0 + 0.5 * 0.6  # f * c + i * g = 1.8
    assert next_c[0, 0] == pytest.approx(expected_c, abs=1e-14)
    assert next_h[0, 0] == pytest.approx(0.25 * math.tanh(expected_c), abs=1e-14)


def test_lstm_forward_starts_from_a_zero_cell():
    # With f = 1 the cell accumulates i * g from zero: c_t = t * i * g.
    T = 3
    x = np.zeros((1, T, 1))
    h0 = np.zeros((1, 1))
    b = np.array([50.0, 50.0, 50.0, math.log(2)])  # i = f = o = 1 (to 1e-21), g = 0.6
    h, _ = L.lstm_forward(x, h0, np.zeros((1, 4)), np.zeros((1, 4)), b)
    expected = [math.tanh(0.6 * (t + 1)) for t in range(T)]
    np.testing.assert_allclose(h[0, :, 0], expected, atol=1e-12)


def test_sequence_forward_equals_looped_steps(rng):
    N, T, D, H = 3, 5, 4, 6
    x = rng.standard_normal((N, T, D))
    h0 = rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, H)), rng.standard_normal((H, H)) * 0.5, rng.standard_normal(H)
    h, _ = L.rnn_forward(x, h0, Wx, Wh, b)
    prev = h0
    for t in range(T):
        prev, _ = L.rnn_step_forward(x[:, t], prev, Wx, Wh, b)
        np.testing.assert_allclose(h[:, t], prev, rtol=1e-12, atol=1e-12)

    Wx4, Wh4, b4 = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H)) * 0.5, rng.standard_normal(4 * H)
    h, _ = L.lstm_forward(x, h0, Wx4, Wh4, b4)
    prev_h, prev_c = h0, np.zeros_like(h0)
    for t in range(T):
        prev_h, prev_c, _ = L.lstm_step_forward(x[:, t], prev_h, prev_c, Wx4, Wh4, b4)
        np.testing.assert_allclose(h[:, t], prev_h, rtol=1e-12, atol=1e-12)


def test_word_embedding_forward_looks_up_rows():
    W = np.arange(12, dtype=np.float64).reshape(4, 3)
    x = np.array([[0, 3, 3], [2, 1, 0]])
    out, _ = L.word_embedding_forward(x, W)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 1], [9, 10, 11])
    np.testing.assert_array_equal(out[1, 0], [6, 7, 8])


def test_word_embedding_backward_accumulates_repeated_words():
    W = np.zeros((4, 2))
    x = np.array([[1, 1, 3]])
    _, cache = L.word_embedding_forward(x, W)
    dout = np.array([[[1.0, 2.0], [10.0, 20.0], [5.0, 5.0]]])
    dW = L.word_embedding_backward(dout, cache)
    np.testing.assert_array_equal(dW, [[0, 0], [11, 22], [0, 0], [5, 5]])


def test_temporal_softmax_loss_hand_computed():
    N, T, V = 2, 3, 5
    x = np.zeros((N, T, V))  # uniform: every counted position costs ln V
    y = np.zeros((N, T), dtype=int)
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    loss, dx = L.temporal_softmax_loss(x, y, mask)
    assert loss == pytest.approx(3 * math.log(V) / N, rel=1e-14)
    np.testing.assert_allclose(dx[0, 0], np.array([0.2 - 1, 0.2, 0.2, 0.2, 0.2]) / N, atol=1e-15)
    assert np.all(dx[0, 2] == 0) and np.all(dx[1, 1:] == 0)


def test_temporal_softmax_loss_scales_like_the_assignment(rng):
    # Loss of random scores over V classes is about T * ln V (all unmasked) and ~T * p * ln V (masked p).
    N, T, V = 1000, 10, 10
    x = 0.001 * rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    assert L.temporal_softmax_loss(x, y, np.ones((N, T), bool))[0] == pytest.approx(T * math.log(V), rel=1e-3)
    mask = rng.random((N, T)) <= 0.1
    assert L.temporal_softmax_loss(x, y, mask)[0] == pytest.approx(mask.sum() / N * math.log(V), rel=1e-3)


def test_activations_are_stable_for_large_inputs():
    big = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = L.sigmoid(big)
        np.testing.assert_allclose(s, [0.0, math.exp(-50) / (1 + math.exp(-50)), 0.5, 1 / (1 + math.exp(-50)), 1.0],
                                   rtol=1e-12, atol=0)
        lp = L.log_softmax(np.array([[1000.0, 0.0, -1000.0]]))
        np.testing.assert_allclose(lp, [[0.0, -1000.0, -2000.0]], atol=1e-12)
        loss, dx = L.temporal_softmax_loss(np.array([[[1000.0, -1000.0]]]), np.array([[1]]), np.ones((1, 1), bool))
        assert loss == pytest.approx(2000.0) and np.all(np.isfinite(dx))
        h, c, _ = L.lstm_step_forward(np.ones((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)),
                                      np.full((1, 4), 1e4), np.zeros((1, 4)), np.zeros(4))
    assert np.isfinite(h).all() and np.isfinite(c).all()
    assert L.sigmoid(np.array([-100.0], dtype=np.float32)).dtype == np.float32


# ----------------------------------------------------------------------------- gradients


def test_affine_gradients(rng):
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    out, cache = L.affine_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = L.affine_backward(dout, cache)
    assert_grads_match(lambda: L.affine_forward(x, w, b)[0], {"x": x, "w": w, "b": b}, dout,
                       {"x": dx, "w": dw, "b": db})


def test_temporal_affine_gradients(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    out, cache = L.temporal_affine_forward(x, w, b)
    assert out.shape == (2, 3, 5)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = L.temporal_affine_backward(dout, cache)
    assert_grads_match(lambda: L.temporal_affine_forward(x, w, b)[0], {"x": x, "w": w, "b": b}, dout,
                       {"x": dx, "w": dw, "b": db})


def test_word_embedding_gradient(rng):
    x = rng.integers(0, 5, size=(3, 4))
    W = rng.standard_normal((5, 3))
    out, cache = L.word_embedding_forward(x, W)
    dout = rng.standard_normal(out.shape)
    dW = L.word_embedding_backward(dout, cache)
    assert_grads_match(lambda: L.word_embedding_forward(x, W)[0], {"W": W}, dout, {"W": dW})


def test_rnn_step_gradients(rng):
    N, D, H = 4, 5, 6
    x, h = rng.standard_normal((N, D)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, H)), rng.standard_normal((H, H)), rng.standard_normal(H)
    out, cache = L.rnn_step_forward(x, h, Wx, Wh, b)
    dout = rng.standard_normal(out.shape)
    grads = dict(zip(["x", "h", "Wx", "Wh", "b"], L.rnn_step_backward(dout, cache), strict=True))
    assert_grads_match(lambda: L.rnn_step_forward(x, h, Wx, Wh, b)[0],
                       {"x": x, "h": h, "Wx": Wx, "Wh": Wh, "b": b}, dout, grads)


def test_rnn_sequence_gradients(rng):
    N, T, D, H = 2, 5, 3, 4
    x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, H)), rng.standard_normal((H, H)), rng.standard_normal(H)
    out, cache = L.rnn_forward(x, h0, Wx, Wh, b)
    dout = rng.standard_normal(out.shape)
    grads = dict(zip(["x", "h0", "Wx", "Wh", "b"], L.rnn_backward(dout, cache), strict=True))
    assert_grads_match(lambda: L.rnn_forward(x, h0, Wx, Wh, b)[0],
                       {"x": x, "h0": h0, "Wx": Wx, "Wh": Wh, "b": b}, dout, grads)


def test_lstm_step_gradients(rng):
    N, D, H = 4, 5, 6
    x, h, c = rng.standard_normal((N, D)), rng.standard_normal((N, H)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H)), rng.standard_normal(4 * H)
    next_h, next_c, cache = L.lstm_step_forward(x, h, c, Wx, Wh, b)
    dnext_h, dnext_c = rng.standard_normal(next_h.shape), rng.standard_normal(next_c.shape)
    analytic = dict(zip(["x", "h", "c", "Wx", "Wh", "b"], L.lstm_step_backward(dnext_h, dnext_c, cache), strict=True))
    inputs = {"x": x, "h": h, "c": c, "Wx": Wx, "Wh": Wh, "b": b}

    def both():  # the loss sees both outputs: sum(next_h * dnext_h) + sum(next_c * dnext_c)
        nh, nc, _ = L.lstm_step_forward(x, h, c, Wx, Wh, b)
        return float(np.sum(nh * dnext_h) + np.sum(nc * dnext_c))

    for name, value in inputs.items():
        err = rel_error_elementwise(numerical_gradient(both, value, h=H_LAYER), analytic[name])
        assert err < TOL, f"d{name}: relative error {err:.2e}"


def test_lstm_sequence_gradients(rng):
    N, T, D, H = 2, 4, 3, 5
    x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H)), rng.standard_normal(4 * H)
    out, cache = L.lstm_forward(x, h0, Wx, Wh, b)
    dout = rng.standard_normal(out.shape)
    grads = dict(zip(["x", "h0", "Wx", "Wh", "b"], L.lstm_backward(dout, cache), strict=True))
    assert_grads_match(lambda: L.lstm_forward(x, h0, Wx, Wh, b)[0],
                       {"x": x, "h0": h0, "Wx": Wx, "Wh": Wh, "b": b}, dout, grads)


def test_temporal_softmax_loss_gradient(rng):
    N, T, V = 3, 4, 6
    x = rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    _, dx = L.temporal_softmax_loss(x, y, mask)
    num = numerical_gradient(lambda: L.temporal_softmax_loss(x, y, mask)[0], x, h=H_LAYER)
    assert rel_error_elementwise(num, dx) < TOL


def test_backward_does_not_run_the_forward_pass(rng, monkeypatch):
    # A backward pass must use its cache: make every forward entry point fail and run them.
    N, T, D, H = 2, 3, 3, 4
    x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H)), rng.standard_normal(4 * H)
    _, lstm_cache = L.lstm_forward(x, h0, Wx, Wh, b)
    _, _, step_cache = L.lstm_step_forward(x[:, 0], h0, h0, Wx, Wh, b)
    _, rnn_cache = L.rnn_forward(x, h0, Wx[:, :H], Wh[:, :H], b[:H])

    def boom(*a, **k):
        raise AssertionError("backward recomputed the forward pass")

    for name in ("sigmoid", "_lstm_gates", "lstm_step_forward", "lstm_forward", "rnn_step_forward", "rnn_forward"):
        monkeypatch.setattr(L, name, boom)
    monkeypatch.setattr(L.np, "tanh", boom)
    L.lstm_backward(np.ones((N, T, H)), lstm_cache)
    L.lstm_step_backward(np.ones((N, H)), np.ones((N, H)), step_cache)
    L.rnn_backward(np.ones((N, T, H)), rnn_cache)
