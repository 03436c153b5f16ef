"""Training ``shapes-squeezenet`` and scoring it on held-out scenes.

torchvision's SqueezeNet 1.1 (Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer
parameters and <0.5MB model size", arXiv:1602.07360), one output per class of ``shapes.CLASS_NAMES``,
trained on fresh scenes every epoch with AdamW (Kingma & Ba, ICLR 2015; Loshchilov & Hutter, ICLR
2019), a linear warm-up and a cosine decay (Loshchilov & Hutter, "SGDR", ICLR 2017), under bfloat16
autocast where the CPU has it, with training-only auxiliary heads (Caruana, "Multitask Learning",
1997). Held out: top-1 accuracy against the majority class, and where vanilla saliency maps
(Simonyan et al., arXiv:1312.6034) fall.

Dimensions: N scenes, K = ``shapes.MAX_OBJECTS`` object slots, C = 19 coverage classes, S the
network's square input side, h x w a trunk stage's grid, F = 512 pooled features.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pixelrpc.models.bootstrap.plan import SCENE_SIZE, ClassifierRecipe, seed_stream
from pixelrpc.models.bootstrap.scenes import (
    NUM_CLASSES,
    RELATION_WORDS,
    SLOT_PAIRS,
    coverage_maps,
    normalise,
    object_classes,
    resize_images,
    slot_targets,
)
from pixelrpc.models.data import shapes
from pixelrpc.models.errors import InvalidInput

# Indices into SqueezeNet 1.1's ``features`` whose outputs feed the dense coverage head
# (fire3, fire5, fire9) and their channel counts.
DENSE_TAPS = {4: 128, 7: 256, 12: 512}
SLOT_OUTPUTS = (
    len(shapes.SHAPES) + 1 + len(shapes.COLOUR_NAMES) + len(shapes.SIZES) + 2
)  # shape|absent, colour, size, x, y


# ---------------------------------------------------------------------------------------------------
# Training


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
# Held-out evaluation


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
