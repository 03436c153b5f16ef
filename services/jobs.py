"""Where a service's work runs and what it may hold at once: the bounded job runner with its torch
thread, and the server-wide budget of decoded pixels under which images are admitted.

``Call.run`` and ``Call.steps`` (``services/runtime.py``) take a ``JobRunner`` slot per job;
``Call.admit_images`` reserves decoded pixels in the ``PixelBudget`` before a call queues.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from pixelrpc.models.errors import LimitExceeded, Overloaded
from pixelrpc.models.imaging import WorkingPlan, decode_working
from pixelrpc.v1 import common_pb2

T = TypeVar("T")
# After decoding an image of this many decoded pixels (16 MB), free heap pages go back to the OS.
TRIM_AFTER_PIXELS = 4_000_000


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
        self.on_shutdown: list[Callable[[], None]] = []  # e.g. stopping the caption decoding process

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
        for stop in self.on_shutdown:
            stop()

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
