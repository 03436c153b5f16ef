"""The RNN/LSTM captioning half of CS231n 2017 assignment 3, with the assignment's signatures.

``cs231n/rnn_layers.py``, ``cs231n/classifiers/rnn.py``, the ``affine_*`` layers the captioner takes
from ``cs231n/layers.py``, and the checker of ``cs231n/gradient_check.py``: thin adapters over
``pixelrpc.models.captioning`` and ``pixelrpc.models.gradcheck`` (no second implementation).

Dimension letters as in ``pixelrpc.models.captioning.rnn_layers``: N minibatch, T time steps,
D input size, H hidden size, V vocabulary size, M output size of an affine layer.
"""

from __future__ import annotations

import logging

import numpy as np

from pixelrpc.models import gradcheck
from pixelrpc.models.captioning import captioning_rnn
from pixelrpc.models.captioning import rnn_layers as L

log = logging.getLogger(__name__)

# The recurrent layers have exactly the assignment's signatures and return values: the domain
# functions themselves.
rnn_step_forward = L.rnn_step_forward
rnn_step_backward = L.rnn_step_backward
rnn_forward = L.rnn_forward
rnn_backward = L.rnn_backward
word_embedding_forward = L.word_embedding_forward
word_embedding_backward = L.word_embedding_backward
lstm_step_forward = L.lstm_step_forward
lstm_step_backward = L.lstm_step_backward
lstm_forward = L.lstm_forward
lstm_backward = L.lstm_backward
temporal_affine_forward = L.temporal_affine_forward
temporal_affine_backward = L.temporal_affine_backward


def sigmoid(x):
    """The assignment's numerically stable logistic function, a new array (integers become floats)."""
    x = np.asarray(x)
    return L.sigmoid(x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64))


def temporal_softmax_loss(x, y, mask, verbose=False):
    """Softmax loss summed over the unmasked time steps, divided by N (the assignment's signature).

    Inputs: x (N, T, V) scores; y (N, T) targets in [0, V); mask (N, T) booleans; verbose logs the
    shape of the gradient (the assignment prints it) at INFO level.

    Returns ``(loss, dx)``: a float and dx (N, T, V).
    """
    loss, dx = L.temporal_softmax_loss(np.asarray(x), np.asarray(y), np.asarray(mask))
    if verbose:
        log.info("dx_flat: %s", (dx.shape[0] * dx.shape[1], dx.shape[2]))
    return loss, dx


def affine_forward(x, w, b):
    """``cs231n/layers.py``'s affine layer: x (N, d_1, ..., d_k) is flattened to (N, D) first.

    Inputs: x (N, d_1, ..., d_k); w (D, M); b (M,). Returns ``(out, cache)``: out (N, M).
    """
    x = np.asarray(x)
    out, cache = L.affine_forward(x.reshape(x.shape[0], -1), w, b)
    return out, (cache, x.shape)


def affine_backward(dout, cache):
    """Backward pass of ``affine_forward``: returns dx (N, d_1, ..., d_k), dw (D, M), db (M,)."""
    inner, x_shape = cache
    dx, dw, db = L.affine_backward(dout, inner)
    return dx.reshape(x_shape), dw, db


class CaptioningRNN(captioning_rnn.CaptioningRNN):
    """``cs231n.classifiers.rnn.CaptioningRNN``: PixelRPC's captioner itself.

    ``CaptioningRNN(word_to_idx, input_dim=512, wordvec_dim=128, hidden_dim=128, cell_type='rnn',
    dtype=np.float32)``; ``.params`` has the assignment's keys (``W_proj``, ``b_proj``, ``W_embed``,
    ``Wx``, ``Wh``, ``b``, ``W_vocab``, ``b_vocab``); ``.loss(features, captions)`` returns
    ``(loss, grads)``; ``.sample(features, max_length=30)`` returns an int array (N, max_length).
    Any vocabulary of the assignment works, sparse ones included (V = len(word_to_idx)); sampling
    needs ``<START>`` and ``<END>`` (FailedPrecondition otherwise).

    The one difference in behaviour: without ``seed``, the initial weights are drawn from a seed
    taken from numpy's global generator, so ``np.random.seed(231)`` before building the model makes
    them reproducible, as the notebook expects (the values differ from the assignment's own
    ``np.random.randn`` draws). After ``<END>``, ``sample`` pads a row with ``<NULL>``, which
    ``decode_captions`` never shows.
    """

    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=128, hidden_dim=128, cell_type="rnn",
                 dtype=np.float32, *, seed=None):
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        super().__init__(word_to_idx, input_dim=input_dim, wordvec_dim=wordvec_dim, hidden_dim=hidden_dim,
                         cell_type=cell_type, dtype=dtype, seed=seed)


# ------------------------------------------------------------------------- cs231n/gradient_check.py
def _check_in_place(x) -> np.ndarray:
    if not isinstance(x, np.ndarray) or not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError("x must be a writeable C-contiguous numpy array: the checker perturbs it in place, "
                         "one entry at a time, and f must read it")
    return x


def eval_numerical_gradient(f, x, verbose=True, h=0.00001):
    """Centred-difference gradient of the scalar ``f(x)`` with respect to ``x`` (perturbed in place).

    ``verbose`` logs each entry's value at DEBUG level (the assignment prints it). Returns an array
    shaped like x (float64).
    """
    x = _check_in_place(x)
    grad = gradcheck.numerical_gradient(lambda: float(f(x)), x, h)
    if verbose:
        for ix in np.ndindex(*x.shape):
            log.debug("%s %s", ix, grad[ix])
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Numeric ``df . d f(x) / d x`` of an array-valued ``f`` (``x`` perturbed in place).

    Returns an array shaped like x (float64).
    """
    x = _check_in_place(x)
    return gradcheck.numerical_gradient_array(lambda: f(x), x, np.asarray(df), h)


def rel_error(x, y):
    """``max(|x - y| / max(1e-8, |x| + |y|))``, the notebooks' relative error."""
    return gradcheck.rel_error_elementwise(x, y)
