"""What every servicer stands on: the service context, the per-call helper and the ``@rpc`` decorator.

A servicer method is thin (MLServer's layering): it converts the request, calls a domain function
through ``call.run`` or ``call.steps`` (bounded executor, queue depth, cancellation), and converts the
result. ``@rpc`` gives every method the same request id, access log line, metrics and error mapping.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import functools
import inspect
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from pixelrpc.models.errors import (
    CancelToken,
    InvalidInput,
    LimitExceeded,
    Overloaded,
    PixelRPCError,
    RegistryUnavailable,
)
from pixelrpc.models.imaging import (
    ImageHeader,
    ImageLimits,
    WorkingPlan,
    check_request,
    decode_image,
    decode_working,
    read_header,
)
from pixelrpc.models.registry import LoadedModel, ModelCache, Registry
from pixelrpc.services import tracing
from pixelrpc.services.errors import REQUEST_ID_KEY, abort, status_code_for
from pixelrpc.services.metrics import Metrics, split_ref
from pixelrpc.services.settings import Settings
from pixelrpc.services.streaming import SlotLease, send_stream
from pixelrpc.v1 import common_pb2

log = logging.getLogger("pixelrpc.server")
access_log = logging.getLogger("pixelrpc.access")
T = TypeVar("T")
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LAST_DEFAULT_KEY = "last_default"  # ServiceContext.state: task -> the (name, reason) last chosen
# A handler cancelled this close to (or after) the client's deadline was cancelled by the deadline.
DEADLINE_SLACK_S = 0.05
# After decoding an image of this many decoded pixels (16 MB), free heap pages go back to the OS.
TRIM_AFTER_PIXELS = 4_000_000
# How one image becomes what a job works on: (header, limits) -> WorkingPlan, e.g. ImageModel.plan_input.
Planner = Callable[[ImageHeader, ImageLimits], WorkingPlan]


class JobRunner:
    """A bounded executor: ``max_concurrency`` jobs run, ``queue_depth`` more may wait, the rest are refused.

    Beside it, a small ``control`` executor runs the short blocking work every call needs before (or
    instead of) a job: registry reads, model resolution, image headers. It takes no job slot, so
    ListModels, GetModel, DescribeImage and the admission of new work never wait behind inference.

    Slots and threads are separate: ``max_concurrency`` jobs are admitted at once, but their steps
    run on ``executor``, ``threads`` threads (default one: the torch thread). Torch work from two
    threads at once makes two OpenMP pools spin against each other on the same cores (a SqueezeNet
    forward went from 7.5 ms to 13-15 ms on 2 cores), so a process runs its torch work on one
    thread whose intra-op pool has the CPUs (``torch_threads``); admitted jobs take turns step by
    step. ``executor`` may be shared by the services of one process (``create_server`` does so).
    """

    def __init__(self, max_concurrency: int, queue_depth: int, threads: int = 1, name: str = "jobs",
                 control_threads: int = 4, executor: ThreadPoolExecutor | None = None):
        self.max_concurrency = max(1, max_concurrency)
        self.queue_depth = max(0, queue_depth)
        self.executor = executor or torch_executor(threads, name)
        self.compute = compute_runner(self.executor)  # blocking: fn() on the torch thread
        self.control = ThreadPoolExecutor(max_workers=max(1, control_threads),
                                          thread_name_prefix=f"{name}-control")
        self._semaphore: asyncio.Semaphore | None = None
        self._waiting = 0
        self.running = 0
        self.parked = 0  # streaming jobs that gave their slot back while they wait for their client
        self.rejoining = 0  # admitted jobs waiting to take a slot again (not counted against queue_depth)

    def _sem(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._semaphore

    async def acquire(self, account: Callable[[float], None] | None = None, *, admitted: bool = False) -> float:
        """Wait for a slot; returns the seconds waited. Raises Overloaded when the queue is full.

        ``account(seconds)`` receives the wait however it ends: granted, or cancelled in the queue
        (the caller went away or its deadline passed), so the access log and the queue metric report
        the real wait of calls that never ran. ``admitted`` work (``reacquire``) is never refused.
        """
        sem = self._sem()
        if not admitted and sem.locked() and self._waiting >= self.queue_depth:
            raise Overloaded(
                f"server busy: {self.running} jobs running and {self._waiting} queued "
                f"(max_concurrency={self.max_concurrency}, queue_depth={self.queue_depth}); retry later"
            )
        counter = "rejoining" if admitted else "_waiting"
        start = time.perf_counter()
        setattr(self, counter, getattr(self, counter) + 1)
        try:
            await sem.acquire()
        finally:
            setattr(self, counter, getattr(self, counter) - 1)
            waited = time.perf_counter() - start
            if account is not None:
                account(waited)
        self.running += 1
        return waited

    def release(self) -> None:
        self.running -= 1
        self._sem().release()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.control.shutdown(wait=False, cancel_futures=True)

    # ---- streams: slots of jobs already admitted (services/streaming.py)
    async def reacquire(self) -> float:
        """Take a slot for work that was already admitted (a stream resuming, a stream's lane, the
        caption batcher): wait in line like everyone, never refused. Returns the seconds waited.

        Such work is not counted against ``queue_depth``: it was admitted once, and refusing it now
        would fail a request half done; its number is bounded by the calls and streams admitted.
        """
        return await self.acquire(admitted=True)

    @property
    def contended(self) -> bool:
        """Someone waits for a slot: work that holds one across many small jobs should hand it over."""
        return self._waiting > 0 or self.rejoining > 0


_compute_thread = threading.local()


def torch_executor(threads: int = 1, name: str = "torch") -> ThreadPoolExecutor:
    """The executor that runs a process's jobs (torch work): ``threads`` threads, at least one."""
    return ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix=name,
                              initializer=_mark_compute_thread)


def _mark_compute_thread() -> None:
    _compute_thread.active = True


def compute_runner(executor: ThreadPoolExecutor) -> Callable[[Callable[[], T]], T]:
    """``run(fn)``: ``fn()`` on ``executor`` (a ``torch_executor``), waited for; at once when the caller
    already is one of its threads. Blocking: for the control executor and start-up, never the loop.

    Model loads and warm-ups go through it, so the only OpenMP pool in the process is the torch
    thread's: one started from a control thread made every later forward 1.7x slower (its idle pool
    and the torch thread's compete for the same cores).
    """

    def run(fn: Callable[[], T]) -> T:
        if getattr(_compute_thread, "active", False):
            return fn()
        return executor.submit(contextvars.copy_context().run, fn).result()  # the caller's trace context

    return run


class PixelBudget:
    """The decoded pixels a server has admitted and not yet decoded: admission by memory, not by count.

    A request reserves, before it queues, the decoded pixels it will hold at once (its largest
    image: images are decoded one at a time, each reduced to its working size before the next) and
    releases them once its images are decoded. A request that does not fit now is refused with
    RESOURCE_EXHAUSTED and RetryInfo (Overloaded); one that could never fit, with LimitExceeded.
    Nothing is allocated for a refused request.
    """

    def __init__(self, limit: int):
        self.limit = max(0, int(limit))
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, pixels: int) -> Callable[[], None]:
        """Reserve ``pixels``; returns an idempotent release."""
        pixels = int(pixels)
        if pixels > self.limit:
            raise LimitExceeded(
                f"the request needs {pixels:,} decoded pixels at once, over this server's limit of "
                f"{self.limit:,} pixels in flight (max_pixels_in_flight); send smaller images")
        with self._lock:
            if self.used + pixels > self.limit:
                raise Overloaded(
                    f"server busy: {self.used:,} decoded pixels in flight and this request needs {pixels:,} more, "
                    f"over max_pixels_in_flight={self.limit:,}; retry later")
            self.used += pixels
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self.used -= pixels

        return release


@dataclass
class ImageAdmission:
    """A request's images, checked from their headers, with their decoded pixels reserved server-wide.

    ``items`` are ``(image, field)`` pairs, ``plans`` their working plans. ``decode()`` runs in the
    request's job.
    """

    items: list[tuple[common_pb2.Image, str]]
    plans: list[WorkingPlan]
    release: Callable[[], None]

    def decode(self) -> list:
        """Decode one image at a time, each straight to its working size; then free the reservation.

        After big images the freed decoder buffers are handed back to the OS (``trim_heap``): glibc
        would otherwise keep them in the arena of the worker thread that decoded them, and the
        process's RSS would creep up by one decoded image per worker thread.
        """
        try:
            return [decode_working(image_pb.data, plan)
                    for (image_pb, _field), plan in zip(self.items, self.plans, strict=True)]
        finally:
            self.release()
            if max((p.cost for p in self.plans), default=0) >= TRIM_AFTER_PIXELS:
                trim_heap()


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim``; a no-op elsewhere). A few ms."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class ServiceContext:
    """Shared by every servicer of one service: settings, registry, model cache, jobs, metrics."""

    name: str  # "captioning", "visualization", "style"
    settings: Settings
    registry: Registry
    cache: ModelCache
    jobs: JobRunner
    metrics: Metrics
    tasks: tuple[str, ...] = ()
    services: list[str] = field(default_factory=list)  # fully qualified service names served
    state: dict = field(default_factory=dict)  # per-service objects (e.g. the captioning batcher)
    _model_calls: dict = field(default_factory=dict, repr=False)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    pixels: PixelBudget | None = None  # server-wide decoded pixels in flight (shared by a server's services)
    tracer: Any = None  # an OpenTelemetry tracer when tracing is on (services/tracing.py), else None
    # Work waiting elsewhere than the job queue, e.g. captions waiting for a batch: callables -> count.
    pending_sources: list[Callable[[], int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pixels is None:
            self.pixels = PixelBudget(self.settings.max_pixels_in_flight)
        self.metrics.watch_queue(self.name, self.pending, self.settings.queue_depth)

    def pending(self) -> int:
        """Work waiting now: calls queued for a job slot, admitted work waiting to take one again, and
        whatever ``pending_sources`` report (the ``pixelrpc_queue_pending`` gauge)."""
        return self.jobs._waiting + self.jobs.rejoining + sum(source() for source in self.pending_sources)

    @property
    def device(self) -> str:
        return self.cache.device

    def decode_image(self, image_pb: common_pb2.Image, field: str = "image"):
        """Decode at full size (header limits only); jobs that know their working size use ``Call.admit_images``."""
        return decode_image(self._image_bytes(image_pb, field), self.settings.image_limits, field)

    @staticmethod
    def _image_bytes(image_pb: common_pb2.Image | None, field: str) -> bytes:
        if image_pb is None or not image_pb.data:
            raise InvalidInput(f"{field} is required: send encoded PNG, JPEG or WebP bytes", field=field)
        return image_pb.data

    def plan_images(self, items: Sequence[tuple[common_pb2.Image, str, Planner]]) -> list[WorkingPlan]:
        """Headers, working sizes and the request's decoded-pixel sum, before any pixel is decoded.

        Blocking but quick (Pillow reads headers only): run it through ``Call.control``. Refusals:
        INVALID_ARGUMENT for an image beyond the per-image limits, LimitExceeded over
        ``max_request_pixels``.
        """
        limits = self.settings.image_limits
        plans = [plan(read_header(self._image_bytes(image_pb, name), limits, name), limits)
                 for image_pb, name, plan in items]
        check_request(plans, limits)
        return plans

    def choose_default(self, task: str, preferences: str | Sequence[str] | None) -> tuple[str, str]:
        """The model a request that names none gets, and why (reported as ``ResponseMeta.model_choice``).

        Rule: ``PIXELRPC_DEFAULT_MODEL`` if set; else the first of the service's preferences that is in
        the registry with ``task``; else the first registered model with ``task`` (by name); else the
        first preference, so that the NOT_FOUND error names it and says how to add it.
        """
        if self.settings.default_model:
            return self.settings.default_model, "PIXELRPC_DEFAULT_MODEL"
        prefs = [preferences] if isinstance(preferences, str) else list(preferences or ())
        try:
            available = {m.name for m in self.registry.list(task)}
        except RegistryUnavailable:  # keep answering with the last resolved default until it is back
            last = self.state.get(LAST_DEFAULT_KEY, {}).get(task)
            if last is None:
                raise
            return last[0], f"{last[1]}; registry unavailable, last resolved default"
        choice = self._choose_from(task, prefs, available)
        self.state.setdefault(LAST_DEFAULT_KEY, {})[task] = choice
        return choice

    @staticmethod
    def _choose_from(task: str, prefs: list[str], available: set[str]) -> tuple[str, str]:
        for i, name in enumerate(prefs):
            if name in available:
                return name, f"preferred default for {task} (choice {i + 1} of {', '.join(prefs)})"
        if available:
            name = sorted(available)[0]
            return name, f"first registered {task} model (none of {', '.join(prefs) or 'the preferences'} present)"
        if prefs:
            return prefs[0], f"preferred default for {task}"
        raise InvalidInput(f"model.name is required: no default model is configured for {task}",
                           field="model.name")

    def get_model(self, ref: common_pb2.ModelRef | None, *, task: str,
                  default: str | Sequence[str] | None = None, field: str = "model",
                  call: Call | None = None) -> LoadedModel:
        """Resolve and load a model for ``task``; an empty name takes the default (``choose_default``)."""
        name = ref.name if ref is not None and ref.name else ""
        version = ref.version if ref is not None else 0
        if not name:
            name, reason = self.choose_default(task, default)
            if call is not None:
                call.model_choice = reason
        loaded = self.cache.get(name, version)
        return self._admit_model(loaded, task, field, call)

    def cached_model(self, ref: common_pb2.ModelRef | None, *, task: str, field: str = "model",
                     call: Call | None = None) -> LoadedModel | None:
        """``get_model`` for a named model that is already loaded (see ``ModelCache.peek``), on the
        event loop without an executor hop; None when it needs the registry (then use ``get_model``
        on the control executor)."""
        if ref is None or not ref.name:
            return None
        loaded = self.cache.peek(ref.name, ref.version)
        if loaded is None:
            return None
        return self._admit_model(loaded, task, field, call)

    def _admit_model(self, loaded: LoadedModel, task: str, field: str, call: Call | None) -> LoadedModel:
        """Check that ``loaded`` serves ``task`` and apply its per-model serving limits to ``call``."""
        if task not in loaded.manifest.tasks:
            raise InvalidInput(
                f"model {loaded.manifest.ref} does not serve task {task!r} (its tasks: "
                f"{', '.join(loaded.manifest.tasks)})", field=f"{field}.name")
        if call is not None:
            self._apply_model_serving(loaded, call)
        return loaded

    def _apply_model_serving(self, loaded: LoadedModel, call: Call) -> None:
        """Per-model limits from the manifest's ``serving`` section: ``max_concurrency`` (calls beyond it
        get RESOURCE_EXHAUSTED) and ``timeout_s`` (caps the call's deadline)."""
        serving = loaded.serving
        timeout = serving.timeout_s
        if timeout > 0:
            limit_at = time.monotonic() + timeout
            if call.cancel.deadline is None or limit_at < call.cancel.deadline:
                call.cancel.deadline = limit_at
        limit = serving.max_concurrency
        if limit <= 0:
            return
        ref = loaded.manifest.ref
        with self._model_lock:
            running = self._model_calls.get(ref, 0)
            if running >= limit:
                raise Overloaded(f"model {ref} is serving {running} calls, its max_concurrency={limit} "
                                 "(manifest serving section); retry later")
            self._model_calls[ref] = running + 1

        def release() -> None:
            with self._model_lock:
                self._model_calls[ref] -= 1

        call.on_end.append(release)

    def serving_config(self, loaded: LoadedModel, key: str, default: Any) -> Any:
        """A per-model serving setting: explicit service setting > manifest ``serving`` > default."""
        return loaded.serving.setting(key, getattr(self.settings, key, None), default)


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

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run blocking work in the bounded executor; one job slot for its duration.

        A request takes one slot, once: everything heavy it does (decoding, the model, encoding the
        answer) belongs in that one job, so it is never refused after it was admitted.
        """
        jobs = self.ctx.jobs
        await jobs.acquire(account=self._account_queue)
        pending: list[asyncio.Future] = []
        try:
            self.cancel.check()
            return await self._in_executor(functools.partial(fn, *args, **kwargs), pending=pending)
        finally:
            self._release_after(pending)

    # ---- streams (services/streaming.py): the slot of the streaming job now running, if any
    _lease: SlotLease | None = None

    async def steps(self, make_generator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Step a domain generator in the executor, one job slot for the job while it computes.

        Between steps it checks the cancel token (client cancel, deadline, shutdown), so a
        cancelled call stops within one step; the generator is then closed and its memory released.
        In a streaming RPC the next step is computed only when the client has room for the next
        message: while it waits for its client the job holds no slot (``park``), and it takes one
        again, waiting in line but never refused, before its next step.
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
        ctx: ServiceContext = self.ctx
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
