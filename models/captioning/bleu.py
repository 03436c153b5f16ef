"""Corpus BLEU of captions (Papineni et al., "BLEU: a method for automatic evaluation of machine
translation", ACL 2002), computed with nltk's ``corpus_bleu``.

Tokens are lower-case whitespace-separated words with ``<START>``, ``<END>`` and ``<NULL>`` removed;
every reference caption of an image counts. BLEU-n uses nltk's default uniform weights over 1..n-grams
and no smoothing (a corpus without any matching 4-gram scores ~0 on BLEU-4, as nltk defines it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

SPECIAL_TOKENS = frozenset({"<start>", "<end>", "<null>"})
BLEU_WEIGHTS = {
    "bleu1": (1.0,),
    "bleu2": (1 / 2, 1 / 2),
    "bleu3": (1 / 3, 1 / 3, 1 / 3),
    "bleu4": (1 / 4, 1 / 4, 1 / 4, 1 / 4),
}


def text_tokens(text: str) -> list[str]:
    """Lower-case whitespace tokens of a caption, without ``<START>``, ``<END>``, ``<NULL>``."""
    return [t for t in text.lower().split() if t not in SPECIAL_TOKENS]


def id_tokens(ids: Sequence[int] | np.ndarray, idx_to_word: Sequence[str]) -> list[str]:
    """Tokens of a row of word indices, stopping at ``<END>``."""
    words = []
    for idx in ids:
        word = idx_to_word[int(idx)]
        if word == "<END>":
            break
        words.append(word)
    return text_tokens(" ".join(words))


def corpus_bleu_scores(references: Sequence[Sequence[Sequence[str]]],
                       hypotheses: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4 of a corpus.

    Inputs:
    - references: for each image, its reference captions as token lists
    - hypotheses: for each image, the generated caption as a token list

    Returns ``{"bleu1": ..., "bleu2": ..., "bleu3": ..., "bleu4": ...}``.
    """
    from nltk.translate.bleu_score import corpus_bleu

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets but {len(hypotheses)} hypotheses")
    if not hypotheses:
        return dict.fromkeys(BLEU_WEIGHTS, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nltk warns on zero n-gram overlaps
        scores = corpus_bleu([list(map(list, r)) for r in references], [list(h) for h in hypotheses],
                             weights=list(BLEU_WEIGHTS.values()))
    return {name: float(s) for name, s in zip(BLEU_WEIGHTS, scores, strict=True)}


def evaluate_bleu(model, split, *, max_images: int | None = 1000, batch_size: int = 256, max_length: int = 30,
                  seed: int = 0, check=None) -> dict[str, float]:
    """Greedy captions of a split's images against all their references.

    Inputs:
    - model: a ``CaptioningRNN``
    - split: a ``CaptionSplit`` (or anything with ``image_ids``, ``features.read``/``batch`` and
      ``references``)
    - max_images: evaluate a seeded random subset of this many images (None: all)
    - check: called between batches (e.g. ``CancelToken.check``)

    Returns BLEU-1..4 and ``images``, the number of images scored.
    """
    images = split.image_ids()
    if max_images is not None and len(images) > max_images:
        images = np.sort(np.random.default_rng(seed).choice(images, size=max_images, replace=False))
    references = [[id_tokens(row, model.idx_to_word) for row in refs] for refs in split.references(images)]
    hypotheses = []
    for start in range(0, len(images), batch_size):
        if check is not None:
            check()
        chunk = images[start: start + batch_size]
        features = _image_features(split, chunk)  # (B, D)
        sampled = model.sample(features, max_length=max_length)  # (B, max_length)
        hypotheses.extend(id_tokens(row, model.idx_to_word) for row in sampled)
    scores = corpus_bleu_scores(references, hypotheses)
    scores["images"] = len(images)
    return scores


def _image_features(split, image_ids: np.ndarray) -> np.ndarray:
    if hasattr(split, "features") and hasattr(split.features, "read"):
        return split.features.read(image_ids)
    return split.batch(image_ids)[1]  # ArrayCaptions: one feature vector per caption row
