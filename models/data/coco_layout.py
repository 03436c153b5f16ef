"""Writing datasets in the CS231n COCO captioning layout.

The layout of CS231n 2017 Assignment 3 (``coco_captioning/``), which the captioning data loader
(``pixelrpc.models.captioning.data``) reads, so that a generated world and real COCO are served by the
same commands::

    coco2014_captions.h5    train_captions (Ncap, L) int32, train_image_idxs (Ncap,) int32,
                            val_captions, val_image_idxs
    coco2014_vocab.json     {"idx_to_word": [...], "word_to_idx": {...}}
    train2014_urls.txt      one image path per line, line i = image index i (optional)
    val2014_urls.txt

A caption row is ``<START> w1 ... wk <END> <NULL> ...``; ``<NULL>`` is index 0, then ``<START>`` 1,
``<END>`` 2 and ``<UNK>`` 3, as in the real vocabulary. ``L`` is 17 in the real files (at most 15 words).
Feature files (``train2014_vgg16_fc7.h5`` etc.) are not written here: ``pixelrpc features extract`` computes
them from the images afterwards.

Dimensions: ``Ncap`` captions, ``L`` caption length in tokens (17).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pixelrpc.models.captioning.data import (  # the reader's own names: one definition of the layout
    CAPTIONS_FILE,
    VOCAB_FILE,
    decode_captions,
    url_file,
    write_captions,
    write_vocab,
)
from pixelrpc.models.errors import InvalidInput

SPLIT_DIRS = {"train": "train2014", "val": "val2014"}
CAPTION_LENGTH = 17  # <START> + at most 15 words + <END>, as in the CS231n files

NULL, START, END, UNK = "<NULL>", "<START>", "<END>", "<UNK>"
SPECIAL_TOKENS = (NULL, START, END, UNK)


def tokenize(text: str) -> list[str]:
    """Lower-case whitespace tokens, the convention of the CS231n captions and of BLEU here."""
    return text.lower().split()


def vocab_from_words(words: Iterable[str]) -> dict:
    """A vocabulary in the layout of ``coco2014_vocab.json``.

    Inputs:
    - words: the words of the corpus (any order, repeats allowed; special tokens are ignored).

    Returns a dict ``{"idx_to_word": list[str], "word_to_idx": dict[str, int]}`` with the four
    special tokens at indices 0..3 and the other words after them in sorted order, so the same set of
    words always gives the same indices.
    """
    regular = sorted({w for w in words if w not in SPECIAL_TOKENS})
    idx_to_word = list(SPECIAL_TOKENS) + regular
    return {"idx_to_word": idx_to_word, "word_to_idx": {w: i for i, w in enumerate(idx_to_word)}}


def encode_caption(text: str, word_to_idx: Mapping[str, int], length: int = CAPTION_LENGTH) -> np.ndarray:
    """Token ids of one caption: ``<START> w1 ... wk <END>`` padded with ``<NULL>``.

    Inputs:
    - text: the caption, tokenised with ``tokenize``.
    - word_to_idx: the vocabulary; a word it lacks becomes ``<UNK>``.
    - length: L, the row length.

    Returns an int32 array of shape (L,). Raises ``InvalidInput`` if the caption has more than
    ``L - 2`` words.
    """
    words = tokenize(text)
    if len(words) > length - 2:
        raise InvalidInput(
            f"caption has {len(words)} words but rows of length {length} hold at most {length - 2}: "
            f"{text!r}", field="caption")
    unk = word_to_idx[UNK]
    row = np.full(length, word_to_idx[NULL], dtype=np.int32)
    row[0] = word_to_idx[START]
    row[1:len(words) + 1] = [word_to_idx.get(w, unk) for w in words]
    row[len(words) + 1] = word_to_idx[END]
    return row


def encode_captions(captions_per_image: Sequence[Sequence[str]], word_to_idx: Mapping[str, int],
                    length: int = CAPTION_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """The caption table of one split.

    Inputs:
    - captions_per_image: for image i, its captions (several references per image).
    - word_to_idx: the vocabulary.
    - length: L.

    Returns ``(captions, image_idxs)``: int32 arrays of shapes (Ncap, L) and (Ncap,), with row r a
    caption of image ``image_idxs[r]``.
    """
    rows, idxs = [], []
    for image_idx, captions in enumerate(captions_per_image):
        for text in captions:
            rows.append(encode_caption(text, word_to_idx, length))
            idxs.append(image_idx)
    table = np.stack(rows) if rows else np.zeros((0, length), np.int32)  # (Ncap, L)
    return table, np.asarray(idxs, dtype=np.int32)


def image_relpath(split: str, index: int, ext: str = "png") -> str:
    """Path of image ``index`` of ``split`` relative to the dataset root (``train2014/000042.png``).

    Zero-padded names make file-name order equal image-index order, so features extracted from the
    folder in file-name order line up with ``{split}_image_idxs``.
    """
    return f"{SPLIT_DIRS[split]}/{index:06d}.{ext}"


def write_urls(path: str | Path, relpaths: Iterable[str]) -> None:
    """One image path per line; line i is image index i."""
    with open(path, "w", encoding="utf-8") as f:
        for p in relpaths:
            f.write(p + "\n")


def publish_directory(tmp_dir: Path, out_dir: Path) -> None:
    """Move a fully written ``tmp_dir`` to ``out_dir`` in one rename (``out_dir`` absent or empty)."""
    if out_dir.exists():
        out_dir.rmdir()  # only an empty folder can be replaced; callers check that first
    os.replace(tmp_dir, out_dir)


__all__ = [
    "CAPTIONS_FILE", "CAPTION_LENGTH", "SPECIAL_TOKENS", "SPLIT_DIRS", "VOCAB_FILE", "decode_captions",
    "encode_caption", "encode_captions", "image_relpath", "publish_directory", "tokenize", "url_file",
    "vocab_from_words", "write_captions", "write_urls", "write_vocab",
]
