"""How each request of a ``BatchDecoder`` picks its next tokens, and the captions it produces.

A search holds one request's partial captions (its *rows* in the decoder) and chooses, from their
log-probabilities (rows, V), which rows live on and with which token:

- ``Greedy``: one row, the argmax at every step (the decoder advances greedy rows all at once);
- ``Independent``: sampling, one row per caption, each drawing from its own
  ``numpy.random.Generator(PCG64)`` seeded from the request's seed and the caption's index;
- ``Beam``: shrinking beam search.

Beam search (e.g. Vinyals et al., "Show and tell", CVPR 2015) keeps K partial captions. At each
step the best ``K - finished`` extensions of the live beams are kept; an extension ending in
``<END>`` (or reaching ``max_length``) is finished, so the beam shrinks until every slot holds a
finished caption. Finished captions are ranked by ``sum(logprobs) / len ** alpha`` (length
normalisation as in Wu et al., "Google's neural machine translation system", 2016, in its simple
form; alpha = 0 ranks by total log-probability). With K = 1 this is exactly greedy decoding.

Reported log-probabilities are always the model's (temperature 1), whatever the strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pixelrpc.models.captioning.vocab import END, NULL, START

if TYPE_CHECKING:
    from pixelrpc.models.captioning.decoding import DecodeOptions


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



@dataclass
class Hyp:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    total: float = 0.0

    def extend(self, token: int, logprob: float) -> Hyp:
        return Hyp(self.tokens + [token], self.logprobs + [logprob], self.total + logprob)


class Search:
    """A request's selection rule. ``rows`` partial captions are live; ``advance`` consumes their
    log-probabilities (rows, V) and returns (parent rows, next tokens, events) of the rows to keep."""

    def __init__(self, handle: int, options: DecodeOptions, end: int, words: Sequence[str]):
        self.handle, self.options, self.end, self.words = handle, options, end, words
        self.finished: list[tuple[int, Hyp, bool]] = []  # (caption index, hypothesis, ended)

    rows: int

    def advance(self, logp: np.ndarray) -> tuple[list[int], list[int], list[TokenEvent]]:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        return self.rows == 0

    def _caption(self, hyp: Hyp, ended: bool, score: float) -> Caption:
        body = hyp.tokens[:-1] if ended else hyp.tokens
        return Caption(list(hyp.tokens), [self.words[t] for t in body], list(hyp.logprobs), score, ended)

    def captions(self) -> list[Caption]:
        done = sorted(self.finished, key=lambda item: item[0])
        return [self._caption(hyp, ended, hyp.total) for _, hyp, ended in done]


class Greedy(Search):
    """Greedy decoding: one row, the argmax at every step. ``BatchDecoder`` advances greedy rows
    all at once (vectorised); this object only names the request and builds its caption."""

    rows = 1

    def caption(self, tokens: list[int], logprobs: list[float]) -> Caption:
        ended = tokens[-1] == self.end
        hyp = Hyp(tokens, logprobs, float(sum(logprobs)))
        return self._caption(hyp, ended, hyp.total)


class Independent(Search):
    """Sampling: one row per caption, each an independent caption with its own generator."""

    def __init__(self, handle, options, end, words, emit: bool = True):
        super().__init__(handle, options, end, words)
        n = options.num_captions
        self.emit = emit
        self.live = list(range(n))  # caption index of each row
        self.hyps = [Hyp() for _ in range(n)]
        children = np.random.SeedSequence(options.seed).spawn(n)
        self.rngs = [np.random.Generator(np.random.PCG64(child)) for child in children]

    @property
    def rows(self) -> int:
        return len(self.live)

    def _choose(self, row_logp: np.ndarray, caption: int) -> int:
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
            if self.emit:
                events.append(TokenEvent(self.handle, caption, len(hyp.tokens) - 1, token, self.words[token], lp))
            if token == self.end or len(hyp.tokens) >= self.options.max_length:
                self.finished.append((caption, hyp, token == self.end))
            else:
                parents.append(row)
                tokens.append(token)
                still_live.append(caption)
        self.live = still_live
        return parents, tokens, events


class Beam(Search):
    """Shrinking beam search: K slots, each finished caption takes one for good."""

    def __init__(self, handle, options, end, words):
        super().__init__(handle, options, end, words)
        self.live_hyps = [Hyp()]

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

    def _score(self, hyp: Hyp) -> float:
        alpha = self.options.length_penalty
        return hyp.total / (len(hyp.tokens) ** alpha) if alpha else hyp.total

    def captions(self) -> list[Caption]:
        ranked = sorted(self.finished, key=lambda item: (-self._score(item[1]), item[0]))
        return [self._caption(h, ended, self._score(h)) for _, h, ended in ranked[: self.options.num_captions]]
