"""Decoding captions from a ``CaptioningRNN``: greedy, beam search and temperature sampling.

All three strategies run on one engine, ``BatchDecoder``, which holds a set of *rows* (partial
captions: hidden state, cell state, last token) belonging to any number of requests. Every step
advances all rows with one matrix product, then each request picks its next tokens from its own
rows only. Requests can join and leave between steps (iteration-level batching, Yu et al., "Orca",
OSDI 2022), so a service can batch concurrent callers without making anyone wait for a whole batch.

Batching never changes a result:

- the computation runs in float64 by default, so the row-to-row differences that different batch
  shapes cause in matrix products (~1e-16) cannot flip an argmax in practice;
- a request's choices depend only on its own rows;
- each sampled caption draws from its own ``numpy.random.Generator(PCG64)``, seeded from the
  request's seed and the caption's index (``SeedSequence(seed).spawn``), one draw per step.

Beam search (e.g. Vinyals et al., "Show and tell", CVPR 2015) keeps K partial captions. At each
step the best ``K - finished`` extensions of the live beams are kept; an extension ending in
``<END>`` (or reaching ``max_length``) is finished, so the beam shrinks until every slot holds a
finished caption. Finished captions are ranked by ``sum(logprobs) / len ** alpha`` (length
normalisation as in Wu et al., "Google's neural machine translation system", 2016, in its simple
form; alpha = 0 ranks by total log-probability). With K = 1 this is exactly greedy decoding.

Reported log-probabilities are always the model's (temperature 1), whatever the strategy.

Dimension letters: N requests, R rows, D feature size, W word vector size, H hidden size,
V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from pixelrpc.models.captioning import rnn_layers as L
from pixelrpc.models.captioning.captioning_rnn import END, NULL, START, CaptioningRNN
from pixelrpc.models.errors import FailedPrecondition, FieldViolation, InvalidInput
from pixelrpc.models.options import seed_violation

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
class Caption:
    """One decoded caption.

    - tokens: generated word indices, ending with ``<END>`` when ``finished``.
    - words: the words of ``tokens`` without the final ``<END>``.
    - logprobs: the model's log-probability of each token (aligned with ``tokens``).
    - score: ranking score; the sum of ``logprobs``, length-normalised for beam search.
    - finished: False when ``max_length`` cut the caption before ``<END>``.
    """

    tokens: list[int]
    words: list[str]
    logprobs: list[float]
    score: float
    finished: bool

    @property
    def text(self) -> str:
        return " ".join(w for w in self.words if w not in (NULL, START, END))

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class TokenEvent:
    """A token as soon as it is decoded (greedy and sampling only: beam hypotheses still change)."""

    request: int  # the request's handle in its BatchDecoder
    caption: int  # which of the request's captions
    position: int  # 0-based position in the caption
    token: int
    word: str
    logprob: float


@dataclass(frozen=True)
class Finished:
    """The last item of ``decode_steps``: the request's captions, best first."""

    captions: list[Caption]


# --------------------------------------------------------------------------- searches


@dataclass
class _Hyp:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    total: float = 0.0

    def extend(self, token: int, logprob: float) -> _Hyp:
        return _Hyp(self.tokens + [token], self.logprobs + [logprob], self.total + logprob)


class _Search:
    """A request's selection rule. ``rows`` partial captions are live; ``advance`` consumes their
    log-probabilities (rows, V) and returns (parent rows, next tokens, events) of the rows to keep."""

    def __init__(self, handle: int, options: DecodeOptions, end: int, words: Sequence[str]):
        self.handle, self.options, self.end, self.words = handle, options, end, words
        self.finished: list[tuple[int, _Hyp, bool]] = []  # (caption index, hypothesis, ended)

    rows: int

    def advance(self, logp: np.ndarray) -> tuple[list[int], list[int], list[TokenEvent]]:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        return self.rows == 0

    def _caption(self, hyp: _Hyp, ended: bool, score: float) -> Caption:
        body = hyp.tokens[:-1] if ended else hyp.tokens
        return Caption(list(hyp.tokens), [self.words[t] for t in body], list(hyp.logprobs), score, ended)

    def captions(self) -> list[Caption]:
        done = sorted(self.finished, key=lambda item: item[0])
        return [self._caption(hyp, ended, hyp.total) for _, hyp, ended in done]


class _Independent(_Search):
    """Greedy (one row) or sampling (one row per caption): each row is an independent caption."""

    def __init__(self, handle, options, end, words):
        super().__init__(handle, options, end, words)
        n = options.num_captions
        self.live = list(range(n))  # caption index of each row
        self.hyps = [_Hyp() for _ in range(n)]
        self.rngs = None
        if options.strategy == "sample":
            children = np.random.SeedSequence(options.seed).spawn(n)
            self.rngs = [np.random.Generator(np.random.PCG64(child)) for child in children]

    @property
    def rows(self) -> int:
        return len(self.live)

    def _choose(self, row_logp: np.ndarray, caption: int) -> int:
        if self.rngs is None:
            return int(np.argmax(row_logp))
        z = row_logp / self.options.temperature
        cdf = np.cumsum(np.exp(z - z.max()))  # unnormalised, (V,)
        u = self.rngs[caption].random()
        return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(cdf) - 1)

    def advance(self, logp):
        parents, tokens, events = [], [], []
        still_live = []
        for row, caption in enumerate(self.live):
            token = self._choose(logp[row], caption)
            lp = float(logp[row, token])
            hyp = self.hyps[caption] = self.hyps[caption].extend(token, lp)
            events.append(TokenEvent(self.handle, caption, len(hyp.tokens) - 1, token, self.words[token], lp))
            if token == self.end or len(hyp.tokens) >= self.options.max_length:
                self.finished.append((caption, hyp, token == self.end))
            else:
                parents.append(row)
                tokens.append(token)
                still_live.append(caption)
        self.live = still_live
        return parents, tokens, events


class _Beam(_Search):
    """Shrinking beam search: K slots, each finished caption takes one for good."""

    def __init__(self, handle, options, end, words):
        super().__init__(handle, options, end, words)
        self.live_hyps = [_Hyp()]

    @property
    def rows(self) -> int:
        return len(self.live_hyps)

    def advance(self, logp):
        V = logp.shape[1]
        slots = self.options.beam_width - len(self.finished)
        totals = np.array([h.total for h in self.live_hyps])[:, None] + logp  # (rows, V)
        flat = totals.reshape(-1)
        # Best `slots` candidates; ties go to the lower (row, token) index, as np.argmax does.
        order = np.argsort(-flat, kind="stable")[:slots]
        parents, tokens, live = [], [], []
        for idx in order:
            row, token = divmod(int(idx), V)
            hyp = self.live_hyps[row].extend(token, float(logp[row, token]))
            if token == self.end or len(hyp.tokens) >= self.options.max_length:
                self.finished.append((len(self.finished), hyp, token == self.end))
            else:
                parents.append(row)
                tokens.append(token)
                live.append(hyp)
        self.live_hyps = live
        return parents, tokens, []

    def _score(self, hyp: _Hyp) -> float:
        alpha = self.options.length_penalty
        return hyp.total / (len(hyp.tokens) ** alpha) if alpha else hyp.total

    def captions(self) -> list[Caption]:
        ranked = sorted(self.finished, key=lambda item: (-self._score(item[1]), item[0]))
        return [self._caption(h, ended, self._score(h)) for _, h, ended in ranked[: self.options.num_captions]]


# --------------------------------------------------------------------------- engine


class BatchDecoder:
    """Decode many requests together, one recurrent step for all their rows at a time.

    ``add`` a request, call ``step`` until ``active`` is empty (requests may be added between
    steps), and collect each request's captions with ``pop_finished``.
    """

    def __init__(self, model: CaptioningRNN, *, dtype=np.float64, max_length_limit: int = MAX_LENGTH_LIMIT):
        if model.start_idx is None or model.end_idx is None:
            raise FailedPrecondition(
                f"this captioner's vocabulary lacks {START} or {END}, so it cannot decode; "
                "train it on captions that include both tokens")
        self.model = model
        self.max_length_limit = max_length_limit
        p = model.params
        self.p = {k: np.asarray(v, dtype=dtype) for k, v in p.items()}
        self.lstm = model.cell_type == "lstm"
        H = model.hidden_dim
        self.h = np.zeros((0, H), dtype=dtype)  # (R, H)
        self.c = np.zeros((0, H), dtype=dtype)  # (R, H), LSTM only
        self.last = np.zeros(0, dtype=np.int64)  # (R,)
        self.searches: list[_Search] = []
        self.results: dict[int, list[Caption]] = {}
        self._next_handle = 0

    @property
    def active(self) -> list[int]:
        return [s.handle for s in self.searches]

    @property
    def num_rows(self) -> int:
        return len(self.last)

    def add(self, features: np.ndarray, options: DecodeOptions) -> int:
        """Start decoding one request; returns its handle.

        Inputs:
        - features: (D,) the image's feature vector
        - options: validated against ``max_length_limit``; a sampling request without a seed gets one
        """
        x = check_features(self.model, np.asarray(features)[None])  # (1, D)
        options = options.validate(self.max_length_limit).resolved()
        handle = self._next_handle
        self._next_handle += 1
        words, end = self.model.idx_to_word, self.model.end_idx
        search = _Beam(handle, options, end, words) if options.strategy == "beam" else _Independent(
            handle, options, end, words)
        h0 = x.astype(self.h.dtype) @ self.p["W_proj"] + self.p["b_proj"]  # (1, H)
        rows = search.rows
        self.h = np.concatenate([self.h, np.repeat(h0, rows, axis=0)])  # (R + rows, H)
        self.c = np.concatenate([self.c, np.zeros((rows, self.h.shape[1]), dtype=self.h.dtype)])
        self.last = np.concatenate([self.last, np.full(rows, self.model.start_idx, dtype=np.int64)])
        self.searches.append(search)
        return handle

    def step(self) -> list[TokenEvent]:
        """Advance every active request by one token; returns the tokens decided (greedy/sample)."""
        if not self.searches:
            return []
        p = self.p
        x = p["W_embed"][self.last]  # (R, W)
        if self.lstm:
            h, c, _ = L.lstm_step_forward(x, self.h, self.c, p["Wx"], p["Wh"], p["b"])  # (R, H) x 2
        else:
            h, _ = L.rnn_step_forward(x, self.h, p["Wx"], p["Wh"], p["b"])  # (R, H)
            c = self.c
        logp = L.log_softmax(h @ p["W_vocab"] + p["b_vocab"], axis=1)  # (R, V)

        parents, tokens, events, kept = [], [], [], []
        offset = 0
        for search in self.searches:
            rows = search.rows
            par, tok, ev = search.advance(logp[offset: offset + rows])
            parents.extend(offset + r for r in par)
            tokens.extend(tok)
            events.extend(ev)
            offset += rows
            if search.done:
                self.results[search.handle] = search.captions()
            else:
                kept.append(search)
        self.searches = kept
        idx = np.asarray(parents, dtype=np.int64)
        self.h, self.c = h[idx], c[idx]  # (R', H)
        self.last = np.asarray(tokens, dtype=np.int64)
        return events

    def cancel(self, handle: int) -> None:
        """Drop a request (its rows stop being computed). Unknown or finished handles are ignored."""
        offset = 0
        keep = np.ones(self.num_rows, dtype=bool)
        for i, search in enumerate(self.searches):
            if search.handle == handle:
                keep[offset: offset + search.rows] = False
                del self.searches[i]
                self.h, self.c, self.last = self.h[keep], self.c[keep], self.last[keep]
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
                 dtype=np.float64) -> list[list[Caption]]:
    """Decode N requests together.

    Inputs:
    - features: (N, D) one feature vector per request
    - options: N DecodeOptions
    - check: called between steps (e.g. ``CancelToken.check``) to stop early by raising
    - dtype: compute dtype; float32 is faster but gives up the batch-invariance guarantee

    Returns N lists of captions, best first for beam search, by caption index otherwise.
    """
    features = check_features(model, features)
    if len(options) != len(features):
        raise InvalidInput(f"{len(features)} feature vectors but {len(options)} option sets")
    decoder = BatchDecoder(model, max_length_limit=max_length_limit, dtype=dtype)
    handles = [decoder.add(f, o) for f, o in zip(features, options, strict=True)]
    results: dict[int, list[Caption]] = {}
    while decoder.active:
        if check is not None:
            check()
        decoder.step()
        results.update(decoder.pop_finished())
    return [results[h] for h in handles]


def decode(model: CaptioningRNN, features: np.ndarray, options: DecodeOptions | None = None,
           **kw) -> list[Caption]:
    """Captions of one feature vector (D,); keyword arguments build DecodeOptions if none are given."""
    options = options if options is not None else DecodeOptions(**kw)
    return decode_batch(model, np.asarray(features)[None], [options])[0]


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


def decode_steps(model: CaptioningRNN, features: np.ndarray,
                 options: DecodeOptions) -> Iterator[TokenEvent | Finished]:
    """Decode one feature vector (D,) step by step: a TokenEvent per token as soon as it is chosen
    (greedy and sampling), then one ``Finished`` with all captions. The generator can be closed
    between any two steps to stop the work."""
    decoder = BatchDecoder(model)
    handle = decoder.add(features, options)
    while decoder.active:
        yield from decoder.step()
    yield Finished(decoder.pop_finished()[handle])
