"""Recurrent layers for image captioning, in pure numpy (CS231n 2017, assignment 3).

Each ``*_forward`` returns ``(out, cache)`` and each ``*_backward`` takes ``(dout, cache)``; the
backward passes only use what their forward cached and never recompute the forward pass.

Dimension letters, used throughout:

- N: minibatch size
- T: sequence length (time steps)
- D: input dimension (word vector size for the recurrent layers, image feature size for the
  projection)
- H: hidden state size
- V: vocabulary size
- M: output size of an affine layer

Conventions:

- The vanilla RNN uses ``tanh`` (Elman, "Finding structure in time", 1990).
- The LSTM (Hochreiter & Schmidhuber, "Long short-term memory", 1997; with the forget gate of
  Gers et al., 2000) has 4H pre-activations split in the order input i, forget f, output o,
  block input g: ``i, f, o = sigmoid(.)``, ``g = tanh(.)``, ``c_t = f * c_{t-1} + i * g``,
  ``h_t = o * tanh(c_t)``. The initial cell state is zero.
- The temporal softmax loss is summed over time and over all unmasked positions, then divided by N.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- activations


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``, in x's dtype; ``out`` may be ``x`` (in place).

    For large negative x, ``exp(-x)`` overflows to inf and the result is exactly 0, which is the
    correctly rounded value, so the overflow warning is silenced rather than avoided (the branchy
    ``exp(-|x|)`` form costs 6x more).
    """
    out = np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``log(softmax(x))`` along ``axis``, shifted by the maximum so that it never overflows."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# --------------------------------------------------------------------------- affine layers


def affine_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray):
    """Fully connected layer ``out = x w + b`` (used for the image projection to h0).

    Inputs:
    - x: (N, D) inputs
    - w: (D, M) weights
    - b: (M,) biases

    Returns ``(out, cache)``: out (N, M).
    """
    out = x @ w + b  # (N, M)
    return out, (x, w)


def affine_backward(dout: np.ndarray, cache):
    """Backward pass of ``affine_forward``.

    Inputs:
    - dout: (N, M) upstream gradient
    - cache: from ``affine_forward``

    Returns ``dx (N, D), dw (D, M), db (M,)``.
    """
    x, w = cache
    dx = dout @ w.T  # (N, D)
    dw = x.T @ dout  # (D, M)
    db = dout.sum(axis=0)  # (M,)
    return dx, dw, db


def temporal_affine_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray):
    """The same affine layer applied at every time step (hidden states -> vocabulary scores).

    Inputs:
    - x: (N, T, D) inputs
    - w: (D, M) weights
    - b: (M,) biases

    Returns ``(out, cache)``: out (N, T, M).
    """
    N, T, D = x.shape
    out = (x.reshape(N * T, D) @ w).reshape(N, T, -1) + b  # (N, T, M)
    return out, (x, w)


def temporal_affine_backward(dout: np.ndarray, cache):
    """Backward pass of ``temporal_affine_forward``.

    Inputs:
    - dout: (N, T, M) upstream gradient
    - cache: from ``temporal_affine_forward``

    Returns ``dx (N, T, D), dw (D, M), db (M,)``.
    """
    x, w = cache
    N, T, D = x.shape
    M = dout.shape[2]
    dout_flat = dout.reshape(N * T, M)  # (N*T, M)
    dx = (dout_flat @ np.ascontiguousarray(w.T)).reshape(N, T, D)  # (N, T, D)
    dw = x.reshape(N * T, D).T @ dout_flat  # (D, M)
    db = dout_flat.sum(axis=0)  # (M,)
    return dx, dw, db


# --------------------------------------------------------------------------- word embedding


def word_embedding_forward(x: np.ndarray, W: np.ndarray):
    """Look up the vector of each word index.

    Inputs:
    - x: (N, T) integer word indices in [0, V)
    - W: (V, D) word vectors

    Returns ``(out, cache)``: out (N, T, D).
    """
    out = W[x]  # (N, T, D)
    return out, (x, W.shape, W.dtype)


def word_embedding_backward(dout: np.ndarray, cache):
    """Backward pass of ``word_embedding_forward``; a word used several times accumulates.

    Inputs:
    - dout: (N, T, D) upstream gradient
    - cache: from ``word_embedding_forward``

    Returns ``dW`` (V, D).
    """
    x, w_shape, w_dtype = cache
    dW = np.zeros(w_shape, dtype=w_dtype)
    np.add.at(dW, x.reshape(-1), dout.reshape(-1, w_shape[1]))  # unbuffered: repeats add up
    return dW


# --------------------------------------------------------------------------- vanilla RNN


def rnn_step_forward(x: np.ndarray, prev_h: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray):
    """One time step of a tanh RNN: ``next_h = tanh(x Wx + prev_h Wh + b)``.

    Inputs:
    - x: (N, D) inputs at this step
    - prev_h: (N, H) previous hidden state
    - Wx: (D, H) input-to-hidden weights
    - Wh: (H, H) hidden-to-hidden weights
    - b: (H,) biases

    Returns ``(next_h, cache)``: next_h (N, H).
    """
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)  # (N, H)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h: np.ndarray, cache):
    """Backward pass of ``rnn_step_forward``.

    Inputs:
    - dnext_h: (N, H) gradient of the loss with respect to next_h
    - cache: from ``rnn_step_forward``

    Returns ``dx (N, D), dprev_h (N, H), dWx (D, H), dWh (H, H), db (H,)``.
    """
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1.0 - next_h**2)  # (N, H) through tanh, from the cached output
    dx = da @ Wx.T  # (N, D)
    dprev_h = da @ Wh.T  # (N, H)
    dWx = x.T @ da  # (D, H)
    dWh = prev_h.T @ da  # (H, H)
    db = da.sum(axis=0)  # (H,)
    return dx, dprev_h, dWx, dWh, db


def rnn_forward(x: np.ndarray, h0: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray):
    """A tanh RNN over a whole sequence.

    The input projection ``x Wx + b`` of all T steps is one matrix product; only the recurrence
    ``h_{t-1} Wh`` runs step by step, on time-major arrays so that every step reads contiguous
    memory. The result equals looping ``rnn_step_forward``.

    Inputs:
    - x: (N, T, D) input sequence
    - h0: (N, H) initial hidden state
    - Wx: (D, H) input-to-hidden weights
    - Wh: (H, H) hidden-to-hidden weights
    - b: (H,) biases

    Returns ``(h, cache)``: h (N, T, H), the hidden state at every step.
    """
    N, T, D = x.shape
    H = h0.shape[1]
    x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))  # (T, N, D) time-major
    a = (x_tm.reshape(T * N, D) @ Wx).reshape(T, N, H) + b  # (T, N, H) input part of the pre-activations
    h_tm = np.empty((T + 1, N, H), dtype=np.result_type(a, h0))  # h_tm[t + 1] = h_t, h_tm[0] = h0
    h_tm[0] = h0
    for t in range(T):
        np.tanh(a[t] + h_tm[t] @ Wh, out=h_tm[t + 1])  # (N, H)
    return h_tm[1:].transpose(1, 0, 2), (x_tm, Wx, Wh, h_tm)  # (N, T, H)


def rnn_backward(dh: np.ndarray, cache):
    """Backward pass of ``rnn_forward``, back-propagating through time.

    Only ``dh_{t-1} = da_t Wh^T`` is sequential; the weight gradients are one matrix product each
    over all steps.

    Inputs:
    - dh: (N, T, H) upstream gradient of every hidden state
    - cache: from ``rnn_forward``

    Returns ``dx (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,)``.
    """
    x_tm, Wx, Wh, h_tm = cache
    T, N, D = x_tm.shape
    H = h_tm.shape[2]
    dh_tm = dh.transpose(1, 0, 2)  # (T, N, H)
    da = np.empty((T, N, H), dtype=h_tm.dtype)  # gradient of the pre-activations
    dnext_h = np.zeros((N, H), dtype=h_tm.dtype)  # gradient flowing back through the recurrence
    for t in reversed(range(T)):
        np.multiply(dh_tm[t] + dnext_h, 1.0 - h_tm[t + 1] ** 2, out=da[t])  # (N, H) through tanh
        dnext_h = da[t] @ Wh.T  # (N, H)
    da_flat = da.reshape(T * N, H)  # (T*N, H)
    dx = (da_flat @ Wx.T).reshape(T, N, D).transpose(1, 0, 2)  # (N, T, D)
    dWx = x_tm.reshape(T * N, D).T @ da_flat  # (D, H)
    dWh = h_tm[:-1].reshape(T * N, H).T @ da_flat  # (H, H): sum over t of h_{t-1}^T da_t
    db = da_flat.sum(axis=0)  # (H,)
    return dx, dnext_h, dWx, dWh, db


# --------------------------------------------------------------------------- LSTM


def _lstm_gates(a: np.ndarray, H: int):
    """Split 4H pre-activations (…, 4H) into gate activations i, f, o, g, each (…, H)."""
    ifo = sigmoid(a[..., : 3 * H])  # (..., 3H)
    g = np.tanh(a[..., 3 * H :])  # (..., H)
    return ifo[..., :H], ifo[..., H : 2 * H], ifo[..., 2 * H :], g


def _lstm_gate_grads(dc, dnext_h, i, f, o, g, prev_c, tanh_c):
    """Gradients of the 4H pre-activations of one step, and of the previous cell state.

    ``dc`` is the gradient reaching ``c_t`` from the next step; ``dnext_h`` the gradient of ``h_t``.
    Every input is (N, H); returns ``da (N, 4H), dprev_c (N, H)``.
    """
    dc = dc + dnext_h * o * (1.0 - tanh_c**2)  # (N, H) total gradient of c_t
    di = dc * g * i * (1.0 - i)
    df = dc * prev_c * f * (1.0 - f)
    do = dnext_h * tanh_c * o * (1.0 - o)
    dg = dc * i * (1.0 - g**2)
    da = np.concatenate([di, df, do, dg], axis=1)  # (N, 4H)
    return da, dc * f


def lstm_step_forward(
    x: np.ndarray, prev_h: np.ndarray, prev_c: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
):
    """One time step of an LSTM (gate order i, f, o, g).

    Inputs:
    - x: (N, D) inputs at this step
    - prev_h: (N, H) previous hidden state
    - prev_c: (N, H) previous cell state
    - Wx: (D, 4H) input-to-hidden weights
    - Wh: (H, 4H) hidden-to-hidden weights
    - b: (4H,) biases

    Returns ``(next_h, next_c, cache)``: next_h (N, H), next_c (N, H).
    """
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b  # (N, 4H)
    i, f, o, g = _lstm_gates(a, H)  # 4 x (N, H)
    next_c = f * prev_c + i * g  # (N, H)
    tanh_c = np.tanh(next_c)
    next_h = o * tanh_c  # (N, H)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c)


def lstm_step_backward(dnext_h: np.ndarray, dnext_c: np.ndarray, cache):
    """Backward pass of ``lstm_step_forward``.

    Inputs:
    - dnext_h: (N, H) gradient of the next hidden state
    - dnext_c: (N, H) gradient of the next cell state
    - cache: from ``lstm_step_forward``

    Returns ``dx (N, D), dprev_h (N, H), dprev_c (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)``.
    """
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c = cache
    da, dprev_c = _lstm_gate_grads(dnext_c, dnext_h, i, f, o, g, prev_c, tanh_c)  # (N, 4H), (N, H)
    dx = da @ Wx.T  # (N, D)
    dprev_h = da @ Wh.T  # (N, H)
    dWx = x.T @ da  # (D, 4H)
    dWh = prev_h.T @ da  # (H, 4H)
    db = da.sum(axis=0)  # (4H,)
    return dx, dprev_h, dprev_c, dWx, dWh, db


def lstm_forward(x: np.ndarray, h0: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray):
    """An LSTM over a whole sequence; the initial cell state is zero.

    As in ``rnn_forward``, the input projection of all T steps is one matrix product and only the
    recurrence runs step by step. The steps work *feature-major*: a step's pre-activations are a
    (4H, N) block, so each gate is one contiguous (H, N) slice (element-wise math on contiguous
    memory costs about a quarter of the same math on the strided gate columns of an (N, 4H) block),
    and the recurrent product ``Wh^T h_{t-1}`` takes N as its short dimension, which OpenBLAS runs
    faster than ``h_{t-1} Wh`` (measured in the review of issue 11: the training step 132 -> 126 ms,
    bitwise the same numbers).

    Inputs:
    - x: (N, T, D) input sequence
    - h0: (N, H) initial hidden state
    - Wx: (D, 4H) input-to-hidden weights
    - Wh: (H, 4H) hidden-to-hidden weights
    - b: (4H,) biases

    Returns ``(h, cache)``: h (N, T, H), the hidden state at every step (a transposed view).
    """
    N, T, D = x.shape
    H = h0.shape[1]
    x_fm = np.ascontiguousarray(x.transpose(2, 1, 0)).reshape(D, T * N)  # (D, T*N): column t*N + n is x[n, t]
    a = Wx.T @ x_fm  # (4H, T*N) input part of the pre-activations
    a += b[:, None]
    dtype = np.result_type(a, h0)
    gates = np.empty((T, 4 * H, N), dtype=dtype)  # i, f, o, g activations at every step
    c_fm = np.zeros((T + 1, H, N), dtype=dtype)  # c_fm[t + 1] = c_t^T, c_fm[0] = 0
    tanh_c = np.empty((T, H, N), dtype=dtype)
    h_fm = np.empty((T + 1, H, N), dtype=dtype)  # h_fm[t + 1] = h_t^T, h_fm[0] = h0^T
    h_fm[0] = h0.T
    ig = np.empty((H, N), dtype=dtype)  # scratch for i * g
    for t in range(T):
        pre = gates[t]  # (4H, N): pre-activations, then (in place) the gate activations
        np.matmul(Wh.T, h_fm[t], out=pre)
        pre += a[:, t * N: (t + 1) * N]
        sigmoid(pre[: 3 * H], out=pre[: 3 * H])
        np.tanh(pre[3 * H:], out=pre[3 * H:])
        i, f, o, g = (pre[k * H: (k + 1) * H] for k in range(4))  # 4 x (H, N)
        np.multiply(f, c_fm[t], out=c_fm[t + 1])
        c_fm[t + 1] += np.multiply(i, g, out=ig)
        np.tanh(c_fm[t + 1], out=tanh_c[t])
        np.multiply(o, tanh_c[t], out=h_fm[t + 1])  # (H, N)
    return h_fm[1:].transpose(2, 0, 1), (x_fm, Wx, Wh, gates, c_fm, tanh_c, h_fm)  # (N, T, H)


def lstm_backward(dh: np.ndarray, cache):
    """Backward pass of ``lstm_forward``, back-propagating through time (feature-major, as the
    forward pass).

    Only the recurrence is sequential; the weight gradients are one matrix product each.

    Inputs:
    - dh: (N, T, H) upstream gradient of every hidden state
    - cache: from ``lstm_forward``

    Returns ``dx (N, T, D), dh0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)``.
    """
    x_fm, Wx, Wh, gates, c_fm, tanh_c, h_fm = cache
    T, G, N = gates.shape  # G = 4H
    H, D = G // 4, x_fm.shape[0]
    dtype = h_fm.dtype
    dh_fm = np.ascontiguousarray(dh.transpose(1, 2, 0))  # (T, H, N)
    da = np.empty((T, G, N), dtype=dtype)  # gradient of the pre-activations
    dnext_h = np.zeros((H, N), dtype=dtype)  # through the recurrence
    dnext_c = np.zeros((H, N), dtype=dtype)
    dc = np.empty((H, N), dtype=dtype)  # scratch: total gradient of c_t
    tmp = np.empty((H, N), dtype=dtype)
    for t in reversed(range(T)):
        i, f, o, g = (gates[t, k * H: (k + 1) * H] for k in range(4))  # 4 x (H, N)
        di, df, do, dg = (da[t, k * H: (k + 1) * H] for k in range(4))  # views of da[t]
        dh_t = np.add(dh_fm[t], dnext_h, out=dnext_h)  # (H, N) total gradient of h_t
        tc = tanh_c[t]
        # dc = dnext_c + dh_t * o * (1 - tanh_c^2)
        np.multiply(tc, tc, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        tmp *= o
        tmp *= dh_t
        np.add(dnext_c, tmp, out=dc)
        # do = dh_t * tanh_c * o * (1 - o)
        np.subtract(1.0, o, out=do)
        do *= o
        do *= tc
        do *= dh_t
        # di = dc * g * i * (1 - i)
        np.subtract(1.0, i, out=di)
        di *= i
        di *= g
        di *= dc
        # df = dc * c_{t-1} * f * (1 - f)
        np.subtract(1.0, f, out=df)
        df *= f
        df *= c_fm[t]
        df *= dc
        # dg = dc * i * (1 - g^2)
        np.multiply(g, g, out=dg)
        np.subtract(1.0, dg, out=dg)
        dg *= i
        dg *= dc
        np.multiply(dc, f, out=dnext_c)  # gradient reaching c_{t-1}
        dnext_h = np.matmul(Wh, da[t])  # (H, N)
    da_all = np.ascontiguousarray(da.transpose(1, 0, 2)).reshape(G, T * N)  # (4H, T*N), columns as x_fm's
    dx = (Wx @ da_all).reshape(D, T, N).transpose(2, 1, 0)  # (N, T, D)
    dWx = x_fm @ da_all.T  # (D, 4H)
    h_prev = np.ascontiguousarray(h_fm[:-1].transpose(1, 0, 2)).reshape(H, T * N)  # (H, T*N): h_{t-1}
    dWh = h_prev @ da_all.T  # (H, 4H): sum over t of h_{t-1}^T da_t
    db = da_all.sum(axis=1)  # (4H,)
    return dx, np.ascontiguousarray(dnext_h.T), dWx, dWh, db


# --------------------------------------------------------------------------- loss


def temporal_softmax_loss(x: np.ndarray, y: np.ndarray, mask: np.ndarray):
    """Softmax cross-entropy at every time step, summed over time and unmasked positions, over N.

    Inputs:
    - x: (N, T, V) scores
    - y: (N, T) integer targets in [0, V)
    - mask: (N, T) booleans; False positions (padding) do not count

    Returns ``(loss, dx)``: a float and dx (N, T, V).
    """
    N, T, V = x.shape
    x_flat = x.reshape(N * T, V)  # (N*T, V)
    y_flat = y.reshape(N * T)
    mask_flat = mask.reshape(N * T).astype(x.dtype)  # (N*T,)
    logp = log_softmax(x_flat, axis=1)  # (N*T, V)
    rows = np.arange(N * T)
    loss = -np.sum(mask_flat * logp[rows, y_flat]) / N
    dx_flat = np.exp(logp)  # (N*T, V) softmax probabilities
    dx_flat[rows, y_flat] -= 1.0
    dx_flat *= mask_flat[:, None] / N
    return float(loss), dx_flat.reshape(N, T, V)
