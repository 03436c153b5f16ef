"""Dynamic batching of caption decoding: concurrent requests for one model share every step.

One ``ModelBatcher`` per loaded captioner owns a ``BatchDecoder`` (see
``pixelrpc.models.captioning.decoding``) and a worker task on the server's event loop. The worker
admits waiting requests between two decoding steps (iteration-level batching, as in Orca, Yu et al.,
OSDI 2022), runs steps for every active request in the job executor (several in one executor call
while nobody streams tokens, nobody finishes, nobody waits to join and nobody is cancelled), and
hands each request its tokens and, at the end, its captions with the time of the steps it took part
in (``Finished.compute_ms``, reported as the call's ``compute_ms``).

Policy:

- ``max_batch_size`` requests are decoded together at most; the rest wait (at most
  ``max_pending``; beyond that a request is refused with RESOURCE_EXHAUSTED).
- When the worker is idle and a request arrives, it waits up to ``max_delay_s`` for others
  (or until the batch is full) before the first step, if requests have been concurrent in the last
  ``concurrency_window_s`` (a lone caller does not wait); requests arriving while a batch runs join it at the next
  step without waiting.
- While it has work the worker holds one job slot of the service's bounded executor, so the
  server's ``max_concurrency`` still bounds the CPU work. The service passes a slot acquire that
  waits in line and never refuses (``JobRunner.reacquire``): the requests were admitted already, and
  a full queue must make them wait, not fail every pending request at once.

A request's result never depends on its batch, bitwise (see ``BatchDecoder``): rows get the same
arithmetic whatever the batch and each sampled caption has its own generator. A cancelled call, or one whose deadline passed, leaves the batch at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from pixelrpc.models.captioning.decoding import BatchDecoder, DecodeOptions, Finished, TokenEvent
from pixelrpc.models.errors import Cancelled, CancelToken, DeadlineExceeded, Overloaded, PixelRPCError

log = logging.getLogger("pixelrpc.captioning.batcher")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 32
    max_delay_s: float = 0.002
    max_pending: int = 512
    concurrency_window_s: float = 0.1  # "concurrent lately": a step this recent decoded 2+ requests


@dataclass
class BatcherStats:
    steps: int = 0
    requests: int = 0
    max_batch: int = 0  # most requests decoded together in one step
    batch_sizes: dict[int, int] = field(default_factory=dict)  # requests per step -> number of steps


@dataclass
class StepOutcome:
    admitted: list
    rejected: list
    batch: int  # requests decoded in this step
    events: list[TokenEvent]
    finished: dict  # handle -> captions
    seconds: float = 0.0  # how long the steps took
    steps: int = 1  # decoding steps run (all with the same requests)


@dataclass(eq=False)
class _Request:
    features: np.ndarray  # (D,)
    options: DecodeOptions
    cancel: CancelToken
    want_tokens: bool
    queue: asyncio.Queue | None = None  # stream(): token events, then Finished or an error
    future: asyncio.Future | None = None  # decode(): Finished or an error
    handle: int | None = None
    compute_s: float = 0.0  # duration of the decoding steps this request took part in
    gone: bool = False  # the caller stopped listening
    done: bool = False


class ModelBatcher:
    """Batches the decoding requests of one captioner."""

    def __init__(self, model, *, policy: BatchPolicy, executor, acquire_slot: Callable | None = None,
                 release_slot: Callable | None = None, observe_batch: Callable[[int], None] | None = None,
                 count_inferences: Callable[[int], None] | None = None, max_length_limit: int = 100, dtype=None):
        self.model = model
        self.dtype = dtype
        self.policy = policy
        self.executor = executor
        self._acquire_slot, self._release_slot = acquire_slot, release_slot
        # Metrics: observe_batch(size) once per batch (a run of decoding steps over the same
        # requests, Triton's model execution), count_inferences(n) per finished request.
        self._observe, self._count = observe_batch, count_inferences
        self._new_batch = True  # the next step's requests differ from the last step's
        self.max_length_limit = max_length_limit
        # Built in the executor on the first step: preparing the weights (and, once per weight shape,
        # measuring the BLAS's row padding) takes long enough to stall the event loop.
        self.decoder: BatchDecoder | None = None
        self.pending: deque[_Request] = deque()
        self.active: dict[int, _Request] = {}
        self.stats = BatcherStats()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._last_shared_step = -1e9  # monotonic time of the last step that decoded 2+ requests

    # ------------------------------------------------------------------ callers
    @property
    def idle(self) -> bool:
        return not self.pending and not self.active

    def _enqueue(self, request: _Request) -> None:
        if len(self.pending) >= self.policy.max_pending:
            raise Overloaded(f"captioning queue full: {len(self.pending)} requests wait for a batch slot "
                             f"(max_pending={self.policy.max_pending}); retry later")
        self.pending.append(request)
        self._kick()

    def _leave(self, request: _Request) -> None:
        if not request.done:
            request.gone = True
            self._kick()

    async def stream(self, features: np.ndarray, options: DecodeOptions, cancel: CancelToken,
                     want_tokens: bool = True) -> AsyncIterator[TokenEvent | Finished]:
        """Decode one request with the others: TokenEvents (if wanted), then one ``Finished``."""
        request = _Request(np.asarray(features), options, cancel, want_tokens, queue=asyncio.Queue())
        self._enqueue(request)
        try:
            while True:
                item = await request.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            self._leave(request)

    async def decode(self, features: np.ndarray, options: DecodeOptions, cancel: CancelToken) -> Finished:
        """Decode one request with the others; returns its captions (one future, no token events:
        the unary path, where per-request event-loop work is most of the cost)."""
        request = _Request(np.asarray(features), options, cancel, False,
                           future=asyncio.get_running_loop().create_future())
        self._enqueue(request)
        try:
            return await request.future
        finally:
            self._leave(request)

    # ------------------------------------------------------------------ worker
    def _kick(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="caption-batcher")

    async def _gather_first_batch(self) -> None:
        """Idle -> busy: give concurrent callers ``max_delay_s`` to arrive together, but only when
        callers have been concurrent lately (a step of the last ``concurrency_window_s`` decoded two or
        more requests; 100 ms, so a lone caller after a burst stops waiting almost at once):
        a lone caller starts at once, and anyone arriving later joins at the next step anyway."""
        if self._last_shared_step < time.monotonic() - self.policy.concurrency_window_s:
            return
        deadline = time.monotonic() + self.policy.max_delay_s
        while len(self.pending) < self.policy.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        holding_slot = False
        try:
            while self.pending or self.active:
                if not self.active:
                    await self._gather_first_batch()
                if not holding_slot and self._acquire_slot is not None:
                    try:
                        await self._acquire_slot()
                    except PixelRPCError as exc:
                        self._fail_pending(exc)
                        continue
                    holding_slot = True
                admit, drop = self._plan_step()
                if not admit and not self.active and not drop:
                    continue
                try:
                    try:
                        outcome = await loop.run_in_executor(self.executor, self._step, admit, drop)
                    except RuntimeError as exc:  # the executor was shut down: the server is stopping
                        if "shutdown" not in str(exc):
                            raise
                        raise Cancelled("the server stopped before the caption was decoded") from None
                except Exception as exc:  # noqa: BLE001 - a decoding bug fails the batch, not the server
                    if not isinstance(exc, PixelRPCError):  # e.g. FailedPrecondition: a model that cannot decode
                        log.exception("caption decoding step failed; failing %d requests",
                                      len(self.active) + len(admit))
                    for request in admit:
                        self._finish(request, exc)
                    self._fail_all(exc)
                    continue
                self._deliver(outcome)
        finally:
            if holding_slot and self._release_slot is not None:
                self._release_slot()
            if self.pending or self.active:  # cancelled while busy (server stopping)
                self._fail_all(Cancelled("the server stopped before the caption was decoded"))

    def _plan_step(self) -> tuple[list[_Request], list[_Request]]:
        """Which waiting requests join now, which active ones leave (cancelled or expired)."""
        drop = []
        for request in list(self.active.values()):
            error = self._stop_reason(request)
            if error is not None:
                drop.append(request)
                del self.active[request.handle]
                self._finish(request, error)
                self._new_batch = True
        admit = []
        room = self.policy.max_batch_size - len(self.active)
        while self.pending and len(admit) < room:
            request = self.pending.popleft()
            error = self._stop_reason(request)
            if error is not None:
                self._finish(request, error)
                continue
            admit.append(request)
        return admit, drop

    @staticmethod
    def _stop_reason(request: _Request) -> PixelRPCError | None:
        if request.gone:
            return Cancelled("the caller went away")
        try:
            request.cancel.check()
        except (Cancelled, DeadlineExceeded) as exc:
            return exc
        return None

    def _step(self, admit: list[_Request], drop: list[_Request]):
        """In the executor: drop, admit, advance. Only this thread touches the decoder.

        It keeps stepping, without a round trip through the event loop, while there is nothing to
        hand over: it returns as soon as a step produced tokens someone streams or finished a
        request, a request waits to join, or an active one was cancelled or ran out of time.
        """
        start = time.perf_counter()
        if self.decoder is None:
            self.decoder = BatchDecoder(self.model, max_length_limit=self.max_length_limit, dtype=self.dtype)
        for request in drop:
            self.decoder.cancel(request.handle)
        admitted, rejected = [], []
        for request in admit:
            try:
                request.handle = self.decoder.add(request.features, request.options, events=request.want_tokens)
                admitted.append(request)
            except PixelRPCError as exc:
                rejected.append((request, exc))
        batch = len(self.decoder.active)
        events, finished, steps = [], {}, 0
        active = [*self.active.values(), *admitted]
        while batch:
            events = self.decoder.step()
            steps += 1
            finished = self.decoder.pop_finished()
            if (events or finished or self.pending or steps >= self.MAX_STEPS_PER_HOP
                    or any(self._stop_reason(r) is not None for r in active)):
                break
        return StepOutcome(admitted, rejected, batch, events, finished, time.perf_counter() - start, steps)

    MAX_STEPS_PER_HOP = 128

    def _deliver(self, outcome: StepOutcome) -> None:
        """On the event loop: hand every request what this step produced for it."""
        for request, exc in outcome.rejected:
            self._finish(request, exc)
        for request in outcome.admitted:
            self.active[request.handle] = request
        for request in self.active.values():
            request.compute_s += outcome.seconds
        if outcome.batch > 1:
            self._last_shared_step = time.monotonic()
        if outcome.batch:
            self.stats.steps += outcome.steps
            self.stats.max_batch = max(self.stats.max_batch, outcome.batch)
            self.stats.batch_sizes[outcome.batch] = self.stats.batch_sizes.get(outcome.batch, 0) + outcome.steps
            if outcome.admitted:
                self._new_batch = True
            if self._new_batch and self._observe is not None:
                self._observe(outcome.batch)  # once per batch, not per decoding step
            self._new_batch = False
        for event in outcome.events:
            request = self.active.get(event.request)
            if request is not None and request.want_tokens and not request.gone:  # stream() requests only
                request.queue.put_nowait(event)
        for handle, captions in outcome.finished.items():
            request = self.active.pop(handle, None)
            if request is not None:
                self.stats.requests += 1
                self._finish(request, Finished(captions, compute_ms=request.compute_s * 1000.0))
        if outcome.finished:
            self._new_batch = True
            if self._count is not None:
                self._count(len(outcome.finished))

    @staticmethod
    def _finish(request: _Request, item) -> None:
        request.done = True
        if request.queue is not None:
            request.queue.put_nowait(item)
        elif not request.future.done():
            if isinstance(item, BaseException):
                request.future.set_exception(item)
            else:
                request.future.set_result(item)

    def _fail_pending(self, exc: BaseException) -> None:
        while self.pending:
            self._finish(self.pending.popleft(), exc)

    def _fail_all(self, exc: BaseException) -> None:
        self._fail_pending(exc)
        for request in self.active.values():
            self._finish(request, exc)
        self.active.clear()
        self._new_batch = True
        self.decoder = None  # a fresh one on the next step
