"""Flow control of streaming RPCs: a bounded send window, no job slot while a stream waits for its
client, the stall limit, and a lane that runs a stream's many small jobs on one job slot.

What gRPC offers (measured with grpc.aio 1.85): ``await context.write(message)``, like a handler
generator's ``yield``, completes once HTTP/2 flow control has accepted the message, i.e. while the
client's receive window has room. A client that never reads stops the writes after about 4 MiB (its
BDP-tuned window; 64 KiB without BDP probing, less with a smaller ``grpc.http2.lookahead_bytes``).
The server cannot see what the client application read; "room at the client" means that window.

``send_stream`` therefore splits a streaming RPC into a producer and a sender:

- the producer advances the servicer's generator (and so the domain job) only while fewer than
  ``stream_send_window`` of its messages wait for gRPC to accept them;
- when that window is full the client is not keeping up: the job gives its job slot back
  (``Call.park``) and takes one again, waiting in line but never refused, when the client has read
  (``SlotLease.resume``), so stalled clients cannot hold the slots that other calls need;
- the sender writes the messages in order; a write that gRPC has not accepted after
  ``stream_stall_seconds`` ends the stream with ABORTED (``StreamStalled``): the generator is closed
  and the job's memory freed. The client sees the status after the messages already buffered for it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from pixelrpc.models.errors import CancelToken, StreamStalled

if TYPE_CHECKING:
    from pixelrpc.services.runtime import Call

_END = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def stall_error(seconds: float) -> StreamStalled:
    return StreamStalled(f"stream stalled: the client read nothing for {seconds:g} s "
                         "(PIXELRPC_STREAM_STALL_SECONDS); the stream was ended and its job stopped")


async def send_stream(call: Call, messages: AsyncIterator, context) -> None:
    """Send ``messages`` (the servicer's generator) to the client under flow control (module doc)."""
    settings = call.ctx.settings
    credits = asyncio.Semaphore(max(1, int(settings.stream_send_window)))
    ready: asyncio.Queue = asyncio.Queue()  # holds at most stream_send_window messages: one credit each
    producer = asyncio.get_running_loop().create_task(_produce(call, messages, credits, ready))
    stall = float(settings.stream_stall_seconds)
    headers_sent = False
    try:
        while True:
            item = await ready.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            if not headers_sent:
                # Headers on their own (they are not flow controlled): were they to wait in the first
                # write, a stall status could not be sent (grpc refuses a second initial metadata op).
                # Not before the first message, so that an early error stays a trailers-only answer.
                await context.send_initial_metadata(())
                headers_sent = True
            try:
                async with asyncio.timeout(stall if stall > 0 else None):
                    await context.write(item)
            except TimeoutError:
                raise stall_error(stall) from None
            credits.release()
    finally:
        if not producer.done():
            producer.cancel()
        await asyncio.wait({producer})  # the generator is closed (slot released) before the call ends


async def _produce(call: Call, messages: AsyncIterator, credits: asyncio.Semaphore, ready: asyncio.Queue) -> None:
    try:
        while True:
            if credits.locked():
                call.park()  # the client is a whole window behind: wait for it without a job slot
            await credits.acquire()
            ready.put_nowait(await messages.__anext__())
    except StopAsyncIteration:
        ready.put_nowait(_END)
    except BaseException as exc:  # the sender answers it with a status
        ready.put_nowait(_Raised(exc))
        if isinstance(exc, asyncio.CancelledError):
            raise
    finally:
        await messages.aclose()  # a job waiting at a yield: GeneratorExit closes it, its slot is freed


class SlotLease:
    """The job slot of one streaming job (``Call.steps``).

    Taken once through admission (``JobRunner.acquire``: the queue may refuse it), given back while
    the stream waits for its client (``park``), taken again before the next step without refusal
    (``JobRunner.reacquire``: the job was admitted; refusing it now would fail it half done).
    """

    def __init__(self, call: Call):
        self.call = call
        self.jobs = call.ctx.jobs
        self.held = False
        self.parked = False

    async def acquire(self) -> None:
        await self.jobs.acquire(account=self.call._account_queue)  # the wait is accounted however it ends
        self.held = True

    def park(self) -> None:
        """Give the slot back; only called while the job waits at a yield (no step is running)."""
        if self.held:
            self.held, self.parked = False, True
            self.jobs.parked += 1
            self.jobs.release()

    async def resume(self) -> None:
        if not self.parked:
            return
        self.parked = False
        self.jobs.parked -= 1
        waited = await self.jobs.reacquire()
        self.held = True
        self.call._account_queue(waited)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.jobs.release()
        if self.parked:
            self.parked = False
            self.jobs.parked -= 1


class Lane:
    """Runs the blocking jobs of one stream (CaptionStream's image items) one at a time on one job slot.

    The items of an admitted stream do not each compete for the server-wide queue (where they would be
    refused one by one once it is full): the lane takes a slot waiting in line, never refused, keeps it
    while it has work, and hands it back when it runs dry or when others wait for a slot, so a long
    stream shares the executor with other calls.
    """

    def __init__(self, call: Call):
        self.call = call
        self.jobs = call.ctx.jobs
        self._work: deque[tuple[Callable[[], Any], asyncio.Future, CancelToken]] = deque()
        self._task: asyncio.Task | None = None
        self._held = False

    async def run(self, fn: Callable[..., Any], *args, cancel: CancelToken | None = None) -> Any:
        """Run ``fn(*args)`` in the executor, in the lane's order; its exception is raised here.
        ``cancel``: the token checked before it starts (its request's; default: the stream's)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._work.append((functools.partial(fn, *args), future, cancel or self.call.cancel))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="stream-lane")
        return await future

    def close(self) -> None:
        """The stream ended: drop the waiting work; the running item's slot is freed when it returns."""
        for _, future, _ in self._work:
            future.cancel()
        self._work.clear()
        if self._task is not None:
            self._task.cancel()

    async def _drain(self) -> None:
        pending: list[asyncio.Future] = []
        try:
            while self._work:
                fn, future, cancel = self._work.popleft()
                if future.done():  # its caller went away
                    continue
                if not self._held:
                    waited = await self.jobs.reacquire()
                    self._held = True
                    self.call._account_queue(waited)
                try:
                    cancel.check()
                    result = await self.call._in_executor(fn, pending=pending)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the item's error, raised to its caller
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(result)
                pending.clear()
                if not self._work or self.jobs.contended:
                    self._give_back()
        finally:
            if pending and not pending[-1].done():  # cancelled mid-item: free the slot when it returns
                pending[-1].add_done_callback(lambda f: (f.cancelled() or f.exception(), self._give_back()))
            else:
                self._give_back()

    def _give_back(self) -> None:
        if self._held:
            self._held = False
            self.jobs.release()
