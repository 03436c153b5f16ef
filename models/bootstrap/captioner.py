"""Training ``shapes-captioner`` on the classifier's features, and scoring it on held-out scenes.

The numpy LSTM ``CaptioningRNN`` (Vinyals et al., "Show and tell", CVPR 2015) is trained with the
captioning solver on standardised features (folded into the image projection afterwards), each
image's ``preferred_captions``, an image projection started from a linear probe of the scene
description and forget gates biased open. Held out: corpus BLEU-4 (Papineni et al., ACL 2002) of
greedy captions against the best single constant caption.

Dimensions: N images (or scenes), Ncap captions, T + 1 tokens per caption, D = F = 512 features,
H hidden units, Q = 72 numbers of a scene description.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixelrpc.models.bootstrap.scenes import slot_targets
from pixelrpc.models.data import shapes
from pixelrpc.models.errors import InvalidInput

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
# The captions it learns and its held-out record


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
# Its initialisation and its features


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
