"""Dynamic batching of caption decoding: concurrent requests for one model share every step.

One ``ModelBatcher`` per loaded captioner, on the server's event loop, feeds the service's decoding
loop (``models/captioning/stepping.py``'s ``DecodeLoop``, in a worker process or a thread:
``services/decode_worker.py``). The loop admits requests between two decoding steps
(iteration-level batching, as in Orca, Yu et al., OSDI 2022) and never waits for the event loop:
the batcher sends it admissions and drops as they happen, and its reports (requests admitted, token
events, finished captions, expired deadlines) come back to ``on_report``, which hands each request
its tokens and, at the end, its captions with the time of the steps it took part in
(``Finished.compute_ms``, reported as the call's ``compute_ms``).

Policy:

- ``max_batch_size`` requests are decoded together at most; the rest wait (at most
  ``max_pending``; beyond that a request is refused with RESOURCE_EXHAUSTED).
- When the loop is idle and a request arrives, the batcher waits up to ``max_delay_s`` for others
  (or until the batch is full) before sending it, if requests have been concurrent in the last
  ``concurrency_window_s`` (a lone caller does not wait); requests arriving while a batch runs join
  it at the next step without waiting.
- While it has work the batcher holds one job slot of the service's bounded executor, so the
  server's ``max_concurrency`` still bounds the work. The service passes a slot acquire that waits
  in line and never refuses (``JobRunner.reacquire``): the requests were admitted already, and a
  full queue must make them wait, not fail every pending request at once.

A request's result never depends on its batch, bitwise (see ``BatchDecoder``): rows get the same
arithmetic whatever the batch and each sampled caption has its own generator. A cancelled call
leaves the batch at the next step; one whose deadline passes, at the next step of the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from pixelrpc.models.captioning.decoding import DecodeOptions, Finished, TokenEvent
from pixelrpc.models.captioning.stepping import Report, Update
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

    def __init__(self, model, *, policy: BatchPolicy, engine, acquire_slot: Callable | None = None,
                 release_slot: Callable | None = None, observe_batch: Callable[[int], None] | None = None,
                 count_inferences: Callable[[int], None] | None = None, max_length_limit: int = 100, dtype=None):
        self.policy = policy
        self.engine = engine  # a DecodeEngine (services/decode_worker.py)
        self.key = engine.register(self, model, dtype, max_length_limit)
        self._acquire_slot, self._release_slot = acquire_slot, release_slot
        # Metrics: observe_batch(size) once per batch (a run of decoding steps over the same
        # requests, Triton's model execution), count_inferences(n) per finished request.
        self._observe, self._count = observe_batch, count_inferences
        self._new_batch = True  # the next step's requests differ from the last step's
        self.pending: deque[_Request] = deque()  # waiting to be sent to the loop
        self.sent: dict[int, list[_Request]] = {}  # admissions sent, not yet reported: seq -> requests
        self.active: dict[int, _Request] = {}  # handle -> request, in the loop's batch
        self.leaving: set[int] = set()  # handles dropped, until the loop reports them gone
        self._seq = itertools.count()
        self.stats = BatcherStats()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._last_shared_step = -1e9  # monotonic time of the last step that decoded 2+ requests

    # ------------------------------------------------------------------ callers
    @property
    def idle(self) -> bool:
        return not self.pending and not self._in_loop

    @property
    def _in_loop_count(self) -> int:
        """Requests in the decoding loop's batch or sent to it and not yet admitted."""
        return len(self.active) + sum(len(r) for r in self.sent.values())

    @property
    def _in_loop(self) -> bool:
        """Whether the decoding loop has requests of this batcher, or steps it has not reported yet."""
        return bool(self.active or self.sent or self.leaving)

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

    # ------------------------------------------------------------------ feeding the loop
    def _kick(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()  # of this task's event loop
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="caption-batcher")
        self._wake.set()

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
        """Send admissions and drops while there is work; reports arrive in ``on_report``."""
        holding_slot = False
        try:
            while not self.idle:
                if not self._in_loop:
                    await self._gather_first_batch()
                if not holding_slot and self._acquire_slot is not None:
                    try:
                        await self._acquire_slot()
                    except PixelRPCError as exc:
                        self._fail_pending(exc)
                        continue
                    holding_slot = True
                self._wake.clear()
                admit, drop = self._plan()
                if admit or drop:
                    seq = next(self._seq)
                    if admit:
                        self.sent[seq] = admit
                    message = Update(self.key, seq, [(r.features, r.options, r.want_tokens, r.cancel.deadline)
                                                     for r in admit], drop)
                    try:
                        self.engine.update(message)
                    except PixelRPCError as exc:  # the loop is gone (WorkerLost): these fail with the rest
                        self._fail_all(exc)
                    continue
                if not self.idle:
                    await self._wake.wait()  # a report, an arrival or a departure
        finally:
            if holding_slot and self._release_slot is not None:
                self._release_slot()
            if not self.idle:  # cancelled while busy (server stopping)
                self._fail_all(Cancelled("the server stopped before the caption was decoded"))

    def _plan(self) -> tuple[list[_Request], list[int]]:
        """Which waiting requests join now, which active ones leave (cancelled or expired)."""
        drop = []
        for handle, request in list(self.active.items()):
            error = self._stop_reason(request)
            if error is not None:
                drop.append(handle)
                del self.active[handle]
                self.leaving.add(handle)
                self._finish(request, error)
                self._new_batch = True
        admit = []
        room = self.policy.max_batch_size - self._in_loop_count
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

    # ------------------------------------------------------------------ reports (on the event loop)
    def on_report(self, report: Report) -> None:
        """Hand every request what the loop did for it."""
        for seq, i, exc in report.rejected:
            self._finish(self.sent[seq][i], exc)
        left_meanwhile = False  # admitted after its caller went away: dropped at once
        for seq, i, handle in report.admitted:
            request = self.sent[seq][i]
            request.handle = handle
            self.active[handle] = request
            left_meanwhile = left_meanwhile or request.gone or request.cancel.cancelled
        for seq in {seq for seq, _, _ in (*report.rejected, *report.admitted)}:
            self.sent.pop(seq, None)
        self.leaving.difference_update(report.dropped)
        if report.admitted:
            self._new_batch = True
        for request in self.active.values():
            request.compute_s += report.seconds
        for handle in report.expired:
            request = self.active.pop(handle, None)
            if request is not None:
                self._finish(request, DeadlineExceeded("the call's deadline passed before the caption was decoded"))
                self._new_batch = True
        if report.steps:
            if report.batch > 1:
                self._last_shared_step = time.monotonic()
            self.stats.steps += report.steps
            self.stats.max_batch = max(self.stats.max_batch, report.batch)
            self.stats.batch_sizes[report.batch] = self.stats.batch_sizes.get(report.batch, 0) + report.steps
            if self._new_batch and self._observe is not None:
                self._observe(report.batch)  # once per batch, not per decoding step
            self._new_batch = False
        for event in report.events:
            request = self.active.get(event.request)
            if request is not None and request.want_tokens and not request.gone:  # stream() requests only
                request.queue.put_nowait(event)
        for handle, captions in report.finished.items():
            request = self.active.pop(handle, None)
            if request is not None:
                self.stats.requests += 1
                self._finish(request, Finished(captions, compute_ms=request.compute_s * 1000.0))
        if report.finished:
            self._new_batch = True
            if self._count is not None:
                self._count(len(report.finished))
        if report.failed is not None:
            exc = report.failed
            if not isinstance(exc, PixelRPCError):  # a decoding bug fails the batch, not the server
                log.error("caption decoding failed; failing %d requests: %r", self._in_loop_count, exc)
            self._fail_all(exc)
        if self.pending or left_meanwhile or not self._in_loop:  # room freed, someone to drop, or nothing
            self._kick()  # left (the job slot goes back); arrivals and departures kick by themselves

    def on_lost(self, exc: BaseException) -> None:
        """The decoding loop is gone (its process exited): everything sent to it fails."""
        for requests in self.sent.values():
            for request in requests:
                self._finish(request, exc)
        self.sent.clear()
        for request in self.active.values():
            self._finish(request, exc)
        self.active.clear()
        self.leaving.clear()
        self._new_batch = True
        self._kick()  # the batcher's task sends what waits, or ends and gives its job slot back

    def close(self) -> None:
        """The model was unloaded: the loop forgets its decoder."""
        self.engine.forget(self.key)

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
        self.on_lost(exc)
