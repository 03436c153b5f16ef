"""Decoding captions from a ``CaptioningRNN``: greedy, beam search and temperature sampling.

All three strategies run on one engine, ``BatchDecoder``, which holds a set of *rows* (partial
captions: hidden state, cell state, last token) belonging to any number of requests. Every step
advances all rows with one matrix product, then each request picks its next tokens from its own
rows only. Requests can join and leave between steps (iteration-level batching, Yu et al., "Orca",
OSDI 2022), so a service can batch concurrent callers without making anyone wait for a whole batch.

Batching never changes a result, bitwise, in float32 (the default for float32 models) as in float64:

- every row's numbers are computed by the same arithmetic whatever the batch: the products are
  row-invariant by construction and measured so on the BLAS in use (``products``), and the softmax
  of a row reads that row only (see ``BatchDecoder``);
- a request's choices depend only on its own rows;
- each sampled caption draws from its own ``numpy.random.Generator(PCG64)``, seeded from the
  request's seed and the caption's index (``SeedSequence(seed).spawn``), one draw per step.

The strategies themselves (greedy, sampling, and beam search with length normalisation) are the
searches of ``search``: each request's search picks its next tokens from its own rows.

Reported log-probabilities are always the model's (temperature 1), whatever the strategy.

Dimension letters: N requests, R rows, D feature size, W word vector size, H hidden size,
V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pixelrpc.models.captioning import rnn_layers as L
from pixelrpc.models.captioning.products import invariant_product
from pixelrpc.models.captioning.search import Beam, Caption, Greedy, Independent, Search, TokenEvent
from pixelrpc.models.captioning.vocab import END, START
from pixelrpc.models.errors import FailedPrecondition, FieldViolation, InvalidInput
from pixelrpc.models.options import seed_violation

if TYPE_CHECKING:
    from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN

STRATEGIES = ("greedy", "beam", "sample")
MAX_LENGTH_LIMIT = 100
MAX_BEAM_WIDTH = 32
MAX_SAMPLES = 32


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode one request.

    - strategy: ``greedy``, ``beam`` or ``sample``.
    - max_length: the most tokens generated per caption, ``<END>`` included.
    - beam_width: K, for ``beam``.
    - length_penalty: alpha of the length normalisation, for ``beam`` (0: none).
    - temperature: for ``sample``; scores are divided by it before the softmax.
    - seed: for ``sample``; None draws a fresh seed (``resolved()`` fixes it so it can be reported).
    - num_captions: how many captions to return (the n-best for ``beam``, independent samples for
      ``sample``; 1 for ``greedy``).
    """

    strategy: str = "greedy"
    max_length: int = 30
    beam_width: int = 3
    length_penalty: float = 0.0
    temperature: float = 1.0
    seed: int | None = None
    num_captions: int = 1

    def validate(self, max_length_limit: int = MAX_LENGTH_LIMIT, field: str = "options") -> DecodeOptions:
        """Return self, or raise InvalidInput listing every bad field (``<field>.<name>``)."""
        bad: list[FieldViolation] = []

        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                bad.append(FieldViolation(f"{field}.{name}", message))

        check(self.strategy in STRATEGIES, "strategy",
              f"unknown strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        check(1 <= self.max_length <= max_length_limit, "max_length",
              f"max_length must be in [1, {max_length_limit}], got {self.max_length}")
        if self.strategy == "beam":
            check(1 <= self.beam_width <= MAX_BEAM_WIDTH, "beam_width",
                  f"beam_width must be in [1, {MAX_BEAM_WIDTH}], got {self.beam_width}")
            check(1 <= self.num_captions <= max(1, self.beam_width), "num_captions",
                  f"beam search returns at most beam_width ({self.beam_width}) captions, "
                  f"got num_captions={self.num_captions}")
            check(math.isfinite(self.length_penalty) and 0.0 <= self.length_penalty <= 5.0,
                  "length_penalty", f"length_penalty must be in [0, 5], got {self.length_penalty}")
        elif self.strategy == "sample":
            check(math.isfinite(self.temperature) and 1e-3 <= self.temperature <= 100.0, "temperature",
                  f"temperature must be in [0.001, 100], got {self.temperature}")
            check(1 <= self.num_captions <= MAX_SAMPLES, "num_captions",
                  f"num_captions must be in [1, {MAX_SAMPLES}] when sampling, got {self.num_captions}")
        else:
            check(self.num_captions == 1, "num_captions",
                  f"greedy decoding yields one caption, got num_captions={self.num_captions}; "
                  "use beam search or sampling for several")
        seed = seed_violation(self.seed, f"{field}.seed")  # checked whatever the strategy, as everywhere
        if seed is not None:
            bad.append(seed)
        if bad:
            raise InvalidInput("; ".join(v.description for v in bad), violations=bad)
        return self

    def resolved(self) -> DecodeOptions:
        """A copy with a concrete seed when sampling (drawn from fresh entropy if None)."""
        if self.strategy != "sample" or self.seed is not None:
            return self
        return dataclasses.replace(self, seed=int(np.random.SeedSequence().entropy) % 2**63)


@dataclass(frozen=True)
class Finished:
    """The last item of ``decode_steps``: the request's captions, best first."""

    captions: list[Caption]
    compute_ms: float = 0.0  # time spent decoding it (set by services that batch requests)


# --------------------------------------------------------------------------- engine


def _fingerprint(params: dict) -> tuple:
    """Identity of a model's parameters: the arrays and a sparse sample of their values (an in-place
    edit of a parameter changes the sample, in practice)."""
    return tuple((k, id(v), v.ctypes.data, v.reshape(-1)[::9973].tobytes()) for k, v in sorted(params.items()))


WEIGHTS_CACHE = "_decode_weights"  # the model attribute that keeps its decoding layouts (not pickled)


def _decode_weights(model: CaptioningRNN, dtype: np.dtype) -> tuple:
    """The decoding layout of the weights, built once per model and dtype (kept on the model) and
    rebuilt when its parameters change:

    - ``word_terms = W_embed Wx + b`` (V, G): a word's input term depends on the word only, so a
      step looks it up instead of multiplying;
    - ``out``: the product by ``[W_vocab | Wh]`` (H, V + G): one product of the new hidden state
      gives both this step's scores and the next step's recurrent term (``products``);
    - ``proj``: the product by ``W_proj`` (D, H); and ``b_vocab``, ``b_proj``.
    """
    cache = model.__dict__.setdefault(WEIGHTS_CACHE, {})
    key = _fingerprint(model.params)
    hit = cache.get(dtype.str)
    if hit is not None and hit[0] == key:
        return hit[1]
    p = {k: np.asarray(v, dtype=dtype) for k, v in model.params.items()}
    word_terms = invariant_product(p["Wx"])(p["W_embed"]) + p["b"]  # (V, G)
    out = invariant_product(np.concatenate([p["W_vocab"], p["Wh"]], axis=1))  # (H, V + G)
    weights = (np.ascontiguousarray(word_terms), out, p["b_vocab"].copy(), invariant_product(p["W_proj"]),
               p["b_proj"].copy())
    cache[dtype.str] = (key, weights)
    return weights


class BatchDecoder:
    """Decode many requests together, one recurrent step for all their rows at a time.

    ``add`` a request, call ``step`` until ``active`` is empty (requests may be added between
    steps), and collect each request's captions with ``pop_finished``.

    Batch invariance in float32 (the default for float32 models) as in float64: every product is
    row-invariant (``products.invariant_product``: fixed small-kernel tiles, or padded ``gemm``,
    whichever the BLAS in use passes), the element-wise math is per element, and the log-sum-exp of
    a row is a sum over that row only (C-ordered, no buffering). So a row's numbers never depend on which other
    rows share its step: a caption decoded alone and inside any batch is bitwise the same
    (tests/test_captioning_decoding.py checks every strategy at many batch sizes and positions).
    Greedy rows are advanced all at once with array operations; beam and sampling requests pick
    from their own rows.
    """

    def __init__(self, model: CaptioningRNN, *, dtype=None, max_length_limit: int = MAX_LENGTH_LIMIT):
        if model.start_idx is None or model.end_idx is None:
            raise FailedPrecondition(
                f"this captioner's vocabulary lacks {START} or {END}, so it cannot decode; "
                "train it on captions that include both tokens")
        dtype = np.dtype(dtype if dtype is not None else getattr(model, "dtype", np.float32))
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"decoding dtype must be float32 or float64, got {dtype}")
        self.model = model
        self.dtype = dtype
        self.max_length_limit = max_length_limit
        self.lstm = model.cell_type == "lstm"
        self.word_terms, self.out, self.b_vocab, self.proj, self.b_proj = _decode_weights(model, dtype)
        H, L = model.hidden_dim, max_length_limit
        self.V = len(self.b_vocab)
        self.h = np.zeros((0, H), dtype=dtype)  # (R, H)
        self.c = np.zeros((0, H), dtype=dtype)  # (R, H), LSTM only
        self.hWh = np.zeros((0, self.out.shape[1] - self.V), dtype=dtype)  # (R, G): h Wh, for the next step
        self.last = np.zeros(0, dtype=np.int64)  # (R,) last token of each row
        # Greedy rows' bookkeeping (unused for beam and sampling rows): tokens so far, the caption's
        # max_length, its tokens and log-probabilities, and whether it streams its tokens.
        self.pos = np.zeros(0, dtype=np.int64)
        self.limit = np.zeros(0, dtype=np.int64)
        self.tok_hist = np.zeros((0, L), dtype=np.int64)
        self.lp_hist = np.zeros((0, L), dtype=np.float64)
        self.emit = np.zeros(0, dtype=bool)
        self.searches: list[Search] = []
        self.results: dict[int, list[Caption]] = {}
        self._pending: list[tuple[Search, np.ndarray, bool]] = []  # (search, features, events): no rows yet
        self._others = 0  # beam and sampling searches among self.searches
        self._next_handle = 0

    @property
    def active(self) -> list[int]:
        return [s.handle for s in self.searches] + [s.handle for s, _, _ in self._pending]

    @property
    def num_rows(self) -> int:
        self._flush()
        return len(self.last)

    def add(self, features: np.ndarray, options: DecodeOptions, *, events: bool = True) -> int:
        """Start decoding one request; returns its handle.

        Inputs:
        - features: (D,) the image's feature vector
        - options: validated against ``max_length_limit``; a sampling request without a seed gets one
        - events: whether ``step`` reports this request's tokens as TokenEvents
        """
        x = check_features(self.model, np.asarray(features)[None])  # (1, D)
        options = options.validate(self.max_length_limit).resolved()
        handle = self._next_handle
        self._next_handle += 1
        words, end = self.model.idx_to_word, self.model.end_idx
        if options.strategy == "beam":
            search: Search = Beam(handle, options, end, words)
        elif options.strategy == "sample":
            search = Independent(handle, options, end, words, emit=events)
        else:
            search = Greedy(handle, options, end, words)
        self._pending.append((search, x[0].astype(self.dtype), events))  # h0 is computed in _flush
        return handle

    def _flush(self) -> None:
        """Give the requests added since the last step their rows (one concatenation for all)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        counts = [s.rows for s, _, _ in pending]
        n = sum(counts)
        H, L = self.h.shape[1], self.max_length_limit
        h0 = self.proj(np.stack([x for _, x, _ in pending])) + self.b_proj  # (requests, H)
        # (requests, G): h0 Wh by the same product as every later step's (a separate Wh product would
        # be a third of the work less, but its 4 MB of weights come cold from memory: measured slower)
        hWh0 = self.out(h0)[:, self.V:]
        one_each = n == len(pending)  # one row per request (greedy and single-caption requests)

        def rows_of(x: np.ndarray) -> np.ndarray:
            return x if one_each else np.repeat(x, counts, axis=0)

        def join(old: np.ndarray, new: np.ndarray) -> np.ndarray:
            return new if len(old) == 0 else np.concatenate([old, new])

        limits = [s.options.max_length if isinstance(s, Greedy) else 0 for s, _, _ in pending]
        emits = [e and isinstance(s, Greedy) for s, _, e in pending]
        self.h = join(self.h, rows_of(h0))  # (R, H)
        self.hWh = join(self.hWh, rows_of(hWh0))
        self.c = join(self.c, np.zeros((n, H), dtype=self.dtype))
        self.last = join(self.last, np.full(n, self.model.start_idx, dtype=np.int64))
        self.pos = join(self.pos, np.zeros(n, dtype=np.int64))
        self.limit = join(self.limit, rows_of(np.asarray(limits, dtype=np.int64)))
        self.tok_hist = join(self.tok_hist, np.zeros((n, L), dtype=np.int64))
        self.lp_hist = join(self.lp_hist, np.zeros((n, L), dtype=np.float64))
        self.emit = join(self.emit, rows_of(np.asarray(emits, dtype=bool)))
        for search, _, _ in pending:
            self.searches.append(search)
            self._others += not isinstance(search, Greedy)

    def _take(self, idx: np.ndarray, h: np.ndarray, c: np.ndarray, hWh: np.ndarray) -> None:
        self.h, self.c, self.hWh = h[idx], c[idx], hWh[idx]  # (R', H), (R', H), (R', G)
        self.pos, self.limit, self.emit = self.pos[idx], self.limit[idx], self.emit[idx]
        self.tok_hist, self.lp_hist = self.tok_hist[idx], self.lp_hist[idx]

    def _forward(self):
        """One recurrent step of every row: new h, c (R, H), vocabulary scores (R, V) and the next
        step's h Wh (R, G), C-ordered."""
        H = self.h.shape[1]
        a = self.hWh + self.word_terms[self.last]  # (R, G): h Wh + x Wx + b
        if self.lstm:
            L.sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])
            np.tanh(a[:, 3 * H:], out=a[:, 3 * H:])
            c = a[:, H: 2 * H] * self.c  # f * c
            c += a[:, :H] * a[:, 3 * H:]  # + i * g
            h = np.tanh(c)
            h *= a[:, 2 * H: 3 * H]  # o * tanh(c)
        else:
            h = np.tanh(a)
            c = self.c
        both = self.out(h)  # (R, V + G)
        scores = np.ascontiguousarray(both[:, : self.V])  # rows contiguous: a row's sums read that row only
        scores += self.b_vocab
        return h, c, scores, both[:, self.V:]

    def step(self) -> list[TokenEvent]:
        """Advance every active request by one token; returns the tokens decided (greedy/sample)."""
        self._flush()
        if not self.searches:
            return []
        h, c, scores, hWh = self._forward()
        R = len(self.last)
        rows = np.arange(R)
        tok = scores.argmax(axis=1)  # (R,) greedy choices (first maximum, as np.argmax)
        top = scores[rows, tok]  # (R,) each row's maximum
        # log of sum(exp(s - max)) per row, float64; each row's sum reads that row only (C-ordered)
        log_z = np.log(np.exp(scores - top[:, None]).sum(axis=1).astype(np.float64))
        lp = -log_z  # (R,) log-probability of the argmax: s_tok - logsumexp(s), s_tok being the max
        pos = self.pos
        self.tok_hist[rows, pos] = tok
        self.lp_hist[rows, pos] = lp
        pos += 1
        events = self._greedy_events(tok, lp) if self.emit.any() else []
        if self._others == 0:  # all greedy: one row per request
            done = (tok == self.model.end_idx) | (pos >= self.limit)
            if done.any():
                for r in np.flatnonzero(done):
                    self._finish_greedy(self.searches[r], int(r))
                keep = ~done
                self.searches = [s for s, k in zip(self.searches, keep.tolist(), strict=True) if k]
                idx = np.flatnonzero(keep)
                self._take(idx, h, c, hWh)
                self.last = tok[idx]
            else:
                self.h, self.c, self.hWh, self.last = h, c, hWh, tok
            return events

        parents, tokens, kept = [], [], []
        offset = 0
        for search in self.searches:
            k = search.rows
            if isinstance(search, Greedy):
                t = int(tok[offset])
                if t == search.end or pos[offset] >= self.limit[offset]:
                    self._finish_greedy(search, offset)
                else:
                    parents.append(offset)
                    tokens.append(t)
            else:
                lse = top[offset: offset + k].astype(np.float64) + log_z[offset: offset + k]  # (k,)
                logp = scores[offset: offset + k].astype(np.float64) - lse[:, None]  # (k, V)
                par, tk, ev = search.advance(logp)
                parents.extend(offset + r for r in par)
                tokens.extend(tk)
                events.extend(ev)
                if search.done:
                    self.results[search.handle] = search.captions()
            offset += k
            if search.handle not in self.results:
                kept.append(search)
        self.searches = kept
        self._others = sum(not isinstance(s, Greedy) for s in kept)
        idx = np.asarray(parents, dtype=np.int64)
        self._take(idx, h, c, hWh)
        self.last = np.asarray(tokens, dtype=np.int64)
        return events

    def _greedy_events(self, tok: np.ndarray, lp: np.ndarray) -> list[TokenEvent]:
        words = self.model.idx_to_word
        out = []
        for r in np.flatnonzero(self.emit):
            search, t = self._search_of_row(int(r)), int(tok[r])
            out.append(TokenEvent(search.handle, 0, int(self.pos[r]) - 1, t, words[t], float(lp[r])))
        return out

    def _search_of_row(self, row: int) -> Search:
        if self._others == 0:
            return self.searches[row]
        offset = 0
        for search in self.searches:
            if row < offset + search.rows:
                return search
            offset += search.rows
        raise IndexError(row)

    def _finish_greedy(self, search: Search, row: int) -> None:
        n = int(self.pos[row])
        self.results[search.handle] = [search.caption(self.tok_hist[row, :n].tolist(),
                                                      self.lp_hist[row, :n].tolist())]

    def cancel(self, handle: int) -> None:
        """Drop a request (its rows stop being computed). Unknown or finished handles are ignored."""
        self._flush()
        offset = 0
        keep = np.ones(self.num_rows, dtype=bool)
        for i, search in enumerate(self.searches):
            if search.handle == handle:
                keep[offset: offset + search.rows] = False
                del self.searches[i]
                self._others -= not isinstance(search, Greedy)
                idx = np.flatnonzero(keep)
                self._take(idx, self.h, self.c, self.hWh)
                self.last = self.last[idx]
                return
            offset += search.rows
        self.results.pop(handle, None)

    def pop_finished(self) -> dict[int, list[Caption]]:
        """Captions of the requests finished since the last call, by handle."""
        out, self.results = self.results, {}
        return out


# --------------------------------------------------------------------------- entry points


def check_features(model: CaptioningRNN, features: np.ndarray, field: str = "features") -> np.ndarray:
    """Return (N, D) finite float features, or raise InvalidInput naming both dimensions."""
    features = np.asarray(features)
    if features.ndim == 1:
        features = features[None]
    if features.ndim != 2 or features.shape[1] != model.input_dim:
        got = features.shape[-1] if features.ndim >= 1 else 0
        raise InvalidInput(
            f"feature vector has dimension {got} (shape {tuple(features.shape)}) but this captioner "
            f"takes dimension {model.input_dim}", field=field)
    if not np.issubdtype(features.dtype, np.number) or not np.all(np.isfinite(features)):
        raise InvalidInput("feature vector contains NaN, infinity or non-numbers", field=field)
    return features


def decode_batch(model: CaptioningRNN, features: np.ndarray, options: Sequence[DecodeOptions], *,
                 check: Callable[[], None] | None = None, max_length_limit: int = MAX_LENGTH_LIMIT,
                 dtype=None) -> list[list[Caption]]:
    """Decode N requests together.

    Inputs:
    - features: (N, D) one feature vector per request
    - options: N DecodeOptions
    - check: called between steps (e.g. ``CancelToken.check``) to stop early by raising
    - dtype: compute dtype (None: the model's); batch invariance holds in float32 and float64

    Returns N lists of captions, best first for beam search, by caption index otherwise.
    """
    features = check_features(model, features)
    if len(options) != len(features):
        raise InvalidInput(f"{len(features)} feature vectors but {len(options)} option sets")
    decoder = BatchDecoder(model, max_length_limit=max_length_limit, dtype=dtype)
    handles = [decoder.add(f, o, events=False) for f, o in zip(features, options, strict=True)]
    results: dict[int, list[Caption]] = {}
    while decoder.active:
        if check is not None:
            check()
        decoder.step()
        results.update(decoder.pop_finished())
    return [results[h] for h in handles]


def decode(model: CaptioningRNN, features: np.ndarray, options: DecodeOptions | None = None, *,
           dtype=None, **kw) -> list[Caption]:
    """Captions of one feature vector (D,); keyword arguments build DecodeOptions if none are given."""
    options = options if options is not None else DecodeOptions(**kw)
    return decode_batch(model, np.asarray(features)[None], [options], dtype=dtype)[0]


def greedy(model: CaptioningRNN, features: np.ndarray, max_length: int = 30) -> Caption:
    """The greedy caption of one feature vector (D,)."""
    return decode(model, features, strategy="greedy", max_length=max_length)[0]


def beam_search(model: CaptioningRNN, features: np.ndarray, beam_width: int = 3, *, max_length: int = 30,
                length_penalty: float = 0.0, num_captions: int | None = None) -> list[Caption]:
    """The n-best captions of one feature vector (D,), best first (``num_captions`` default: K)."""
    return decode(model, features, strategy="beam", beam_width=beam_width, max_length=max_length,
                  length_penalty=length_penalty, num_captions=num_captions or beam_width)


def sample_captions(model: CaptioningRNN, features: np.ndarray, *, seed: int, temperature: float = 1.0,
                    num_captions: int = 1, max_length: int = 30) -> list[Caption]:
    """``num_captions`` captions of one feature vector (D,) sampled at ``temperature``, reproducibly."""
    return decode(model, features, strategy="sample", seed=seed, temperature=temperature,
                  num_captions=num_captions, max_length=max_length)


def decode_steps(model: CaptioningRNN, features: np.ndarray, options: DecodeOptions, *,
                 dtype=None) -> Iterator[TokenEvent | Finished]:
    """Decode one feature vector (D,) step by step: a TokenEvent per token as soon as it is chosen
    (greedy and sampling), then one ``Finished`` with all captions. The generator can be closed
    between any two steps to stop the work."""
    decoder = BatchDecoder(model, dtype=dtype)
    handle = decoder.add(features, options)
    while decoder.active:
        yield from decoder.step()
    yield Finished(decoder.pop_finished()[handle])
