"""Numeric gradient checking with centred differences.

Used by the tests of every hand-written backward pass. Run checks in float64: with h = 1e-5 the
centred difference ``(f(x + h) - f(x - h)) / 2h`` has truncation error O(h^2) and rounding error
O(eps / h), both far below the 1e-5 relative tolerance the tests use.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Gradient of the scalar ``f()`` with respect to ``x``, by centred differences.

    ``f`` takes no argument: it reads ``x``, which is perturbed in place one entry at a time and
    restored afterwards (so ``f`` may close over a dictionary of parameters that holds ``x``).

    Inputs:
    - f: callable returning a float.
    - x: float array of any shape, changed in place during the call and restored.
    - h: step size.

    Returns an array shaped like ``x``.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    flat_x = x.reshape(-1)  # a view: writes reach x
    flat_grad = grad.reshape(-1)
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + h
        f_plus = f()
        flat_x[i] = old - h
        f_minus = f()
        flat_x[i] = old
        flat_grad[i] = (f_plus - f_minus) / (2.0 * h)
    return grad


def numerical_gradient_array(
    f: Callable[[], np.ndarray], x: np.ndarray, dout: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    """Vector-Jacobian product ``dout . d f / d x`` of an array-valued ``f``, by centred differences.

    Equivalent to ``numerical_gradient(lambda: np.sum(f() * dout), x, h)``: the gradient a backward
    pass should return when the upstream gradient is ``dout``.
    """
    return numerical_gradient(lambda: float(np.sum(f() * dout)), x, h)


def rel_error_elementwise(a: np.ndarray, b: np.ndarray) -> float:
    """``max(|a - b| / max(1e-8, |a| + |b|))`` over all entries (the CS231n check)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def rel_error_norm(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / (||a|| + ||b||)``: robust where single entries are near zero. 0 when both are 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    if denom == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b) / denom)
