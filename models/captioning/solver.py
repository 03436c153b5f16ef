"""Minibatch training of a ``CaptioningRNN``: Adam with per-epoch learning-rate decay.

Adam: Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015 (with bias correction).
``CaptioningSolver.steps()`` is a generator that yields after every iteration, so a caller can
show progress, stop between two steps, or run validation at the end of each epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


def adam(w: np.ndarray, dw: np.ndarray, config: dict | None = None) -> tuple[np.ndarray, dict]:
    """One Adam update of a parameter ``w`` (any shape) with gradient ``dw`` (same shape).

    ``config`` holds ``learning_rate`` (1e-3), ``beta1`` (0.9), ``beta2`` (0.999), ``epsilon``
    (1e-8) and the state ``m``, ``v``, ``t``, which the returned config carries to the next call.
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("m", np.zeros_like(w))
    config.setdefault("v", np.zeros_like(w))
    config.setdefault("t", 0)
    b1, b2 = config["beta1"], config["beta2"]
    config["t"] += 1
    config["m"] = b1 * config["m"] + (1 - b1) * dw
    config["v"] = b2 * config["v"] + (1 - b2) * dw**2
    m_hat = config["m"] / (1 - b1 ** config["t"])
    v_hat = config["v"] / (1 - b2 ** config["t"])
    next_w = w - config["learning_rate"] * m_hat / (np.sqrt(v_hat) + config["epsilon"])
    return next_w.astype(w.dtype, copy=False), config


def sgd(w: np.ndarray, dw: np.ndarray, config: dict | None = None) -> tuple[np.ndarray, dict]:
    """Plain gradient descent ``w - learning_rate * dw`` (``learning_rate`` default 1e-2)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    return (w - config["learning_rate"] * dw).astype(w.dtype, copy=False), config


UPDATE_RULES: dict[str, Callable] = {"adam": adam, "sgd": sgd}


@dataclass(frozen=True)
class SolverStep:
    """What one iteration did."""

    iteration: int  # 1-based, over the whole run
    epoch: int  # 1-based
    loss: float
    learning_rate: float
    epoch_end: bool  # True on the last iteration of an epoch (after which the rate decays)


class CaptioningSolver:
    """Train ``model`` on ``data`` (anything with ``num_captions`` and ``minibatches(batch_size, rng)``
    yielding ``(captions (N, T + 1), features (N, D))``, e.g. ``CaptionSplit`` or ``ArrayCaptions``).

    Each epoch visits every caption once in a seeded random order; after each epoch every
    parameter's learning rate is multiplied by ``lr_decay``.
    """

    def __init__(self, model, data, *, update_rule: str = "adam", learning_rate: float = 1e-3,
                 lr_decay: float = 1.0, batch_size: int = 100, num_epochs: int = 10, seed: int = 0,
                 max_iterations: int | None = None):
        if update_rule not in UPDATE_RULES:
            raise ValueError(f"unknown update rule {update_rule!r}: expected one of {', '.join(UPDATE_RULES)}")
        if batch_size < 1 or num_epochs < 1 or learning_rate <= 0 or not 0 < lr_decay <= 1:
            raise ValueError("batch_size and num_epochs must be >= 1, learning_rate > 0, lr_decay in (0, 1]")
        self.model, self.data = model, data
        self.update = UPDATE_RULES[update_rule]
        self.lr_decay, self.batch_size, self.num_epochs = lr_decay, batch_size, num_epochs
        self.max_iterations = max_iterations
        self.rng = np.random.default_rng(seed)
        self.optim_configs = {k: {"learning_rate": learning_rate} for k in model.params}
        self.loss_history: list[float] = []

    @property
    def learning_rate(self) -> float:
        return float(next(iter(self.optim_configs.values()))["learning_rate"])

    def iterations_per_epoch(self) -> int:
        return -(-self.data.num_captions // self.batch_size)

    def total_iterations(self) -> int:
        total = self.iterations_per_epoch() * self.num_epochs
        return min(total, self.max_iterations) if self.max_iterations else total

    def step(self, captions: np.ndarray, features: np.ndarray) -> float:
        """One update on a minibatch (captions (N, T + 1), features (N, D)); returns its loss."""
        loss, grads = self.model.loss(features, captions)
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss}; lower the learning rate")
        for key, w in self.model.params.items():
            self.model.params[key], self.optim_configs[key] = self.update(w, grads[key], self.optim_configs[key])
        self.loss_history.append(loss)
        return loss

    def steps(self) -> Iterator[SolverStep]:
        """Train, yielding after every iteration."""
        iteration = 0
        for epoch in range(1, self.num_epochs + 1):
            batches = list(range(self.iterations_per_epoch()))
            for i, (captions, features) in zip(batches, self.data.minibatches(self.batch_size, self.rng),
                                               strict=False):
                iteration += 1
                loss = self.step(captions, features)
                last = i == len(batches) - 1 or iteration == self.max_iterations
                yield SolverStep(iteration, epoch, loss, self.learning_rate, last)
                if iteration == self.max_iterations:
                    return
            for config in self.optim_configs.values():
                config["learning_rate"] *= self.lr_decay

    def train(self) -> list[float]:
        """Run every iteration; returns the loss history."""
        for _ in self.steps():
            pass
        return self.loss_history
