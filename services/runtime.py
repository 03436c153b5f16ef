"""What every servicer stands on: the service context, the per-call helper and the ``@rpc`` decorator.

A servicer method is thin (MLServer's layering): it converts the request, calls a domain function
through ``call.run`` or ``call.steps`` (bounded executor, queue depth, cancellation), and converts the
result. ``@rpc`` gives every method the same request id, access log line, metrics and error mapping.

``Call`` and ``@rpc`` live here; the ``ServiceContext`` they stand on in ``services/context.py``, the
job runner and the decoded-pixel budget in ``services/jobs.py`` (their names are re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import itertools
import json
import logging
import re
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from pixelrpc.models.errors import DEADLINE_PASSED, CancelToken, DeadlineExceeded, Overloaded, PixelRPCError
from pixelrpc.models.imaging import WorkingPlan
from pixelrpc.models.registry import LoadedModel
from pixelrpc.services import tracing
from pixelrpc.services.context import LAST_DEFAULT_KEY, Planner, ServiceContext  # noqa: F401 - re-exported
from pixelrpc.services.errors import REQUEST_ID_KEY, abort, status_code_for
from pixelrpc.services.jobs import (  # noqa: F401 - re-exported
    TRIM_AFTER_PIXELS,
    ImageAdmission,
    JobRunner,
    PixelBudget,
    compute_runner,
    torch_executor,
    trim_heap,
)
from pixelrpc.services.metrics import split_ref
from pixelrpc.services.streaming import SlotLease, send_stream
from pixelrpc.v1 import common_pb2

log = logging.getLogger("pixelrpc.server")
access_log = logging.getLogger("pixelrpc.access")
T = TypeVar("T")
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A handler cancelled this close to (or after) the client's deadline was cancelled by the deadline.
DEADLINE_SLACK_S = 0.05


def on_loop_clock(deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running event loop's clock (``asyncio.timeout_at``,
    ``loop.call_at``)."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


class Call:
    """One RPC as a servicer sees it."""

    def __init__(self, ctx: ServiceContext, grpc_context: grpc.aio.ServicerContext, method: str):
        self.ctx = ctx
        self.grpc = grpc_context
        self.method = method
        self.request_id = _incoming_request_id(grpc_context) or new_request_id()
        # read while the call is alive: after a deadline or cancel grpc may have freed the C call
        self.peer = grpc_context.peer()
        self.cancel = CancelToken()
        remaining = grpc_context.time_remaining() if hasattr(grpc_context, "time_remaining") else None
        # The client's deadline (the manifest's timeout_s may cap cancel.deadline further).
        self.deadline = time.monotonic() + remaining if remaining is not None else None
        self.cancel.deadline = self.deadline
        self.queue_ms = 0.0
        self.compute_ms = 0.0
        self.model: str = ""
        self.annotations: dict[str, Any] = {}
        self.model_choice = ""  # set when the server chose the model (the request named none)
        self.status = grpc.StatusCode.OK
        self.on_end: list[Callable[[], None]] = []
        self.trace = None  # (span, token) of the RPC's span when tracing is on

    async def run(self, fn: Callable[..., T], *args, executes: tuple[LoadedModel, int] | None = None,
                  **kwargs) -> T:
        """Run blocking work in the bounded executor; one job slot for its duration.

        A request takes one slot, once: everything heavy it does (decoding, the model, encoding the
        answer) belongs in that one job, so it is never refused after it was admitted.

        ``executes=(loaded, n)``: the work is one execution of ``loaded``'s model that makes ``n``
        inferences (e.g. n images classified together); counted once it succeeds (``executed``).
        """
        jobs = self.ctx.jobs
        await jobs.acquire(account=self._account_queue)
        pending: list[asyncio.Future] = []
        try:
            self.cancel.check()
            result = await self._in_executor(functools.partial(fn, *args, **kwargs), pending=pending)
        finally:
            self._release_after(pending)
        if executes is not None:
            self.executed(*executes)
        return result

    def executed(self, loaded: LoadedModel, inferences: int = 1) -> None:
        """Count one execution of ``loaded``'s model that made ``inferences`` inferences, under this
        call's service (``pixelrpc_inference_exec_total`` / ``pixelrpc_inference_total``, Triton's
        execution and inference counts). The captioning batcher counts its own batches."""
        self.ctx.metrics.count_execution(self.ctx.name, loaded.manifest.ref, inferences)

    def route(self, ctx: ServiceContext) -> None:
        """The call is served by ``ctx``'s service from here on (the Open Inference Protocol serves the
        models of every service of the process on one servicer): its job slots, and the ``service``
        label of its metrics and access log line."""
        if ctx is self.ctx:
            return
        self.ctx.metrics.in_flight.labels(self.ctx.name).dec()
        ctx.metrics.in_flight.labels(ctx.name).inc()
        self.ctx = ctx

    def limit_deadline(self, seconds: float) -> None:
        """Bring the call's deadline to at most ``seconds`` from now (a request's own ``timeout``)."""
        at = time.monotonic() + seconds
        if self.deadline is None or at < self.deadline:
            self.deadline = at
        if self.cancel.deadline is None or at < self.cancel.deadline:
            self.cancel.deadline = at

    @contextlib.contextmanager
    def item(self, timeout: float | None = None) -> Iterator[StreamItem]:
        """One request of a stream that carries many (CaptionStream, ModelStreamInfer), seen as a call
        of its own where limits are per request: its own cancel token (stopped with the call's too)
        whose deadline a model's ``timeout_s`` or the request's ``timeout`` (seconds from now) may
        shorten for this request alone, and its own ``on_end`` (a model's ``max_concurrency`` slot),
        run when the request ends. Everything else (metrics, accounting, routing) is the call's."""
        item = StreamItem(self, timeout)
        try:
            yield item
        finally:
            for release in item.on_end:
                release()

    async def within_deadline(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items`` until the call's deadline (a stream request's own, on ``Call.item``): waiting for
        the next item stops at the deadline, the job is cancelled (it stops within one step) and
        ``DeadlineExceeded`` is raised. Only the wait is timed, never the consumer between items
        (a timeout must not span a ``yield`` of an async generator)."""
        if self.deadline is None:
            async for item in items:
                yield item
            return
        iterator = aiter(items)
        while True:
            try:
                async with asyncio.timeout_at(on_loop_clock(self.deadline)):
                    item = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                self.cancel.cancel("the call's deadline passed")
                raise DeadlineExceeded(DEADLINE_PASSED) from None
            yield item

    @contextlib.asynccontextmanager
    async def deadline_scope(self):
        """Stop waiting at the call's deadline, as grpc stops a handler at its client's deadline (which
        HTTP has no stack to do): what the block awaits is cancelled (a job stops within one step and
        frees its slot), and the call ends DEADLINE_EXCEEDED."""
        if self.deadline is None:
            yield
            return
        try:
            async with asyncio.timeout_at(on_loop_clock(self.deadline)):
                yield
        except TimeoutError:
            self.cancel.cancel("the call's deadline passed")
            raise DeadlineExceeded(DEADLINE_PASSED) from None

    # ---- streams (services/streaming.py): the slot of the streaming job now running, if any
    _lease: SlotLease | None = None

    async def steps(self, make_generator: Callable[[], Iterator[T]],
                    executes: LoadedModel | None = None) -> AsyncIterator[T]:
        """Step a domain generator in the executor, one job slot for the job while it computes.

        Between steps it checks the cancel token (client cancel, deadline, shutdown), so a
        cancelled call stops within one step; the generator is then closed and its memory released.
        In a streaming RPC the next step is computed only when the client has room for the next
        message: while it waits for its client the job holds no slot (``park``), and it takes one
        again, waiting in line but never refused, before its next step.

        ``executes``: the job is one execution (one inference) of that model, counted when the
        generator is done (``executed``).
        """
        lease = SlotLease(self)
        await lease.acquire()
        self._lease = lease
        gen: Iterator[T] | None = None
        done = object()
        pending: list[asyncio.Future] = []
        try:
            self.cancel.check()
            gen = await self._in_executor(make_generator, pending=pending)
            while True:
                item = await self._in_executor(next, gen, done, pending=pending)
                if item is done:
                    if executes is not None:
                        self.executed(executes)
                    return
                yield item  # type: ignore[misc]
                await lease.resume()
                self.cancel.check()
        finally:
            self._lease = None
            self._release_after(pending, gen, lease)

    def park(self) -> None:
        """The stream waits for its client: give the job slot back until the next step (if one is held)."""
        if self._lease is not None:
            self._lease.park()

    def _release_after(self, pending: list[asyncio.Future], gen=None, lease: SlotLease | None = None) -> None:
        """Free the job slot (and close ``gen``) now, or once a step still running in a worker returns.

        A cancelled call stops awaiting at once, but its worker thread finishes the current step; the
        slot stays taken until then so ``max_concurrency`` bounds the work actually running. With a
        ``lease`` (``steps``) the slot is released only if the job holds it (not parked).
        """
        def finish(future=None):
            if future is not None and not future.cancelled():
                # The caller is gone: the step's outcome (often Cancelled) is of no use to anyone.
                # Retrieving it keeps asyncio from logging it with a traceback that would pin the
                # job's tensors in memory.
                future.exception()
            if gen is not None:
                try:
                    gen.close()
                except ValueError:  # still executing in a worker: cannot happen once the step is done
                    log.warning("could not close a generator of %s", self.method)
            if lease is not None:
                lease.release()
            else:
                self.ctx.jobs.release()

        if pending and not pending[-1].done():
            pending[-1].add_done_callback(finish)
        else:
            finish()

    async def _in_executor(self, fn: Callable[[], T] | Callable[..., T], *args,
                           pending: list[asyncio.Future] | None = None) -> T:
        """Run ``fn(*args)`` in a worker; ``pending`` receives the future (the step that may outlive a cancel)."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        with tracing.span(self.ctx.tracer, tracing.step_name(fn, self.method), {tracing.REQUEST_ID_ATTR: self.request_id}):
            future = loop.run_in_executor(self.ctx.jobs.executor, contextvars.copy_context().run, fn, *args)
            if pending is not None:
                pending[:] = [future]
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                self.cancel.cancel("the call was cancelled")
                raise
            finally:
                self.compute_ms += (time.perf_counter() - start) * 1000.0

    async def control(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run short blocking work (registry reads, model resolution, image headers) without a job slot.

        It runs on the service's small control executor, so it never waits behind inference and is
        never refused for lack of a slot. A model that is not loaded yet is loaded here.
        """
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            return await loop.run_in_executor(self.ctx.jobs.control, functools.partial(
                contextvars.copy_context().run, fn, *args, **kwargs))  # model loads join the call's trace
        finally:
            self.compute_ms += (time.perf_counter() - start) * 1000.0

    async def admit_images(self, items: Sequence[tuple[common_pb2.Image, str, Planner]],
                           plans: list[WorkingPlan] | None = None, *, wait: bool = False) -> ImageAdmission:
        """Check ``(image, field, planner)`` items from their headers and reserve their decoded pixels.

        ``planner(header, limits) -> WorkingPlan`` decides each image's working size (e.g.
        ``ImageModel.plan_input``). All of it happens before the call queues for its job slot: a
        refused request has decoded nothing and holds nothing. The reservation (the largest image's
        decoded pixels) is released when ``ImageAdmission.decode`` is done, or when the call ends.

        ``plans``: already made by ``ServiceContext.plan_images`` (e.g. in the control job that
        resolved the model, saving a hop to the control executor).

        ``wait``: an item of an admitted stream (CaptionStream) waits for room in the server-wide
        budget instead of being refused; the stream's window bounds how many items wait.
        """
        if plans is None:
            plans = await self.control(self.ctx.plan_images, items)
        pixels = max((p.cost for p in plans), default=0)
        release = await self._reserve_waiting(pixels) if wait else self.ctx.pixels.reserve(pixels)
        self.on_end.append(release)
        return ImageAdmission([(image_pb, name) for image_pb, name, _ in items], plans, release)

    async def _reserve_waiting(self, pixels: int) -> Callable[[], None]:
        """Reserve ``pixels``, polling while the budget is momentarily full (releases happen in worker
        threads); a request that could never fit is still refused (LimitExceeded)."""
        delay = 0.002
        while True:
            try:
                return self.ctx.pixels.reserve(pixels)
            except Overloaded:
                self.cancel.check()
                await asyncio.sleep(delay)
                delay = min(0.05, delay * 2)

    def deadline_passed(self) -> bool:
        """True once the client's deadline has passed (grpc then cancels the handler)."""
        return self.deadline is not None and time.monotonic() >= self.deadline - DEADLINE_SLACK_S

    def _account_queue(self, seconds: float) -> None:
        self.queue_ms += seconds * 1000.0
        self.ctx.metrics.queue_time.labels(self.ctx.name).observe(seconds)
        tracing.record(self.ctx.tracer, "queue wait", seconds, {tracing.REQUEST_ID_ATTR: self.request_id})

    def meta(self, loaded: LoadedModel | None = None, seed: int | None = None,
             choice: str = "") -> common_pb2.ResponseMeta:
        meta = common_pb2.ResponseMeta(request_id=self.request_id, compute_ms=self.compute_ms,
                                       queue_ms=self.queue_ms, model_choice=choice or self.model_choice)
        if loaded is not None:
            meta.model_name = loaded.manifest.name
            meta.model_version = loaded.manifest.version
            meta.model_sha256 = loaded.manifest.sha256
            self.model = loaded.manifest.ref
        if seed is not None:
            meta.seed = int(seed)
        return meta


_ID_PREFIX = uuid.uuid4().hex[:16]  # random per process
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A fresh 32-hex-digit request id: a random per-process prefix and a counter. (``uuid4()`` per
    request read the kernel's random source each time, about 1 ms on some VMs.)"""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class StreamItem:
    """``Call.item``: a view of a call for one request of a stream. ``cancel``, ``deadline`` and
    ``on_end`` are the request's own; every other attribute is read from and written to the call,
    and ``Call``'s methods run on the view (so ``run`` and ``steps`` check the request's token)."""

    _OWN = frozenset({"_call", "cancel", "deadline", "on_end"})

    def __init__(self, call: Call, timeout: float | None = None):
        at = time.monotonic() + timeout if timeout else None

        def sooner(deadline: float | None) -> float | None:
            return deadline if at is None else at if deadline is None else min(deadline, at)

        object.__setattr__(self, "_call", call)
        object.__setattr__(self, "deadline", sooner(call.deadline))
        object.__setattr__(self, "on_end", [])
        object.__setattr__(self, "cancel", CancelToken(deadline=sooner(call.cancel.deadline), parent=call.cancel))

    def __getattr__(self, name: str):
        value = getattr(type(self._call), name, None)
        if inspect.isfunction(value):  # a Call method: runs on this view
            return types.MethodType(value, self)
        return getattr(self._call, name)

    def __setattr__(self, name: str, value) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._call, name, value)


def _incoming_request_id(grpc_context) -> str | None:
    """The caller's ``x-request-id`` when it is a sane token (``[A-Za-z0-9._:-]``, at most 128)."""
    for key, value in grpc_context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID_OK.match(value):
            return value
    return None


def request_id_for(grpc_context) -> str:
    """The request id of a call failed outside ``@rpc`` (bad credentials, malformed bytes): the one
    ``@rpc`` already put in the trailers when the handler runs, else the caller's, else a new one."""
    try:
        for key, value in grpc_context.trailing_metadata() or ():
            if key == REQUEST_ID_KEY and isinstance(value, str):
                return value
    except Exception:  # noqa: BLE001 - a grpc without ServicerContext.trailing_metadata()
        pass
    return _incoming_request_id(grpc_context) or new_request_id()


async def _finish_error(call: Call, exc: BaseException) -> None:
    if isinstance(exc, PixelRPCError):
        code, message = status_code_for(exc), exc.message
    else:
        code = grpc.StatusCode.INTERNAL
        message = f"internal error (request id {call.request_id}); the server logged the details"
        log.error("unexpected error in %s (request id %s)", call.method, call.request_id, exc_info=exc)
    await abort(call.grpc, code, message, exc=exc, request_id=call.request_id)


def rpc(method):
    """Wrap a servicer method ``(self, request, call)`` as a grpc.aio handler ``(self, request, context)``.

    Unary and request-streaming methods return a response; server- and bidi-streaming methods are
    async generators, whose messages go out under ``send_stream``'s flow control (bounded send
    window, slot handed back while the client lags, stall limit). Domain errors become their status
    code with rich details; anything else becomes INTERNAL with a request id that is also in the
    server log; the server keeps serving.
    """
    is_stream = inspect.isasyncgenfunction(method)
    name = method.__name__

    async def _begin(self, context):
        ctx: ServiceContext = self.ctx
        call = Call(ctx, context, name)
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        ctx.metrics.in_flight.labels(ctx.name).inc()
        if ctx.tracer is not None:
            call.trace = tracing.start_rpc(ctx.tracer, context, tracing.service_name(self), name, call.request_id)
        return call, time.perf_counter()

    def _end(self, call: Call, started: float) -> None:
        ctx: ServiceContext = call.ctx  # the service that served the call (Call.route)
        for release in call.on_end:
            release()
        seconds = time.perf_counter() - started
        ctx.metrics.in_flight.labels(ctx.name).dec()
        if call.status == grpc.StatusCode.CANCELLED and call.deadline_passed():
            call.status = grpc.StatusCode.DEADLINE_EXCEEDED  # e.g. a stream closed by grpc at the deadline
        code = call.status
        model, version = split_ref(call.model)
        ctx.metrics.requests.labels(ctx.name, name, code.name, model, version).inc()
        ctx.metrics.latency.labels(ctx.name, name, model, version).observe(seconds)
        ctx.metrics.compute.labels(ctx.name, name, model, version).observe(call.compute_ms / 1000.0)
        tracing.end_rpc(call.trace, code.name, code.value[0], call.model)
        record = {"service": ctx.name, "method": name, "code": code.name, "request_id": call.request_id,
                  "ms": round(seconds * 1000, 2), "queue_ms": round(call.queue_ms, 2),
                  "compute_ms": round(call.compute_ms, 2), "peer": call.peer, "model": call.model}
        access_log.info("%s", json.dumps(record) if ctx.settings.log_format == "json" else
                        " ".join(f"{k}={v}" for k, v in record.items()), extra={"access": record})

    if is_stream:
        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            # A coroutine that writes (not a generator that yields) so that it can time each write:
            # send_stream bounds the messages computed ahead of the client and ends a stalled stream.
            call, started = await _begin(self, context)
            try:
                await send_stream(call, method(self, request, call), context)
            except (asyncio.CancelledError, Exception) as exc:  # every error is answered with a status
                await _answer_error(call, exc)
                raise
            finally:
                _end(self, call, started)
        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self, request, context):
        call, started = await _begin(self, context)
        try:
            return await method(self, request, call)
        except (asyncio.CancelledError, Exception) as exc:
            await _answer_error(call, exc)
            raise
        finally:
            _end(self, call, started)
    return unary_wrapper


async def _answer_error(call: Call, exc: BaseException) -> None:
    """Record the call's status and answer it; for domain and unexpected errors this raises grpc's abort."""
    if isinstance(exc, asyncio.CancelledError):
        # grpc cancels the handler both when the client cancels and when the deadline passes; the
        # client sees DEADLINE_EXCEEDED in the second case, and so do the access log and the metrics.
        expired = call.deadline_passed()
        call.status = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        call.cancel.cancel("the call's deadline passed" if expired else "cancelled by the caller")
        return
    code = _code_of(exc)
    if code is None:  # the servicer already aborted the call itself
        call.status = _context_code(call)
        return
    call.status = code
    await _finish_error(call, exc)


def _code_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status to answer with; None for grpc's own abort exception (already answered)."""
    if type(exc).__name__ == "AbortError" and type(exc).__module__.startswith("grpc"):
        return None
    if isinstance(exc, PixelRPCError):
        return status_code_for(exc)
    return grpc.StatusCode.INTERNAL


def _context_code(call: Call) -> grpc.StatusCode:
    try:
        code = call.grpc.code()
    except Exception:  # noqa: BLE001 - older grpc without ServicerContext.code()
        code = None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
