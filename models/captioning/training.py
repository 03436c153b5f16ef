"""Train, evaluate and publish a captioner on a CS231n-layout data folder.

The CLI (``pixelrpc train captioner`` / ``pixelrpc eval captioner``) is a thin layer over
``CaptionerTraining`` and ``evaluate_captioner``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelrpc.models.captioning.bleu import evaluate_bleu
from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN, encoder_pin, save_to_registry
from pixelrpc.models.captioning.data import CocoCaptioningData
from pixelrpc.models.captioning.solver import CaptioningSolver
from pixelrpc.models.errors import FailedPrecondition


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are the CS231n COCO assignment's (wordvec 256, hidden 512)."""

    cell_type: str = "rnn"
    hidden_dim: int = 512
    wordvec_dim: int = 256
    epochs: int = 1
    batch_size: int = 100
    learning_rate: float = 5e-3
    lr_decay: float = 0.95
    seed: int = 0
    val_images: int | None = 1000  # images scored for BLEU after each epoch (None: all)
    max_train: int | None = None  # use only the first captions of the train split
    max_iterations: int | None = None


@dataclass(frozen=True)
class TrainProgress:
    """One training iteration; ``validation`` is set at the end of each epoch."""

    iteration: int
    total_iterations: int
    epoch: int
    loss: float
    learning_rate: float
    validation: dict | None = None


class CaptionerTraining:
    """One training run: ``run()`` yields progress; afterwards ``save_run`` and ``publish``."""

    def __init__(self, data: CocoCaptioningData, config: TrainConfig, *, encoder=None):
        """``encoder``: the feature-extraction Manifest (or pin dict) that computed the features;
        None takes the one recorded in the feature files, if any. A mismatch is refused."""
        self.data, self.config = data, config
        recorded = data.encoder
        pin = encoder_pin(encoder)
        if pin is not None and recorded is not None and pin["sha256"] != recorded["sha256"]:
            raise FailedPrecondition(
                f"the feature files were computed with encoder {recorded['name']}:{recorded['version']} "
                f"(sha256 {recorded['sha256'][:12]}), not {pin['name']}:{pin['version']} "
                f"(sha256 {pin['sha256'][:12]}); re-extract the features or pass the matching --encoder")
        self.encoder = pin or recorded
        self.model = CaptioningRNN(data.word_to_idx, input_dim=data.feature_dim, wordvec_dim=config.wordvec_dim,
                                   hidden_dim=config.hidden_dim, cell_type=config.cell_type, seed=config.seed)
        self.train_split = data.split("train")
        self.val_split = data.splits.get("val")
        self.solver = CaptioningSolver(
            self.model, self.train_split, learning_rate=config.learning_rate, lr_decay=config.lr_decay,
            batch_size=config.batch_size, num_epochs=config.epochs, seed=config.seed,
            max_iterations=config.max_iterations)
        self.max_length = int(self.train_split.captions.shape[1]) - 1
        self.validation: list[dict] = []
        self.seconds = 0.0

    @property
    def loss_history(self) -> list[float]:
        return self.solver.loss_history

    def run(self, check: Callable[[], None] | None = None) -> Iterator[TrainProgress]:
        """Train; yields after every iteration. ``check`` is called between iterations."""
        start = time.perf_counter()
        total = self.solver.total_iterations()
        for step in self.solver.steps():
            validation = None
            if step.epoch_end and self.val_split is not None:
                validation = self.evaluate(self.val_split, check=check)
                validation["epoch"] = step.epoch
                self.validation.append(validation)
            self.seconds = time.perf_counter() - start
            yield TrainProgress(step.iteration, total, step.epoch, step.loss, step.learning_rate, validation)
            if check is not None:
                check()

    def evaluate(self, split, check=None) -> dict:
        return evaluate_bleu(self.model, split, max_images=self.config.val_images, max_length=self.max_length,
                             seed=self.config.seed, check=check)

    def metrics(self) -> dict:
        per_epoch = self.solver.iterations_per_epoch()
        last = self.loss_history[-per_epoch:]
        out = {"final_train_loss": float(np.mean(last)) if last else None,
               "iterations": len(self.loss_history), "train_seconds": round(self.seconds, 3)}
        if self.validation:
            out["val"] = self.validation[-1]
        return out

    def training_metadata(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "data_dir": str(self.data.data_dir),
            "train_captions": self.train_split.num_captions,
            "feature_files": {name: str(s.features.path) for name, s in self.data.splits.items()},
            "validation_history": self.validation,
        }

    def save_run(self, run_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``loss_curve.png`` and ``history.json`` into ``run_dir``; returns their paths."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        png = run_dir / "loss_curve.png"
        png.write_bytes(loss_curve_png(self.loss_history, validation=self.validation,
                                       title=f"{self.config.cell_type} captioner"))
        history = run_dir / "history.json"
        history.write_text(json.dumps({"loss": self.loss_history, "validation": self.validation,
                                       "metrics": self.metrics(), "training": self.training_metadata()},
                                      indent=2))
        return {"loss_curve": png, "history": history}

    def publish(self, registry, name: str):
        """Publish the trained model with its training metadata, metrics and loss curve."""
        png = loss_curve_png(self.loss_history, validation=self.validation,
                             title=f"{name} ({self.config.cell_type})")
        return save_to_registry(self.model, registry, name, encoder=self.encoder,
                                metadata={"training": self.training_metadata(), "metrics": self.metrics()},
                                extra_files={"loss_curve.png": png})


def loss_curve_png(losses: Sequence[float], *, validation: Sequence[dict] | None = None, title: str = "") -> bytes:
    """A PNG of the training loss per iteration, with validation BLEU-4 per epoch on a second axis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1, label="training loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (per caption)")
    ax.set_title(title)
    if validation:
        ax2 = ax.twinx()
        per_epoch = max(1, len(losses) // max(1, len(validation)))
        xs = [per_epoch * (i + 1) for i in range(len(validation))]
        ax2.plot(xs, [v["bleu4"] for v in validation], "o-", color="tab:orange", label="val BLEU-4")
        ax2.set_ylabel("BLEU-4")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def evaluate_captioner(model: CaptioningRNN, data: CocoCaptioningData, split: str = "val", *,
                       max_images: int | None = None, check=None) -> dict:
    """BLEU-1..4 of greedy captions on a split of a data folder (``max_images`` None: all)."""
    s = data.split(split)
    if s.feature_dim != model.input_dim:
        raise FailedPrecondition(
            f"the {split} features have dimension {s.feature_dim} but the captioner takes {model.input_dim}")
    return evaluate_bleu(model, s, max_images=max_images, max_length=int(s.captions.shape[1]) - 1, check=check)
