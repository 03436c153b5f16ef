"""The default models, trained at bootstrap on the generated shapes world, gated, then published.

``pixelrpc models bootstrap`` calls ``Bootstrap(registry, plan).run()``, which

1. trains ``shapes-squeezenet``: torchvision's SqueezeNet 1.1 (Iandola et al., "SqueezeNet:
   AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size", arXiv:1602.07360) with
   one output per class of ``pixelrpc.models.data.shapes.CLASS_NAMES``, on fresh scenes every epoch,
   with Adam (Kingma & Ba, ICLR 2015; decoupled weight decay, Loshchilov & Hutter, ICLR 2019), a
   linear warm-up and a cosine decay (Loshchilov & Hutter, "SGDR", ICLR 2017), at 96 px (the
   64-px scenes upsampled: SqueezeNet downsamples 16x), under bfloat16 autocast where the CPU has
   it. Training-only auxiliary heads (Caruana, "Multitask Learning", 1997) make the trunk describe
   the whole scene: a dense head on three trunk stages predicts, per cell, which class covers it
   (the masks of the generator), and linear heads on the 512-d pooled features (the captioner's
   input) predict every object's shape, colour, size and position (largest first), the relations
   of every pair and which classes are present. The heads are dropped before publishing; the
   published model is plain SqueezeNet 1.1;
2. gates it on held-out scenes: top-1 accuracy against the majority-class baseline, and the
   concentration of vanilla saliency maps (Simonyan et al., arXiv:1312.6034) on the objects;
3. writes a captioning data set in the CS231n COCO layout, extracts its 512-d features with the
   classifier as encoder, and trains ``shapes-captioner``, the numpy LSTM ``CaptioningRNN``
   (Vinyals et al., "Show and tell", CVPR 2015) with the captioning solver, on standardised
   features (folded into the image projection afterwards), each image's ``preferred_captions``,
   an image projection started from a linear probe of the scene description and forget gates
   biased open;
4. gates it: corpus BLEU-4 (Papineni et al., ACL 2002) of greedy captions on the held-out split
   against the best single constant caption, and explain-a-caption's maps on the objects its words
   name (``pixelrpc.models.captioning.explain_gate``), then publishes it with its encoder pinned.

A model below its gate is not published (``GateFailed``). Both manifests record the training data,
the seeds, the recipe and every held-out number beside its baseline.

Dimensions: N scenes, K = ``shapes.MAX_OBJECTS`` object slots, C = 19 coverage classes (18 object
classes and the background), S the network's square input side, h x w a trunk stage's grid,
F = 512 pooled features.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixelrpc.models.data import shapes
from pixelrpc.models.errors import FailedPrecondition, InvalidInput
from pixelrpc.models.registry import golden_files, load_model, run_golden

CLASSIFIER_NAME = "shapes-squeezenet"
CAPTIONER_NAME = "shapes-captioner"
CLASSIFIER_TASKS = ("classification", "feature-extraction")
SCENE_SIZE = 64  # side of the generated scenes; the network may read them upsampled (input_size)
NUM_CLASSES = len(shapes.CLASS_NAMES)
BACKGROUND = NUM_CLASSES  # index of the background in the coverage maps
# Indices into SqueezeNet 1.1's ``features`` whose outputs feed the dense coverage head
# (fire3, fire5, fire9) and their channel counts.
DENSE_TAPS = {4: 128, 7: 256, 12: 512}
SLOT_OUTPUTS = (
    len(shapes.SHAPES) + 1 + len(shapes.COLOUR_NAMES) + len(shapes.SIZES) + 2
)  # shape|absent, colour, size, x, y
_SEED_STREAMS = {"classifier-train": 1, "classifier-held-out": 2, "torch-init": 3, "captioner-data": 4}


# ---------------------------------------------------------------------------------------------------
# Recipes, gates and plans


@dataclass(frozen=True)
class ClassifierRecipe:
    """How ``shapes-squeezenet`` is trained.

    - input_size: S; the scenes (``SCENE_SIZE`` px) are resized to S x S, bicubic, as
      ``ImageModel.preprocess`` does.
    - epochs, scenes_per_epoch: every epoch draws fresh scenes (seed stream per epoch).
    - learning_rate: the peak of the schedule (linear warm-up over ``warmup_fraction`` of the steps,
      then cosine decay to zero); weight_decay: AdamW's decoupled decay.
    - dense_weight, slot_weight, presence_weight: weights of the auxiliary losses (0 disables a head):
      per-cell class coverage, per-object attributes (largest first), and which classes are present.
    - dropout: of the classifier head while training (torchvision's default is 0.5).
    - head_bias: initial bias of the final 1x1 convolution, positive so that its ReLU starts alive.
    - mean, std: the normalisation recorded in the manifest (the shapes world's pixel statistics).
    - bfloat16: "auto" trains under bfloat16 autocast where the CPU has native bfloat16 (oneDNN:
      AVX512-BF16 or AMX; about twice as fast), "on" always, "off" never. Weights stay float32.
    """

    input_size: int = 96
    epochs: int = 8
    scenes_per_epoch: int = 8192
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    dense_weight: float = 1.0
    slot_weight: float = 1.0
    presence_weight: float = 1.0
    dropout: float = 0.2
    head_bias: float = 1.0
    mean: tuple[float, float, float] = (0.73, 0.73, 0.73)
    std: tuple[float, float, float] = (0.13, 0.13, 0.13)
    bfloat16: str = "auto"

    @property
    def total_steps(self) -> int:
        return self.epochs * (self.scenes_per_epoch // self.batch_size)


@dataclass(frozen=True)
class CaptionerRecipe:
    """How ``shapes-captioner`` is trained: data set size, LSTM size and the solver's settings.

    - forget_bias: initial bias of the LSTM's forget gates (``init_forget_gate_bias``).
    - The image projection starts from a linear probe of the scene description
      (``init_projection_from_probe``) and the captions are ``preferred_captions``.
    """

    train_scenes: int = 8000
    held_out_scenes: int = 1000
    cell_type: str = "lstm"
    hidden_dim: int = 128
    wordvec_dim: int = 64
    epochs: int = 12
    batch_size: int = 100
    learning_rate: float = 5e-3
    lr_decay: float = 0.9
    forget_bias: float = 2.0


@dataclass(frozen=True)
class Gates:
    """Held-out thresholds a model must reach to be published.

    - accuracy >= max(min_accuracy, accuracy_over_majority * majority-class accuracy);
    - BLEU-4 >= max(min_bleu4, bleu4_over_constant * BLEU-4 of the best constant caption);
    - mean saliency on the objects >= min_saliency_ratio * mean saliency elsewhere;
    - a caption word's map on the one object it names >= min_explain_ratio * outside every object.
    """

    min_accuracy: float = 0.92
    accuracy_over_majority: float = 3.0
    min_bleu4: float = 0.5
    bleu4_over_constant: float = 2.0
    min_saliency_ratio: float = 3.0
    min_explain_ratio: float = 3.0


@dataclass(frozen=True)
class Plan:
    """Everything a bootstrap run does, so that a manifest can record it whole."""

    name: str
    classifier: ClassifierRecipe
    captioner: CaptionerRecipe
    gates: Gates
    held_out_scenes: int = 2000  # classifier accuracy
    saliency_scenes: int = 64
    explain_scenes: int = 64  # held-out scenes of the explain-a-caption gate
    seed: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


FULL = Plan("full", ClassifierRecipe(), CaptionerRecipe(), Gates())
# --quick: small models for tests (a 32-px classifier, a small LSTM), trained in well under a minute.
# Its gates are lower but still demand a gain over every baseline: accuracy at least twice the
# majority class's, BLEU-4 at least 1.1 times that of the best constant caption, saliency on the
# objects at least 1.5 times the background's. Measured here (2 cores, seed 0): accuracy 0.22 vs 0.06
# (0.18 without bfloat16), BLEU-4 0.355 vs 0.299 (0.362 without), saliency 2.0x (1.9x without), 36 s.
# The classifier is weak at 512 steps; steps, not pixels, set its cost (48 px for 2 epochs: 0.08).
QUICK = Plan(
    "quick",
    ClassifierRecipe(input_size=32, epochs=4, scenes_per_epoch=4096),
    CaptionerRecipe(
        train_scenes=1500,
        held_out_scenes=300,
        hidden_dim=96,
        wordvec_dim=48,
        epochs=12,
        batch_size=50,
        learning_rate=1e-2,
        lr_decay=0.8,
    ),
    Gates(
        min_accuracy=0.0,
        accuracy_over_majority=2.0,
        min_bleu4=0.0,
        bleu4_over_constant=1.1,
        min_saliency_ratio=1.5,
        min_explain_ratio=1.5,
    ),
    held_out_scenes=400,
    saliency_scenes=32,
    explain_scenes=32,
)
PLANS = {"full": FULL, "quick": QUICK}


def seed_stream(seed: int, stream: str, *extra: int) -> np.random.SeedSequence:
    """An independent numpy seed for one use (training scenes of an epoch, held-out scenes, ...)."""
    return np.random.SeedSequence([int(seed), _SEED_STREAMS[stream], *map(int, extra)])


# ---------------------------------------------------------------------------------------------------
# Gates


def manifest_metadata(description: str, plan: Plan, recipe, *, data: dict, training: dict, report,
                      checks: list) -> dict:
    """A bootstrapped model's manifest metadata: how it was trained, on what, and its held-out record."""
    return {
        "description": description,
        "training": {
            "plan": plan.name,
            "seed": plan.seed,
            "recipe": dataclasses.asdict(recipe),
            "data": {"generator": shapes.__name__, "generator_version": shapes.GENERATOR_VERSION, **data},
            **training,
        },
        "metrics": {"held_out": report.to_json()},
        "gates": [c.to_json() for c in checks],
    }


class GateFailed(FailedPrecondition):
    """A trained model missed its held-out gate, so it was not published."""

    def __init__(self, check: GateCheck):
        super().__init__(
            f"{check.model} not published: {check.line()}. Training is deterministic for a "
            "seed (and CPU type): try 'pixelrpc models bootstrap --force --seed N' with another N, "
            "and report these numbers"
        )
        self.check = check


@dataclass(frozen=True)
class GateCheck:
    """One held-out number beside its baseline and the threshold it had to reach."""

    model: str
    metric: str
    value: float
    baseline: float
    baseline_name: str
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(self.value >= self.threshold)

    def line(self) -> str:
        ratio = self.value / self.baseline if self.baseline > 0 else math.inf
        return (
            f"{self.metric} {self.value:.3f} vs {self.baseline_name} {self.baseline:.3f} "
            f"({ratio:.1f}x; gate >= {self.threshold:.3f}) {'PASS' if self.passed else 'FAIL'}"
        )

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "threshold": self.threshold,
            "passed": self.passed,
        }


def gate(
    model: str,
    metric: str,
    value: float,
    baseline: float,
    baseline_name: str,
    *,
    minimum: float,
    over_baseline: float,
) -> GateCheck:
    """The check ``value >= max(minimum, over_baseline * baseline)``."""
    return GateCheck(
        model,
        metric,
        float(value),
        float(baseline),
        baseline_name,
        float(max(minimum, over_baseline * baseline)),
    )


# ---------------------------------------------------------------------------------------------------
# Scenes as training tensors


def resize_images(images: np.ndarray, side: int) -> np.ndarray:
    """Scenes uint8 (N, H, W, 3) -> uint8 (N, S, S, 3), bicubic as ``ImageModel.preprocess`` (PIL)."""
    if images.shape[1] == side and images.shape[2] == side:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.BICUBIC)) for img in images])


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """uint8 (N, S, S, 3) -> normalised float32 torch tensor (N, 3, S, S), as ``ImageModel.preprocess``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, S, S)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def slot_targets(batch: shapes.ShapesBatch) -> dict[str, np.ndarray]:
    """Per-object targets, largest object first (slot 0 is the labelled object).

    Returns ``shape`` int64 (N, K) (``len(SHAPES)`` marks an empty slot), ``colour`` and ``size``
    int64 (N, K) (-100, ignored, for empty slots), ``centre`` float32 (N, K, 2) in [0, 1] (x, y),
    ``present`` bool (N, K), ``presence`` float32 (N, 18): 1 for every class in the scene, and
    ``relation`` float32 (N, P, 4) with ``related`` bool (N, P) of ``relation_targets``.
    """
    k = shapes.MAX_OBJECTS
    n = batch.num_objects.astype(np.int64)  # (N,)
    drawn = n[:, None] - 1 - np.arange(k)[None, :]  # (N, K): slot j holds the object drawn (n-1-j)-th
    present = drawn >= 0
    index = np.where(present, drawn, 0)

    def pick(a):
        return np.take_along_axis(a, index, axis=1)

    side = float(batch.images.shape[1])
    centre = np.take_along_axis(batch.centres, index[..., None], axis=1) / side  # (N, K, 2)
    presence = np.zeros((len(n), NUM_CLASSES), dtype=np.float32)
    classes = object_classes(batch)  # (N, K)
    for slot in range(k):
        drawn_here = np.nonzero(batch.shapes[:, slot] >= 0)[0]
        presence[drawn_here, classes[drawn_here, slot]] = 1.0
    relation, related = relation_targets(centre, present)
    return {
        "relation": relation,
        "related": related,
        "presence": presence,
        "shape": np.where(present, pick(batch.shapes), len(shapes.SHAPES)).astype(np.int64),
        "colour": np.where(present, pick(batch.colours), -100).astype(np.int64),
        "size": np.where(present, pick(batch.sizes), -100).astype(np.int64),
        "centre": np.where(present[..., None], centre, 0.0).astype(np.float32),
        "present": present,
    }


SLOT_PAIRS = ((0, 1), (0, 2), (1, 2))  # the object pairs whose relations the slot head predicts
RELATION_WORDS = ("left", "right", "above", "below")


def relation_targets(centre: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which relations "slot j is <relation> of slot i" the caption grammar accepts, per slot pair.

    As in ``shapes``: the dominant axis always, the other axis too when its offset is at least half
    as large. Inputs: centre (N, K, 2) in (x, y), present bool (N, K). Returns float32 (N, P, 4)
    (left, right, above, below) and bool (N, P), whether both objects of the pair exist.
    """
    out = np.zeros((len(centre), len(SLOT_PAIRS), len(RELATION_WORDS)), dtype=np.float32)
    related = np.zeros((len(centre), len(SLOT_PAIRS)), dtype=bool)
    for p, (i, j) in enumerate(SLOT_PAIRS):
        dx = centre[:, j, 0] - centre[:, i, 0]  # (N,)
        dy = centre[:, j, 1] - centre[:, i, 1]
        horizontal, vertical = np.abs(dx) >= 0.5 * np.abs(dy), np.abs(dy) >= 0.5 * np.abs(dx)
        out[:, p] = np.stack(
            [horizontal & (dx < 0), horizontal & (dx >= 0), vertical & (dy < 0), vertical & (dy >= 0)], axis=1
        )
        related[:, p] = present[:, i] & present[:, j]
    return out, related


def object_classes(batch: shapes.ShapesBatch) -> np.ndarray:
    """Class index of every object slot, int64 (N, K) (0 for empty slots, whose masks are empty)."""
    return (batch.shapes.astype(np.int64) * len(shapes.COLOUR_NAMES) + batch.colours).clip(0)


def coverage_maps(masks: np.ndarray, classes: np.ndarray):
    """Which class covers each pixel, as one-hot maps: float32 torch tensor (N, C, H, W).

    Inputs: masks bool (N, K, H, W) and classes int64 (N, K) of ``object_classes``.
    Channel c < 18 marks the pixels of objects of class c, channel 18 the background; the channels
    sum to one. Average-pooled to a trunk stage's grid, it gives per-cell class fractions.
    """
    import torch

    n, k, h, w = masks.shape
    if k == 0:
        raise InvalidInput("coverage maps need a batch drawn with masks", field="with_masks")
    classes = torch.from_numpy(np.asarray(classes))
    masks = torch.from_numpy(np.asarray(masks)).float()  # (N, K, H, W)
    cover = torch.zeros(n, NUM_CLASSES + 1, h, w)
    for slot in range(k):  # a padded slot has an all-False mask, so its (clipped) class gets nothing
        cover.scatter_add_(1, classes[:, slot].view(n, 1, 1, 1).expand(n, 1, h, w), masks[:, slot : slot + 1])
    cover[:, BACKGROUND] = 1.0 - cover[:, :BACKGROUND].sum(1)
    return cover


# ---------------------------------------------------------------------------------------------------
# Training the classifier


@dataclass(frozen=True)
class ClassifierStep:
    step: int  # 1-based
    total: int
    epoch: int  # 1-based
    loss: float
    learning_rate: float


class ShapesClassifierTraining:
    """Train SqueezeNet 1.1 on fresh scenes; ``steps()`` yields after every optimiser step.

    After training, ``net`` is the plain torchvision SqueezeNet 1.1 (eval mode) and the auxiliary
    heads can be discarded.
    """

    def __init__(self, recipe: ClassifierRecipe, seed: int = 0):
        import torch

        from pixelrpc.models.zoo import build_squeezenet

        self.recipe, self.seed = recipe, int(seed)
        self.bfloat16 = use_bfloat16(recipe.bfloat16)
        torch.manual_seed(int(seed_stream(seed, "torch-init").generate_state(1)[0]))
        self.net = build_squeezenet(NUM_CLASSES)
        self.net.classifier[0].p = recipe.dropout
        torch.nn.init.constant_(self.net.classifier[1].bias, recipe.head_bias)
        self.dense_heads = torch.nn.ModuleDict(
            {str(i): torch.nn.Conv2d(c, NUM_CLASSES + 1, kernel_size=1) for i, c in DENSE_TAPS.items()}
        )
        # channels-last tensors take oneDNN's fastest CPU convolutions (about 1.5x here)
        self.net.to(memory_format=torch.channels_last)
        self.dense_heads.to(memory_format=torch.channels_last)
        self.slot_head = torch.nn.Linear(512, shapes.MAX_OBJECTS * SLOT_OUTPUTS)
        self.presence_head = torch.nn.Linear(512, NUM_CLASSES)
        self.relation_head = torch.nn.Linear(512, len(SLOT_PAIRS) * len(RELATION_WORDS))
        params = [
            *self.net.parameters(),
            *self.dense_heads.parameters(),
            *self.slot_head.parameters(),
            *self.presence_head.parameters(),
            *self.relation_head.parameters(),
        ]
        self.optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
        total, warmup = recipe.total_steps, max(1, int(recipe.warmup_fraction * recipe.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, warmup, total)
        )
        self.history: list[float] = []
        self.seconds = 0.0
        self.scenes_seen = 0
        self.label_counts = np.zeros(NUM_CLASSES, dtype=np.int64)  # of the training scenes drawn

    def epoch_batch(self, epoch: int) -> shapes.ShapesBatch:
        """The fresh scenes of an epoch (0-based), drawn from their own seed stream."""
        with_masks = self.recipe.dense_weight > 0
        return shapes.generate_batch(
            seed_stream(self.seed, "classifier-train", epoch),
            self.recipe.scenes_per_epoch,
            SCENE_SIZE,
            with_masks=with_masks,
        )

    def steps(self, check: Callable[[], None] | None = None) -> Iterator[ClassifierStep]:
        import torch

        r = self.recipe
        start = time.perf_counter()
        self.net.train()
        step, per_epoch = 0, r.scenes_per_epoch // r.batch_size
        flips = torch.Generator().manual_seed(
            int(seed_stream(self.seed, "torch-init", 1).generate_state(1)[0])
        )
        for epoch in range(r.epochs):
            batch = self.epoch_batch(epoch)
            images = resize_images(batch.images, r.input_size)  # (N, S, S, 3) uint8
            targets = {k: torch.from_numpy(v) for k, v in slot_targets(batch).items()}
            labels = torch.from_numpy(batch.labels)
            self.label_counts += np.bincount(batch.labels, minlength=NUM_CLASSES)
            classes = object_classes(batch)  # (N, K)
            order = torch.randperm(len(labels), generator=flips)
            for i in range(per_epoch):
                if check is not None:
                    check()
                rows = order[i * r.batch_size : (i + 1) * r.batch_size]
                flip = torch.rand(len(rows), generator=flips) < 0.5  # mirror half the scenes
                cover = None
                if r.dense_weight > 0:
                    picked = rows.numpy()
                    cover = coverage_maps(batch.masks[picked], classes[picked])  # (B, C, H, W)
                x = normalise(images[rows.numpy()], r.mean, r.std)  # (B, 3, S, S)
                loss = self._loss(x, labels[rows], {k: v[rows] for k, v in targets.items()}, cover, flip)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                step += 1
                self.scenes_seen += len(rows)
                self.history.append(loss.item())
                self.seconds = time.perf_counter() - start
                yield ClassifierStep(
                    step, r.total_steps, epoch + 1, self.history[-1], self.scheduler.get_last_lr()[0]
                )
        self.net.to(memory_format=torch.contiguous_format).eval()

    def _loss(self, x, labels, targets: dict, cover, flip):
        """Cross-entropy of the label plus the auxiliary losses, on a minibatch.

        Inputs: x (B, 3, S, S), labels (B,), targets of ``slot_targets`` (B, K, ...),
        cover (B, C, H, W) at the scenes' resolution or None, flip bool (B,): mirror these scenes.
        """
        import torch
        import torch.nn.functional as F

        r = self.recipe
        m = flip.view(-1, 1, 1, 1)
        x = torch.where(m, x.flip(3), x).contiguous(memory_format=torch.channels_last)
        dense = x.new_zeros(())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
            h, stages = x, {}
            for index, module in enumerate(self.net.features):
                h = module(h)  # (B, c, h, w)
                if cover is not None and str(index) in self.dense_heads:
                    stages[index] = self.dense_heads[str(index)](h)  # (B, C, h, w)
            scores = self.net.classifier(h).flatten(1)  # (B, 18)
            pooled = h.mean(dim=(2, 3))  # (B, F)
        for logits in stages.values():
            target = F.adaptive_avg_pool2d(
                torch.where(m, cover.flip(3), cover), logits.shape[-2:]
            )  # (B, C, h, w)
            dense = dense - (target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
        loss = F.cross_entropy(scores.float(), labels)
        if r.slot_weight > 0:
            loss = loss + r.slot_weight * self._slot_loss(pooled.float(), targets, flip)
        if r.presence_weight > 0:
            loss = loss + r.presence_weight * F.binary_cross_entropy_with_logits(
                self.presence_head(pooled.float()), targets["presence"]
            )
        if cover is not None:
            loss = loss + r.dense_weight * dense
        return loss

    def _slot_loss(self, pooled, t: dict, flip):
        import torch
        import torch.nn.functional as F

        k, n_shapes, n_colours = shapes.MAX_OBJECTS, len(shapes.SHAPES) + 1, len(shapes.COLOUR_NAMES)
        out = self.slot_head(pooled).view(-1, k, SLOT_OUTPUTS)  # (B, K, SLOT_OUTPUTS)
        shape_logits = out[..., :n_shapes]
        colour_logits = out[..., n_shapes : n_shapes + n_colours]
        size_logits = out[..., n_shapes + n_colours : -2]
        centre = t["centre"].clone()  # (B, K, 2)
        centre[..., 0] = torch.where(flip.view(-1, 1), 1.0 - centre[..., 0], centre[..., 0])
        present = t["present"]
        position = (
            ((out[..., -2:] - centre) ** 2)[present].mean() * 10.0 if present.any() else out.new_zeros(())
        )
        relation = t["relation"].clone()  # (B, P, 4): mirroring swaps left and right
        relation[flip] = relation[flip][..., [1, 0, 2, 3]]
        related = t["related"]
        if related.any():
            logits = self.relation_head(pooled).view(-1, len(SLOT_PAIRS), len(RELATION_WORDS))  # (B, P, 4)
            position = position + F.binary_cross_entropy_with_logits(logits[related], relation[related])
        return (
            F.cross_entropy(shape_logits.reshape(-1, n_shapes), t["shape"].reshape(-1))
            + F.cross_entropy(colour_logits.reshape(-1, n_colours), t["colour"].reshape(-1))
            + F.cross_entropy(size_logits.reshape(-1, len(shapes.SIZES)), t["size"].reshape(-1))
            + position
        )


def use_bfloat16(setting: str) -> bool:
    """Whether to train under bfloat16 autocast (see ``ClassifierRecipe.bfloat16``)."""
    import torch

    if setting not in ("auto", "on", "off"):
        raise InvalidInput(f"bfloat16 must be 'auto', 'on' or 'off', got {setting!r}", field="bfloat16")
    if setting != "auto":
        return setting == "on"
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ---------------------------------------------------------------------------------------------------
# Held-out evaluation of the classifier


@dataclass(frozen=True)
class ClassifierReport:
    """Held-out numbers of the classifier."""

    scenes: int
    accuracy: float
    majority_class: str
    majority_accuracy: float  # always answering the most frequent training class
    per_class_accuracy: dict[str, float]
    saliency_scenes: int
    saliency_ratio: float  # mean saliency inside the object masks / mean saliency outside them
    labelled_object_saliency_ratio: float  # the same, inside the labelled object's mask only

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def held_out_batch(seed: int, n: int) -> shapes.ShapesBatch:
    """Held-out scenes (with masks): a seed stream the training never draws from."""
    return shapes.generate_batch(seed_stream(seed, "classifier-held-out"), n, SCENE_SIZE, with_masks=True)


def model_inputs(model, images: np.ndarray, batch_size: int = 256):
    """Scenes uint8 (N, H, W, 3) -> the normalised batch (N, 3, S, S) exactly as the services make it
    (``ImageModel.preprocess`` on PIL images)."""
    import torch
    from PIL import Image

    chunks = [
        model.preprocess([Image.fromarray(img) for img in images[i : i + batch_size]])
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """Top-1 class per image of a normalised batch (N, 3, S, S) -> int64 (N,)."""
    import torch

    with torch.inference_mode():
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        ).numpy()


def masks_at(masks: np.ndarray, side: int) -> np.ndarray:
    """bool (N, H, W) -> bool (N, S, S), nearest neighbour."""
    if masks.shape[-1] == side:
        return masks
    import torch
    import torch.nn.functional as F

    return (
        F.interpolate(torch.from_numpy(masks[:, None]).float(), size=(side, side), mode="nearest")[:, 0]
        .bool()
        .numpy()
    )


def saliency_ratio(saliency: np.ndarray, inside: np.ndarray) -> float:
    """Mean of ``saliency`` (N, S, S) where ``inside`` (N, S, S) holds, over its mean elsewhere."""
    outside_mean = float(saliency[~inside].mean()) if (~inside).any() else 0.0
    inside_mean = float(saliency[inside].mean()) if inside.any() else 0.0
    return inside_mean / outside_mean if outside_mean > 0 else math.inf


def evaluate_classifier(
    model, held_out: shapes.ShapesBatch, train_label_counts: np.ndarray, *, saliency_scenes: int = 64
) -> ClassifierReport:
    """Accuracy against the majority-class baseline, and where its saliency maps fall.

    Inputs:
    - model: an ``ImageModel`` classifier.
    - held_out: scenes with masks (N scenes).
    - train_label_counts: int (18,), how often each class labelled a training scene; the baseline
      always answers the most frequent one.
    - saliency_scenes: how many of the held-out scenes get a vanilla saliency map (the assignment's
      ``compute_saliency_maps``, for the true class).
    """
    import torch

    from pixelrpc.models.visualization import compute_saliency_maps

    x = model_inputs(model, held_out.images)  # (N, 3, S, S)
    predicted = predict(model, x)
    correct = predicted == held_out.labels
    majority = int(np.argmax(train_label_counts))
    per_class = {
        name: float(correct[held_out.labels == c].mean())
        for c, name in enumerate(shapes.CLASS_NAMES)
        if (held_out.labels == c).any()
    }
    n_sal = min(int(saliency_scenes), len(held_out))
    maps = compute_saliency_maps(
        x[:n_sal], torch.from_numpy(held_out.labels[:n_sal]), model
    ).numpy()  # (n, S, S)
    side = maps.shape[-1]
    objects = masks_at(held_out.masks[:n_sal].any(axis=1), side)  # (n, S, S)
    last = held_out.num_objects[:n_sal].astype(np.int64) - 1
    labelled = masks_at(held_out.masks[np.arange(n_sal), last], side)  # (n, S, S)
    return ClassifierReport(
        scenes=len(held_out),
        accuracy=float(correct.mean()),
        majority_class=shapes.CLASS_NAMES[majority],
        majority_accuracy=float((held_out.labels == majority).mean()),
        per_class_accuracy=per_class,
        saliency_scenes=n_sal,
        saliency_ratio=saliency_ratio(maps, objects),
        labelled_object_saliency_ratio=saliency_ratio(maps, labelled),
    )


def classifier_gates(report: ClassifierReport, gates: Gates) -> list[GateCheck]:
    return [
        gate(
            CLASSIFIER_NAME,
            "held-out accuracy",
            report.accuracy,
            report.majority_accuracy,
            f"majority class ({report.majority_class})",
            minimum=gates.min_accuracy,
            over_baseline=gates.accuracy_over_majority,
        ),
        gate(
            CLASSIFIER_NAME,
            "saliency inside/outside objects",
            report.saliency_ratio,
            1.0,
            "uniform saliency",
            minimum=gates.min_saliency_ratio,
            over_baseline=0.0,
        ),
    ]


# ---------------------------------------------------------------------------------------------------
# BLEU of the best constant caption


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def best_constant_caption(
    references: Sequence[Sequence[Sequence[str]]], candidates: Sequence[Sequence[str]]
) -> tuple[list[str], float]:
    """The candidate caption with the highest corpus BLEU-4 when it is the answer for every image.

    Inputs:
    - references: for each of the N images, its reference captions as token lists.
    - candidates: token lists to try (e.g. every distinct training caption).

    Returns ``(tokens, bleu4)``. Corpus BLEU of a constant caption decomposes per n-gram: its clipped
    count on image i is ``min(count in caption, max count in a reference of i)``, so the sum over
    images is tabulated once per (n-gram, count) and each candidate costs a few dictionary look-ups.
    The same definition as nltk's ``corpus_bleu`` (uniform weights, no smoothing, closest reference
    length); the winner is re-scored with ``corpus_bleu_scores`` by the caller.
    """
    if not references or not candidates:
        raise InvalidInput("best_constant_caption needs references and candidates", field="references")
    n_images = len(references)
    clipped_sum: dict[tuple, list[int]] = {}  # n-gram -> [sum_i min(c, maxref_i) for c = 1..4]
    for refs in references:
        best: Counter = Counter()
        for ref in refs:
            for n in range(1, 5):
                for g, c in _ngrams(ref, n).items():
                    best[g] = max(best[g], c)
        for g, m in best.items():
            sums = clipped_sum.setdefault(g, [0, 0, 0, 0])
            for c in range(4):
                sums[c] += min(c + 1, m)
    lengths = [[len(r) for r in refs] for refs in references]
    ref_total: dict[int, int] = {}

    def closest_total(length: int) -> int:
        if length not in ref_total:
            ref_total[length] = sum(min(ls, key=lambda r: (abs(r - length), r)) for ls in lengths)
        return ref_total[length]

    best_tokens, best_score = list(candidates[0]), -1.0
    for tokens in {tuple(c) for c in candidates}:
        length = len(tokens)
        if length < 4:
            continue
        log_p = 0.0
        for n in range(1, 5):
            matched = sum(
                clipped_sum[g][min(c, 4) - 1] for g, c in _ngrams(tokens, n).items() if g in clipped_sum
            )
            if matched == 0:
                log_p = -math.inf
                break
            log_p += math.log(matched / ((length - n + 1) * n_images)) / 4
        if log_p == -math.inf:
            continue
        hyp_total, ref_len = length * n_images, closest_total(length)
        brevity = 1.0 if hyp_total > ref_len else math.exp(1 - ref_len / hyp_total)
        score = brevity * math.exp(log_p)
        if score > best_score or (score == best_score and list(tokens) < best_tokens):
            best_tokens, best_score = list(tokens), score
    return best_tokens, max(best_score, 0.0)


# ---------------------------------------------------------------------------------------------------
# The captioner


@dataclass(frozen=True)
class CaptionerReport:
    """Held-out numbers of the captioner."""

    held_out_images: int
    bleu: dict[str, float]  # greedy captions: BLEU-1..4
    constant_caption: str  # the best single caption for every image, among the training captions
    constant_bleu: dict[str, float]
    candidates: int  # distinct training captions tried as the constant
    examples: list[dict] = field(default_factory=list)  # a few {"caption", "references"}
    explain_saliency: dict = field(default_factory=dict)  # explain_gate.ExplainGateReport.to_json()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def mentioned_classes(words: Sequence[str]) -> list[int]:
    """Class indices of the "colour shape" pairs a caption mentions, in order."""
    return [
        shapes.class_index(shape, colour)
        for colour, shape in zip(words, words[1:], strict=False)
        if colour in shapes.COLOURS and shape in shapes.SHAPES
    ]


def is_inverted_wording(words: Sequence[str]) -> bool:
    """The "a B with a A <relation> it" wording, which names the reference object first."""
    return len(words) > 2 and words[-1] == "it" and "with" in words


def largest_two_classes(num_objects: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class of the largest and of the second largest object per scene, int64 (N, 2) (-1: none).

    Inputs: num_objects (N,) and classes (N, K) in drawing order (the largest is drawn last).
    """
    n = num_objects.astype(np.int64)
    rows = np.arange(len(n))
    first = classes[rows, n - 1]
    second = np.where(n >= 2, classes[rows, np.maximum(n - 2, 0)], -1)
    return np.stack([first, second], axis=1)


def preferred_captions(
    captions: np.ndarray, image_idxs: np.ndarray, largest_two: np.ndarray, idx_to_word: Sequence[str]
) -> np.ndarray:
    """Which training captions the captioner learns from: bool (Ncap,).

    Greedy decoding returns about the most probable caption, and among an image's 3 to 5 references
    the objects named, their order and the wording vary at random. Training on all of them spreads
    the model's probability over those arbitrary choices, and greedy decoding then follows whichever
    next word is least split: "with" of "a B with a A ... it", the wording that shares the fewest
    4-grams with the other references, beats each of the many relation words. So each image keeps
    its references that score highest on, in this order: naming its largest object first (the object
    the encoder is trained hardest to describe), not using that inverted wording, naming its second
    largest object next, and starting with "there is" (whose 4-grams include those of the plain
    "a A <relation> a B" wording). Scores 8, 4, 2 and 1 make the order lexicographic.

    Inputs: captions (Ncap, T + 1) word ids, image_idxs (Ncap,), largest_two (Nimg, 2) of
    ``largest_two_classes``.
    """
    from pixelrpc.models.captioning.bleu import id_tokens

    scores = np.empty(len(captions), dtype=np.int64)
    for row, (ids, image) in enumerate(zip(captions, image_idxs, strict=True)):
        words = id_tokens(ids, idx_to_word)
        named = mentioned_classes(words) + [-1, -1]
        first, second = largest_two[image]
        scores[row] = (
            8 * int(named[0] == first)
            + 4 * int(not is_inverted_wording(words))
            + 2 * int(named[1] == second)
            + int(words[:2] == ["there", "is"])
        )
    best = np.full(int(image_idxs.max()) + 1 if len(image_idxs) else 0, -1, dtype=np.int64)
    np.maximum.at(best, image_idxs, scores)
    return scores == best[image_idxs]


def captioner_gates(report: CaptionerReport, gates: Gates) -> list[GateCheck]:
    return [
        gate(
            CAPTIONER_NAME,
            "held-out BLEU-4",
            report.bleu["bleu4"],
            report.constant_bleu["bleu4"],
            f"best constant caption ({report.constant_caption!r})",
            minimum=gates.min_bleu4,
            over_baseline=gates.bleu4_over_constant,
        )
    ] + ([gate(CAPTIONER_NAME, "explained words' saliency on the named object/outside objects",
               report.explain_saliency["ratio"], 1.0, "uniform saliency", minimum=gates.min_explain_ratio,
               over_baseline=0.0)] if report.explain_saliency else [])


def evaluate_captioner_against_constant(
    model, data, train_captions: np.ndarray, max_examples: int = 8
) -> CaptionerReport:
    """BLEU-1..4 of greedy captions on the whole held-out (``val``) split of ``data``, and of the
    best constant caption drawn from the distinct training captions.

    Inputs:
    - model: a ``CaptioningRNN``.
    - data: an open ``CocoCaptioningData`` with a ``val`` split.
    - train_captions: (Ncap, T + 1) word ids, every caption of the training split (the candidates).
    """
    from pixelrpc.models.captioning.bleu import corpus_bleu_scores, id_tokens
    from pixelrpc.models.captioning.training import evaluate_captioner

    words = model.idx_to_word
    bleu = evaluate_captioner(model, data, "val")
    val = data.split("val")
    images = val.image_ids()
    references = [[id_tokens(row, words) for row in refs] for refs in val.references(images)]
    candidates = {tuple(id_tokens(row, words)) for row in train_captions}
    tokens, _ = best_constant_caption(references, sorted(candidates))
    constant = corpus_bleu_scores(references, [tokens] * len(references))
    first = images[:max_examples]
    sampled = model.sample(val.features.read(first), max_length=int(val.captions.shape[1]) - 1)  # (n, T)
    examples = [
        {"caption": " ".join(id_tokens(row, words)), "references": [" ".join(r) for r in refs]}
        for row, refs in zip(sampled, references[:max_examples], strict=True)
    ]
    return CaptionerReport(
        held_out_images=len(images),
        bleu={k: float(bleu[k]) for k in ("bleu1", "bleu2", "bleu3", "bleu4")},
        constant_caption=" ".join(tokens),
        constant_bleu=constant,
        candidates=len(candidates),
        examples=examples,
    )


# ---------------------------------------------------------------------------------------------------
# The whole bootstrap


@dataclass(frozen=True)
class BootstrapEvent:
    """Progress of a bootstrap: ``done`` of ``total`` units of ``stage``, or a one-line ``message``."""

    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    loss: float | None = None


@dataclass
class BootstrapReport:
    """What a bootstrap did: published or skipped models, every gate, the time of each stage."""

    plan: str
    published: dict[str, str] = field(default_factory=dict)  # name -> "name:version"
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why
    checks: list[GateCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    classifier: ClassifierReport | None = None
    captioner: CaptionerReport | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict:
        return {
            "plan": self.plan,
            "published": self.published,
            "skipped": self.skipped,
            "checks": [c.to_json() for c in self.checks],
            "seconds": self.seconds,
            "classifier": self.classifier.to_json() if self.classifier else None,
            "captioner": self.captioner.to_json() if self.captioner else None,
        }


# ---------------------------------------------------------------------------------------------------
# Golden examples published with the default models (checked by the services before they serve)

GOLDEN_EXAMPLES = 4  # examples per model
GOLDEN_CANDIDATES = 32  # held-out inputs they are picked from
# Loose enough for CPU/GPU and thread-count rounding, tight enough to catch wrong weights or
# preprocessing; the top-1 class and the greedy tokens must match exactly, so examples are picked
# where they are clear-cut.
GOLDEN_PROBABILITY_TOLERANCE = 0.02
GOLDEN_LOGPROB_TOLERANCE = 1e-3
GOLDEN_MIN_MARGIN = 0.2


def classifier_golden(model, images: np.ndarray, count: int = GOLDEN_EXAMPLES) -> dict[str, bytes]:
    """Golden files of the classifier: ``count`` held-out scenes uint8 (N, H, W, 3) as PNGs, with the
    top-1 class and probabilities the model gives them. Scenes whose top-1 leads the runner-up by at
    least GOLDEN_MIN_MARGIN come first, so rounding on another device cannot flip the top-1."""
    import torch
    from PIL import Image

    from pixelrpc.models.imaging import encode_png

    with torch.inference_mode():
        probs = model(model_inputs(model, images)).float().softmax(dim=1).cpu().numpy()  # (N, K)
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # (N,)
    clear = [i for i in range(len(images)) if margin[i] >= GOLDEN_MIN_MARGIN]
    rest = [i for i in np.argsort(-margin).tolist() if i not in clear]
    picked = (clear + rest)[:count]
    files, examples = {}, []
    for n, i in enumerate(picked):
        fname = f"golden-{n}.png"
        files[fname] = encode_png(Image.fromarray(images[i]))
        examples.append({"name": f"held-out scene {i}", "kind": "classification", "inputs": {"image": fname},
                         "tolerance": {"probabilities": GOLDEN_PROBABILITY_TOLERANCE}})
    return golden_files(model, examples, files)


def captioner_golden(model, features: np.ndarray, seed: int, count: int = GOLDEN_EXAMPLES) -> dict[str, bytes]:
    """Golden file of the captioner: ``count`` held-out feature vectors (N, F) with their greedy tokens.
    Vectors whose greedy caption survives a small perturbation (relative 1e-3) come first, so rounding
    elsewhere cannot change a token."""
    from pixelrpc.models.captioning.decoding import greedy

    rng = np.random.default_rng(seed_stream(seed, "captioner-data", 99))
    stable, rest = [], []
    for i, f in enumerate(np.asarray(features, dtype=np.float64)):
        tokens = greedy(model, f).tokens
        nudged = f * (1.0 + 1e-3 * rng.standard_normal(f.shape))
        (stable if greedy(model, nudged).tokens == tokens else rest).append(i)
    examples = [
        {"name": f"held-out image {i}", "kind": "captioning",
         "inputs": {"features": [float(x) for x in np.asarray(features[i], dtype=np.float64)], "max_length": 30},
         "tolerance": {"logprobs": GOLDEN_LOGPROB_TOLERANCE}}
        for i in (stable + rest)[:count]
    ]
    return golden_files(model, examples)


def image_model(net, recipe: ClassifierRecipe):
    """The in-memory ``ImageModel`` of a trained net, with the preprocessing its manifest will record."""
    from pixelrpc.models.zoo import ImageModel

    return ImageModel(
        net=net.eval(),
        features=net.features,
        class_names=list(shapes.CLASS_NAMES),
        input_size=recipe.input_size,
        mean=recipe.mean,
        std=recipe.std,
        value_scale=1.0,
    )


class Bootstrap:
    """Train, gate and publish the default models into ``registry``.

    ``run()`` is a generator of ``BootstrapEvent``; ``report`` holds the outcome. A model already
    in the registry is kept unless ``force``; the captioner is also retrained when the classifier
    it pins is retrained or gone. ``work_dir`` keeps the captioning data set (default: a temporary
    folder, removed at the end).
    """

    def __init__(
        self, registry, plan: Plan = FULL, *, force: bool = False, work_dir: str | Path | None = None
    ):
        self.registry, self.plan, self.force = registry, plan, bool(force)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.report = BootstrapReport(plan.name)

    # ----------------------------------------------------------------- what to do
    def _present(self, name: str):
        versions = self.registry.versions(name)
        return self.registry.resolve(name) if versions else None

    def _captioner_current(self, classifier_manifest) -> bool:
        captioner = self._present(CAPTIONER_NAME)
        if captioner is None:
            return False
        pin = captioner.metadata.get("encoder") or {}
        return pin.get("sha256") == classifier_manifest.sha256

    # ----------------------------------------------------------------- running
    def run(self, check: Callable[[], None] | None = None) -> Iterator[BootstrapEvent]:
        started = time.perf_counter()
        classifier = None if self.force else self._present(CLASSIFIER_NAME)
        if classifier is None:
            classifier = yield from self._classifier(check)
        else:
            self.report.skipped[CLASSIFIER_NAME] = (
                f"{classifier.ref} already in the registry (use --force to retrain)"
            )
            yield BootstrapEvent("skip", message=f"{CLASSIFIER_NAME}: {self.report.skipped[CLASSIFIER_NAME]}")
        if self.force or not self._captioner_current(classifier):
            yield from self._captioner(classifier, check)
        else:
            ref = self._present(CAPTIONER_NAME).ref
            self.report.skipped[CAPTIONER_NAME] = f"{ref} already in the registry (use --force to retrain)"
            yield BootstrapEvent("skip", message=f"{CAPTIONER_NAME}: {self.report.skipped[CAPTIONER_NAME]}")
        self.report.seconds["total"] = round(time.perf_counter() - started, 2)

    def _gate(self, checks: list[GateCheck]) -> Iterator[BootstrapEvent]:
        self.report.checks.extend(checks)
        for c in checks:
            yield BootstrapEvent("gate", message=f"{c.model}: {c.line()}")
        for c in checks:
            if not c.passed:
                raise GateFailed(c)

    def _classifier(self, check):
        from pixelrpc.models.zoo import publish_squeezenet

        plan, recipe = self.plan, self.plan.classifier
        t0 = time.perf_counter()
        training = ShapesClassifierTraining(recipe, plan.seed)
        for step in training.steps(check):
            yield BootstrapEvent("classifier", step.step, step.total, loss=step.loss)
        self.report.seconds["classifier_training"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        yield BootstrapEvent("classifier-eval", message=f"scoring {plan.held_out_scenes} held-out scenes")
        model = image_model(training.net, recipe)
        report = evaluate_classifier(
            model,
            held_out_batch(plan.seed, plan.held_out_scenes),
            training.label_counts,
            saliency_scenes=plan.saliency_scenes,
        )
        self.report.classifier = report
        self.report.seconds["classifier_evaluation"] = round(time.perf_counter() - t0, 2)
        checks = classifier_gates(report, plan.gates)
        yield from self._gate(checks)

        import torch

        metadata = manifest_metadata(
            "SqueezeNet 1.1 trained from scratch on the generated shapes world "
            "(label: shape and colour of the largest object)",
            plan,
            recipe,
            data={
                "scene_size": SCENE_SIZE,
                "fresh_scenes_per_epoch": recipe.scenes_per_epoch,
                "scenes_seen": training.scenes_seen,
                "seed_streams": "SeedSequence([seed, 1, epoch]) per epoch; held-out SeedSequence([seed, 2])",
            },
            training={
                "auxiliary_heads": {"dense_coverage_taps": sorted(DENSE_TAPS), "slots": shapes.MAX_OBJECTS},
                "final_loss": float(np.mean(training.history[-20:])),
                "seconds": round(training.seconds, 2),
                "torch_threads": torch.get_num_threads(),
            },
            report=report,
            checks=checks,
        )
        golden = classifier_golden(model, held_out_batch(plan.seed, GOLDEN_CANDIDATES).images)
        manifest = publish_squeezenet(
            self.registry,
            CLASSIFIER_NAME,
            training.net,
            class_names=shapes.CLASS_NAMES,
            tasks=CLASSIFIER_TASKS,
            input_size=recipe.input_size,
            mean=recipe.mean,
            std=recipe.std,
            value_scale=1.0,
            metadata=metadata,
            extra_files=golden,
        )
        self._check_round_trip(manifest, model, held_out_batch(plan.seed, 8).images)
        self.report.published[CLASSIFIER_NAME] = manifest.ref
        yield BootstrapEvent("publish", message=f"published {manifest.ref} (sha256 {manifest.sha256[:12]})")
        return manifest

    def _check_round_trip(self, manifest, model, images: np.ndarray) -> None:
        """The published model, loaded back as a service loads it, must give the same scores."""
        import torch

        loaded = load_model(self.registry, manifest, "cpu")
        x = model_inputs(model, images)
        with torch.inference_mode():
            if not torch.allclose(model(x), loaded(x), rtol=1e-4, atol=1e-4):
                raise FailedPrecondition(
                    f"{manifest.ref} does not reproduce the trained network's scores "
                    "after loading it back from the registry"
                )
        self._check_golden(manifest, loaded)

    def _check_golden(self, manifest, loaded) -> None:
        """The published model, loaded back, must pass the golden examples it was published with."""
        report = run_golden(manifest, loaded, lambda f: self.registry.read_file(manifest, f))
        if report.state != "passed":
            raise FailedPrecondition(f"{report.line()} right after publishing it")

    def _captioner(self, classifier, check):
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            data_dir = self.work_dir / "shapes-captions"
            if data_dir.exists():
                shutil.rmtree(data_dir)
            yield from self._captioner_in(classifier, data_dir, check)
        else:
            with tempfile.TemporaryDirectory(prefix="pixelrpc-bootstrap-") as tmp:
                yield from self._captioner_in(classifier, Path(tmp) / "shapes-captions", check)

    def _captioner_in(self, classifier, data_dir: Path, check):
        from pixelrpc.models.captioning.captioning_rnn import save_to_registry
        from pixelrpc.models.captioning.data import CocoCaptioningData
        from pixelrpc.models.captioning.training import loss_curve_png

        plan, recipe = self.plan, self.plan.captioner
        dataset, data_seed = yield from self._caption_data(data_dir)
        yield from self._features(classifier, data_dir, check)
        mean, std = feature_statistics(data_dir / "train_features.h5")
        for split in ("train", "val"):
            standardise_features(
                data_dir / f"{split}_features.h5", data_dir / f"{split}_features_std.h5", mean, std
            )

        t0 = time.perf_counter()
        training, all_train, keep = yield from self._train_captioner(classifier, data_dir, check)
        fold_standardisation(training.model, mean, std)  # now it reads the encoder's raw features
        self.report.seconds["captioner_training"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        yield BootstrapEvent("captioner-eval", message=f"scoring {recipe.held_out_scenes} held-out scenes")
        with CocoCaptioningData.open(
            data_dir, train_features="train_features.h5", val_features="val_features.h5"
        ) as raw:
            report = evaluate_captioner_against_constant(training.model, raw, all_train)
            val_features = raw.split("val").features
            golden_rows = np.arange(min(GOLDEN_CANDIDATES, val_features.num_images))
            golden = captioner_golden(training.model, val_features.read(golden_rows), self.plan.seed)
        from pixelrpc.models.captioning.explain_gate import explain_gate

        explained = explain_gate(training.model, load_model(self.registry, classifier, "cpu"),
                                 held_out_batch(plan.seed, plan.explain_scenes))
        report = dataclasses.replace(report, explain_saliency=explained.to_json())
        self.report.captioner = report
        self.report.seconds["captioner_evaluation"] = round(time.perf_counter() - t0, 2)
        checks = captioner_gates(report, plan.gates)
        yield from self._gate(checks)
        metadata = manifest_metadata(
            "LSTM captioner of the generated shapes world, on shapes-squeezenet's pooled features",
            plan,
            recipe,
            data={
                "layout": "CS231n COCO captioning (write_coco_layout)",
                "seed": data_seed,
                "train_images": dataset.n_train,
                "train_captions": dataset.n_train_captions,
                "captions_learned": int(keep.sum()),
                "caption_selection": "per image, its best references by: largest object named first, "
                "not the 'a B with a A ... it' wording, second largest named "
                "next, 'there is' wording (preferred_captions)",
                "held_out_images": dataset.n_val,
                "held_out_captions": dataset.n_val_captions,
            },
            training={
                "feature_standardisation": "trained on (features - mean) / std of the training features, "
                "then folded into W_proj and b_proj: the model reads raw encoder features",
                "solver": training.training_metadata()["config"],
                "validation_history": training.validation,
                "final_loss": training.metrics()["final_train_loss"],
                "seconds": round(training.seconds, 2),
            },
            report=report,
            checks=checks,
        )
        curve = loss_curve_png(
            training.loss_history,
            validation=training.validation,
            title=f"{CAPTIONER_NAME} ({recipe.cell_type})",
        )
        manifest = save_to_registry(
            training.model,
            self.registry,
            CAPTIONER_NAME,
            encoder=classifier,
            metadata=metadata,
            extra_files={"loss_curve.png": curve, **golden},
        )
        self._check_golden(manifest, load_model(self.registry, manifest, "cpu"))
        self.report.published[CAPTIONER_NAME] = manifest.ref
        yield BootstrapEvent("publish", message=f"published {manifest.ref} (encoder {classifier.ref})")
        return manifest

    def _caption_data(self, data_dir: Path):
        """Write the captioning data set (COCO layout) of the plan; returns (ShapesDataset, its seed)."""
        recipe = self.plan.captioner
        data_seed = int(seed_stream(self.plan.seed, "captioner-data").generate_state(1)[0])
        t0 = time.perf_counter()
        total = recipe.train_scenes + recipe.held_out_scenes
        yield BootstrapEvent("captioning-data", 0, total, message=f"writing {total} scenes")
        dataset = shapes.write_coco_layout(
            data_dir, recipe.train_scenes, recipe.held_out_scenes, seed=data_seed, size=SCENE_SIZE
        )
        yield BootstrapEvent("captioning-data", total, total)
        self.report.seconds["captioning_data"] = round(time.perf_counter() - t0, 2)
        return dataset, data_seed

    def _features(self, classifier, data_dir: Path, check):
        """``train_features.h5`` and ``val_features.h5``: the encoder's pooled features of every image."""
        from pixelrpc.models.captioning.features import extract_features

        recipe = self.plan.captioner
        t0 = time.perf_counter()
        encoder = load_model(self.registry, classifier, "cpu")
        pin = {"name": classifier.name, "version": classifier.version, "sha256": classifier.sha256}
        total, offset = recipe.train_scenes + recipe.held_out_scenes, 0
        for split, n in (("train", recipe.train_scenes), ("val", recipe.held_out_scenes)):
            for count in extract_features(
                encoder,
                data_dir / f"{split}2014",
                data_dir / f"{split}_features.h5",
                encoder_pin=pin,
                batch_size=256,
                check=check,
            ):
                yield BootstrapEvent("features", offset + count, total)
            offset += n
        self.report.seconds["features"] = round(time.perf_counter() - t0, 2)

    def _train_captioner(self, classifier, data_dir: Path, check):
        """Train on the standardised features and the preferred captions; returns (training, every
        training caption, which of them were learned)."""
        from pixelrpc.models.captioning.data import CaptionSplit, CocoCaptioningData
        from pixelrpc.models.captioning.training import CaptionerTraining, TrainConfig

        recipe = self.plan.captioner
        config = TrainConfig(
            cell_type=recipe.cell_type,
            hidden_dim=recipe.hidden_dim,
            wordvec_dim=recipe.wordvec_dim,
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate,
            lr_decay=recipe.lr_decay,
            seed=self.plan.seed,
            val_images=min(500, recipe.held_out_scenes),
        )
        with CocoCaptioningData.open(
            data_dir, train_features="train_features_std.h5", val_features="val_features_std.h5"
        ) as data:
            train = data.split("train")
            with np.load(data_dir / shapes.masks_filename("train"), allow_pickle=False) as masks:
                annotations = {k: masks[k] for k in ("num_objects", "shapes", "colours", "sizes", "centres")}
            classes = (
                annotations["shapes"].astype(np.int64) * len(shapes.COLOUR_NAMES) + annotations["colours"]
            )
            largest_two = largest_two_classes(annotations["num_objects"], classes)
            keep = preferred_captions(train.captions, train.image_idxs, largest_two, data.idx_to_word)
            data.splits["train"] = CaptionSplit(
                "train", train.captions[keep], train.image_idxs[keep], train.features
            )
            training = CaptionerTraining(data, config, encoder=classifier)
            image_features = train.features.read(
                np.arange(train.features.num_images)
            )  # (Nimg, D) standardised
            description = scene_description(**annotations, side=SCENE_SIZE)  # (Nimg, Q)
            init_projection_from_probe(training.model, image_features, description, seed=self.plan.seed)
            init_forget_gate_bias(training.model, recipe.forget_bias)
            for p in training.run(check):
                message = f"epoch {p.epoch}: val BLEU-4 {p.validation['bleu4']:.3f}" if p.validation else ""
                yield BootstrapEvent(
                    "captioner", p.iteration, p.total_iterations, message=message, loss=p.loss
                )
        return training, train.captions, keep


def scene_description(
    num_objects: np.ndarray,
    shapes: np.ndarray,
    colours: np.ndarray,
    sizes: np.ndarray,
    centres: np.ndarray,
    side: int,
) -> np.ndarray:
    """What a caption must say about each scene, as numbers: float32 (N, Q), Q = 72.

    Per object slot, largest first: one-hot shape (or empty), colour and size, and the centre in
    [0, 1]; then the relations of every slot pair (``relation_targets``) and which classes are present.
    Inputs are the per-object arrays of a ``*_masks.npz`` file (drawing order, padded with -1).
    """
    import types

    from pixelrpc.models.data import shapes as world

    batch = types.SimpleNamespace(
        num_objects=num_objects,
        shapes=shapes,
        colours=colours,
        sizes=sizes,
        centres=centres,
        images=np.zeros((1, side, side, 3), dtype=np.uint8),
    )
    t = slot_targets(batch)
    n, parts = len(num_objects), []
    for slot in range(world.MAX_OBJECTS):  # most important first: the largest object's description
        for name, width in (
            ("shape", len(world.SHAPES) + 1),
            ("colour", len(world.COLOUR_NAMES)),
            ("size", len(world.SIZES)),
        ):
            values = t[name][:, slot]  # (N,), -100 where the slot is empty
            one_hot = np.zeros((n, width), dtype=np.float32)
            rows = np.nonzero(values >= 0)[0]
            one_hot[rows, values[rows]] = 1.0
            parts.append(one_hot)
        parts.append(t["centre"][:, slot])  # (N, 2)
    parts.append((t["relation"] * t["related"][..., None]).reshape(n, -1))
    parts.append(t["presence"])
    return np.concatenate(parts, axis=1).astype(np.float32)


def init_projection_from_probe(
    model,
    features: np.ndarray,
    description: np.ndarray,
    *,
    ridge: float = 10.0,
    gain: float = 2.0,
    seed: int = 0,
) -> None:
    """Start the captioner's image projection from a linear probe of the scene description.

    The encoder's pooled features hold what a caption needs (objects, positions, relations), but
    spread over 512 dimensions among much else; an LSTM finds the positions and relations slowly
    from a random projection. So the first Q hidden units of ``h0`` start as the ridge-regression
    estimate of the scene description (``scene_description``) from the features, each scaled to
    standard deviation ``gain`` on the training images; the other H - Q columns keep their random
    initialisation (a captioner with H < Q gets the first H numbers of the description, the largest
    objects' first). Training then adjusts everything.

    Inputs: model, a ``CaptioningRNN`` with W_proj (D, H), b_proj (H,); features (N, D) (the inputs
    the model is trained on); description (N, Q).
    """
    h = model.params["W_proj"].shape[1]
    x = features.astype(np.float64)  # (N, D)
    y = description[:, :h].astype(np.float64)  # (N, Q)
    d, q = x.shape[1], y.shape[1]
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc = x - x_mean  # (N, D)
    w = np.linalg.solve(xc.T @ xc + ridge * np.eye(d), xc.T @ (y - y_mean))  # (D, Q)
    predicted = xc @ w  # (N, Q)
    scale = gain / np.maximum(predicted.std(axis=0), 1e-6)  # (Q,)
    w_proj = model.params["W_proj"].astype(np.float64)
    b_proj = model.params["b_proj"].astype(np.float64)
    w_proj[:, :q] = w * scale
    b_proj[:q] = -(x_mean @ w) * scale  # centred: (x - x_mean) w scale
    model.params["W_proj"][...] = w_proj.astype(model.dtype)
    model.params["b_proj"][...] = b_proj.astype(model.dtype)


def init_forget_gate_bias(model, value: float = 1.0) -> None:
    """Set an LSTM captioner's forget-gate biases (the second H of ``b``, gates i, f, o, g) to ``value``.

    With the default zero bias the cell keeps half of itself per step, so what ``h0`` says about the
    image fades within a few words; a positive bias lets it last to the relation word and the second
    object (Gers, Schmidhuber & Cummins, "Learning to forget", 2000; Jozefowicz, Zaremba & Sutskever,
    "An empirical exploration of recurrent network architectures", ICML 2015).
    """
    if model.cell_type != "lstm":
        return
    h = model.hidden_dim
    model.params["b"][h : 2 * h] = value


def feature_statistics(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (D,) of a feature file (std floored at 1e-6)."""
    from pixelrpc.models.captioning.data import FeatureFile

    features = FeatureFile(path)
    try:
        rows = features.read(np.arange(features.num_images)).astype(np.float64)  # (N, D)
    finally:
        features.close()
    return rows.mean(axis=0), np.maximum(rows.std(axis=0), 1e-6)


def standardise_features(src: Path, dst: Path, mean: np.ndarray, std: np.ndarray) -> None:
    """Write ``(features - mean) / std`` of ``src`` to ``dst``, with its image names and encoder pin."""
    from pixelrpc.models.captioning.data import FeatureFile, write_features

    features = FeatureFile(src)
    try:
        rows = features.read(np.arange(features.num_images))  # (N, D)
        write_features(
            dst, ((rows - mean) / std).astype(np.float32), names=features.names(), encoder=features.encoder
        )
    finally:
        features.close()


def fold_standardisation(model, mean: np.ndarray, std: np.ndarray) -> None:
    """Make a captioner trained on ``(f - mean) / std`` read raw features ``f``: the image projection
    ``h0 = ((f - mean) / std) W + b`` equals ``f (W / std) + (b - (mean / std) W)``.

    Inputs: model, a ``CaptioningRNN`` with W_proj (D, H), b_proj (H,); mean, std (D,).
    """
    w, b = model.params["W_proj"].astype(np.float64), model.params["b_proj"].astype(np.float64)
    model.params["W_proj"] = (w / std[:, None]).astype(model.dtype)  # (D, H)
    model.params["b_proj"] = (b - (mean / std) @ w).astype(model.dtype)  # (H,)


def bootstrap(
    registry,
    plan: Plan | str = FULL,
    *,
    force: bool = False,
    on_event: Callable[[BootstrapEvent], None] | None = None,
) -> BootstrapReport:
    """Run a whole bootstrap (see ``Bootstrap``) and return its report; raises ``GateFailed``."""
    if isinstance(plan, str):
        if plan not in PLANS:
            raise InvalidInput(
                f"unknown bootstrap plan {plan!r}; use one of {', '.join(PLANS)}", field="plan"
            )
        plan = PLANS[plan]
    runner = Bootstrap(registry, plan, force=force)
    for event in runner.run():
        if on_event is not None:
            on_event(event)
    return runner.report
