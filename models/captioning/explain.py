"""Explain a caption: for every word, a saliency map of how much each input pixel drove it.

The map of word t is the gradient of its log-probability ``log p(w_t | image, w_<t)`` (at its step,
the previous words fixed) with respect to the image's pixels, reduced to ``max_c |grad|`` over the
colour channels as in the vanilla saliency of Simonyan et al., "Deep inside convolutional networks"
(ICLR 2014 workshop, arXiv:1312.6034) and the CS231n 2017 assignment. The caption is either the
captioner's own greedy caption or one the caller gives (teacher forcing: "how does the image support
*this* caption").

The gradient goes back in two halves:

1. through the numpy captioner, by hand, with the layers' own backward passes
   (``rnn_layers``): for the T words at once, the sequence is run as a minibatch of T identical
   rows and row k receives only ``d log p(w_k) / d scores_k = onehot(w_k) - softmax(scores_k)`` at
   step k; ``temporal_affine_backward`` (on those T steps) -> ``lstm_backward`` / ``rnn_backward`` ->
   the projection's ``affine_backward`` give ``d log p(w_k) / d features`` for every k as one (T, D)
   matrix;
2. through the torch image encoder, by autograd: one forward pass of the image and one backward
   pass batched over the words (``torch.autograd.grad(..., is_grads_batched=True)`` with the (T, D)
   matrix as ``grad_outputs``), so all words of a chunk share one backward (at most ``chunk_pixels``
   working pixels per chunk bound its memory). Measured on the default models (96 px, one thread):
   36 ms for 11 words, against 48 ms for a batch of 11 copies and about 90 ms for a backward per word.

``explain_steps`` is a generator (one ``ExplainedWord`` per word, then an ``ExplainedCaption``), so
a service can stream the words and stop between chunks when its call is cancelled.

Dimension letters: T words, D feature size, H hidden size, V vocabulary size, S the encoder's square
working side (its ``input_size``); images are normalised tensors (1, 3, S, S).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pixelrpc.models.captioning import rnn_layers as L
from pixelrpc.models.captioning.captioning_rnn import END, NULL, START, CaptioningRNN
from pixelrpc.models.errors import FailedPrecondition, InvalidInput, clip

# Working pixels (batch rows x S x S) of one encoder backward: 16 words at 96 px, 2 at 224 px.
CHUNK_PIXELS = 16 * 96 * 96
SPECIAL = (NULL, START, END, "<UNK>")


@dataclass(frozen=True)
class ExplainedWord:
    """One word and its map.

    - position: 0-based index of the word in the caption.
    - token, word: its vocabulary index and text.
    - log_prob: ``log p(word | image, previous words)`` under the captioner.
    - saliency: float32 (S, S), ``max_c |d log_prob / d x_c|`` over the encoder's working image.
    """

    position: int
    token: int
    word: str
    log_prob: float
    saliency: np.ndarray

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column) of the map's maximum."""
        r, c = np.unravel_index(int(np.argmax(self.saliency)), self.saliency.shape)
        return int(r), int(c)


@dataclass(frozen=True)
class ExplainedCaption:
    """The last item of ``explain_steps``: the caption whose words were explained.

    - tokens, words, log_probs: aligned, without ``<START>``/``<END>``.
    - end_log_prob: log-probability of ``<END>`` after the last word (None when the captioner has no
      ``<END>``, or a generated caption was cut by ``max_length``).
    - teacher_forced: the caller gave the caption; else it is the greedy caption.
    """

    tokens: tuple[int, ...]
    words: tuple[str, ...]
    log_probs: tuple[float, ...]
    end_log_prob: float | None
    teacher_forced: bool

    @property
    def text(self) -> str:
        """The words without special tokens, as ``decoding.Caption.text``."""
        return " ".join(w for w in self.words if w not in (NULL, START, END))

    @property
    def finished(self) -> bool:
        return self.end_log_prob is not None

    @property
    def log_prob(self) -> float:
        return float(sum(self.log_probs) + (self.end_log_prob or 0.0))


def tokenize(model: CaptioningRNN, caption: str, *, max_length: int, field: str = "caption") -> list[int]:
    """Word indices of a caption the caller gives (lower-cased, split on white space, a final full
    stop dropped). Unknown words, special tokens, an empty caption or one longer than ``max_length``
    words are refused with InvalidInput naming ``field`` (and the unknown words)."""
    words = caption.lower().replace(".", " ").split()
    if not words:
        raise InvalidInput(f"{field} is empty: give the words to explain, or leave it unset to explain "
                           "the captioner's own caption", field=field)
    if len(words) > max_length:
        raise InvalidInput(f"{field} has {len(words)} words, over max_length {max_length}", field=field)
    vocab = model.word_to_idx
    # A word of a sparse vocabulary whose index is V or more is one the model can neither read nor predict.
    unknown = sorted({w for w in words if w not in vocab or w in SPECIAL or vocab[w] >= model.vocab_size})
    if unknown:
        shown = ", ".join(repr(clip(w, 40)) for w in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        known = [w for w in model.idx_to_word if not w.startswith("<")]
        raise InvalidInput(
            f"{field} has {len(unknown)} word(s) outside the captioner's vocabulary: {shown}; it knows "
            f"{len(known)} words (e.g. {', '.join(known[:8])})", field=field)
    return [vocab[w] for w in words]


def _needs_start(model: CaptioningRNN) -> int:
    if model.start_idx is None:
        raise FailedPrecondition("this captioner's vocabulary has no <START> token, so it cannot caption "
                                 "or explain a caption")
    return int(model.start_idx)


def word_feature_gradients(model: CaptioningRNN, features: np.ndarray, tokens: Sequence[int], *,
                           dtype=None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Log-probabilities of T words and their gradients with respect to the image features.

    Inputs:
    - features: (D,) one image's features.
    - tokens: T word indices, read after ``<START>`` (teacher forcing).
    - dtype: compute dtype (None: the model's).

    Returns ``(log_probs (T,), grads (T, D), end_log_prob)``: ``grads[k] = d log p(tokens[k]) / d
    features``; ``end_log_prob`` is ``log p(<END> | all T words)`` (None without ``<END>``).
    """
    dtype = np.dtype(dtype or model.dtype)
    p = {k: v.astype(dtype, copy=False) for k, v in model.params.items()}
    targets = np.asarray(tokens, dtype=np.int64)  # (T,)
    T = len(targets)
    if T == 0:
        raise InvalidInput("no words to explain", field="caption")
    start = _needs_start(model)
    end = model.end_idx
    read = np.concatenate([[start], targets]) if end is not None else np.concatenate([[start], targets[:-1]])
    steps = len(read)  # T, or T + 1 to score <END> after the last word
    f = np.broadcast_to(np.asarray(features, dtype=dtype), (T, model.input_dim))  # (T, D)
    h0, proj_cache = L.affine_forward(f, p["W_proj"], p["b_proj"])  # (T, H)
    x, _ = L.word_embedding_forward(np.broadcast_to(read, (T, steps)), p["W_embed"])  # (T, steps, W)
    forward, backward = (L.lstm_forward, L.lstm_backward) if model.cell_type == "lstm" else (
        L.rnn_forward, L.rnn_backward)
    h, rnn_cache = forward(x, h0, p["Wx"], p["Wh"], p["b"])  # (T, steps, H)
    # Every row is the same sequence, so the scores of row 0 are everyone's; row k needs them only at
    # step k, so the vocabulary layer runs forward and backward on that diagonal, (1, T, V), not on
    # T x steps x V numbers.
    scores, _ = L.temporal_affine_forward(h[:1], p["W_vocab"], p["b_vocab"])  # (1, steps, V)
    logp = L.log_softmax(scores[0])  # (steps, V)
    rows = np.arange(T)
    log_probs = logp[rows, targets]  # (T,)
    end_log_prob = float(logp[T, end]) if end is not None else None
    dscores = -np.exp(logp[None, :T])  # (1, T, V): d log p(w_k) / d scores_k = onehot(w_k) - softmax(scores_k)
    dscores[0, rows, targets] += 1.0
    ddiag, _, _ = L.temporal_affine_backward(dscores, (h[rows, rows][None], p["W_vocab"]))  # (1, T, H)
    dh = np.zeros_like(h)  # (T, steps, H): row k is driven only by log p(w_k) at step k
    dh[rows, rows] = ddiag[0]
    _, dh0, _, _, _ = backward(dh, rnn_cache)  # (T, H)
    dfeatures, _, _ = L.affine_backward(dh0, proj_cache)  # (T, D)
    return log_probs.astype(np.float64), dfeatures, end_log_prob


def encoder_features(encoder, x):
    """The encoder's features of a normalised image (1, 3, S, S) -> numpy (D,) (no graph kept)."""
    import torch

    with torch.no_grad():
        return encoder.embed(x)[0].detach().cpu().numpy()


def pixel_gradients(encoder, x, feature_grads: np.ndarray):
    """Vector-Jacobian products of the encoder: row k is ``feature_grads[k] . d embed(x) / d x``.

    One forward pass of x and one backward pass batched over the K rows (``torch.autograd.grad``
    with ``is_grads_batched``, vmap over the backward); an encoder whose backward has no batching rule
    falls back to one forward and backward of a batch of K copies of x.

    Inputs:
    - encoder: has ``embed((N, 3, S, S)) -> (N, D)``.
    - x: one normalised image (1, 3, S, S) (its dtype and device are kept).
    - feature_grads: (K, D) gradients with respect to the features.

    Returns a tensor (K, 3, S, S).
    """
    import torch

    k = int(feature_grads.shape[0])
    with torch.enable_grad():
        xs = x.detach().clone().requires_grad_(True)  # (1, 3, S, S)
        feats = encoder.embed(xs)  # (1, D)
        g = torch.from_numpy(np.ascontiguousarray(feature_grads)).to(dtype=feats.dtype, device=feats.device)
        try:
            (grad,) = torch.autograd.grad(feats, xs, grad_outputs=g[:, None, :], is_grads_batched=True)
            return grad[:, 0]  # (K, 3, S, S)
        except (RuntimeError, NotImplementedError):  # no vmap rule for some op of this encoder
            xs = x.detach().expand(k, *x.shape[1:]).clone().requires_grad_(True)  # (K, 3, S, S)
            (grad,) = torch.autograd.grad(encoder.embed(xs), xs, grad_outputs=g)
            return grad


def saliency_of(grad) -> np.ndarray:
    """``max_c |grad|``: (K, 3, S, S) tensor -> float32 numpy (K, S, S)."""
    return grad.abs().amax(dim=1).float().cpu().numpy()


def explain_steps(captioner: CaptioningRNN, encoder, x, *, caption: str | Sequence[int] | None = None,
                  max_length: int = 30, dtype=None, chunk_pixels: int | None = None,
                  ) -> Iterator[ExplainedWord | ExplainedCaption]:
    """Generator: an ``ExplainedWord`` per word of the caption, then one ``ExplainedCaption``.

    Inputs:
    - captioner: a ``CaptioningRNN`` reading the encoder's features.
    - encoder: an ``ImageModel`` (``embed``); x: its normalised input (1, 3, S, S).
    - caption: None explains the greedy caption (at most ``max_length`` tokens, ``<END>``
      included, as ``decode`` makes it); a string (``tokenize``) or word indices are teacher-forced.
    - dtype: the captioner's compute dtype (None: its own).
    - chunk_pixels: working pixels of one encoder backward (how many words share it); None:
      ``CHUNK_PIXELS``.

    Closing the generator between items stops the work (the next chunk is not computed).
    """
    from pixelrpc.models.captioning.decoding import check_features, decode

    if x.dim() != 4 or x.shape[0] != 1:
        raise InvalidInput(f"explain one image at a time: expected (1, 3, S, S), got {tuple(x.shape)}")
    features = encoder_features(encoder, x)  # (D,)
    if features.shape != (captioner.input_dim,):
        raise FailedPrecondition(f"the encoder gives {features.shape[-1]} features but the captioner takes "
                                 f"{captioner.input_dim}: it was not trained on this encoder")
    check_features(captioner, features, field="image")
    teacher_forced, cut = caption is not None, False
    if caption is None:
        _needs_start(captioner)
        if captioner.end_idx is None:
            raise FailedPrecondition("this captioner's vocabulary has no <END> token, so it cannot caption")
        best = decode(captioner, features, strategy="greedy", max_length=max_length, dtype=dtype)[0]
        tokens = [t for t in best.tokens if t != captioner.end_idx]
        cut = not best.finished
    elif isinstance(caption, str):
        tokens = tokenize(captioner, caption, max_length=max_length)
    else:
        tokens = [int(t) for t in caption]
        if not tokens or not all(0 <= t < captioner.vocab_size for t in tokens):
            raise InvalidInput(f"caption must be 1 or more word indices in [0, {captioner.vocab_size})",
                               field="caption")
    words = tuple(captioner.idx_to_word[t] for t in tokens)
    if not tokens:  # the captioner ended at once: nothing to explain
        yield ExplainedCaption((), (), (), float(best.logprobs[0]), teacher_forced)
        return
    log_probs, grads, end_log_prob = word_feature_gradients(captioner, features, tokens, dtype=dtype)
    if cut:  # max_length cut the caption before <END>
        end_log_prob = None
    side = int(x.shape[-1]) * int(x.shape[-2])
    per_chunk = max(1, int(chunk_pixels or CHUNK_PIXELS) // max(1, side))
    for first in range(0, len(tokens), per_chunk):
        maps = saliency_of(pixel_gradients(encoder, x, grads[first: first + per_chunk]))  # (K, S, S)
        for k, smap in enumerate(maps):
            t = first + k
            yield ExplainedWord(t, tokens[t], words[t], float(log_probs[t]), smap)
    yield ExplainedCaption(tuple(tokens), words, tuple(float(v) for v in log_probs), end_log_prob,
                           teacher_forced)


def explain_caption(captioner: CaptioningRNN, encoder, x, **kw) -> tuple[list[ExplainedWord], ExplainedCaption]:
    """``explain_steps`` run to the end: the words with their maps, and the caption."""
    words: list[ExplainedWord] = []
    for item in explain_steps(captioner, encoder, x, **kw):
        if isinstance(item, ExplainedWord):
            words.append(item)
        else:
            return words, item
    raise AssertionError("explain_steps always ends with an ExplainedCaption")


def map_to_source(saliency: np.ndarray, geometry) -> np.ndarray:
    """A working-size map (S, S) brought back to the image as it was sent: float32 (H, W).

    ``geometry`` (``imaging.Geometry``) says which box of the source the working image covers (the
    centre crop of the shorter side); the map is resized bilinearly onto that box and is zero
    outside it (those pixels never reached the encoder).
    """
    from PIL import Image

    width, height = geometry.source
    x0, y0, x1, y1 = geometry.box
    left, top = max(0, int(math.floor(x0 + 0.5))), max(0, int(math.floor(y0 + 0.5)))
    right, bottom = min(width, max(left + 1, int(math.floor(x1 + 0.5)))), min(height, max(top + 1, int(math.floor(y1 + 0.5))))
    smap = np.ascontiguousarray(saliency, dtype=np.float32)
    if (right - left, bottom - top) == (smap.shape[1], smap.shape[0]):
        resized = smap
    else:
        resized = np.asarray(Image.fromarray(smap, mode="F").resize((right - left, bottom - top),
                                                                      Image.Resampling.BILINEAR))
        resized = np.maximum(resized, 0.0)  # no ringing below zero
    if (left, top, right, bottom) == (0, 0, width, height):
        return np.ascontiguousarray(resized, dtype=np.float32)
    out = np.zeros((height, width), dtype=np.float32)
    out[top:bottom, left:right] = resized
    return out


def check_map_budget(width: int, height: int, max_bytes: int, field: str = "image") -> int:
    """Bytes of one word's map at the image's resolution; InvalidInput when a message could not hold it."""
    size = 4 * int(width) * int(height)
    if size > max_bytes:
        most = max_bytes // 4
        raise InvalidInput(
            f"the image is {width}x{height}: each word's saliency map at that resolution takes {size:,} bytes "
            f"(float32), over this server's message limit of {max_bytes:,} bytes (max_message_bytes); send an "
            f"image of at most {most:,} pixels", field=field)
    return size
