"""Where the captioning service's ``DecodeLoop`` runs: a worker process (default) or a thread.

Setting ``caption_decode``: ``process`` or ``thread``. Both run ``models/captioning/stepping.py``'s
``DecodeLoop``, so the captions are the same bits; what differs is who waits for whom.

Why a process: the decoding steps are numpy and BLAS calls, each of which gives the GIL up and takes
it back. In the server process the other GIL user is the event loop, and under load it is busy most
of the time, so every step waits for the GIL again and again. Measured on the 2-core development box:
a decoder that makes 63 us of CPU per row-step alone made 69 us beside a Python thread busy half the
time (364 us beside one that never sleeps), and with 64 clients the decoding thread, not a core, was
the server's limit (bench/README.md has the served runs). In a process of its own the loop has its own GIL and decodes while the
event loop converts messages, as MLServer's parallel inference workers and Triton's Python backend
stub processes do. The price: the worker's memory (numpy and the captioners' weights; no torch), a
pickled request and report per admission and per step with something to say, and the model sent
over a pipe once (about 10 MB for the CS231n captioner; a few milliseconds of the event loop).

The process (``python -m pixelrpc.services.decode_worker``) starts at the first caption (or the
warm-up), with the server's environment (``OPENBLAS_NUM_THREADS``), in a session of its own. Its
reports come back to a reader on the event loop, with no thread in between. A worker that dies fails
the requests it had with ``WorkerLost`` (``UNAVAILABLE``, retry); the next request starts a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Protocol

from pixelrpc.models.captioning.stepping import EMPTY, STOP, DecodeLoop, Forget, Load, Report, Update
from pixelrpc.models.errors import WorkerLost

log = logging.getLogger("pixelrpc.captioning.worker")


class Listener(Protocol):
    """A batcher, as the engine sees it."""

    def on_report(self, report: Report) -> None: ...
    def on_lost(self, exc: BaseException) -> None: ...


def _serve(conn) -> None:
    """The worker process: a ``DecodeLoop`` over the pipe; returns when the server closes its end.

    It runs in a session of its own, so that a signal sent to the server's process group (Ctrl-C in a
    terminal, a supervisor's stop) reaches the server alone, which drains its calls while this
    process still decodes them; it ends when the server closes its end or exits.
    """

    def receive(block: bool):
        try:
            if not block and not conn.poll():
                return EMPTY
            return conn.recv()
        except (EOFError, OSError):
            return STOP

    try:
        DecodeLoop(receive, conn.send).run()
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass


class DecodeEngine:
    """One service's decoding loop, seen from the event loop: ``update`` sends requests, reports come
    back to the listener (the batcher) registered under their key."""

    kind = ""

    def __init__(self):
        self._keys = itertools.count()
        self.listeners: dict[int, tuple[Listener, Load]] = {}
        self._loaded: set[int] = set()  # keys the running loop has been sent
        self.closed = False

    def register(self, listener: Listener, model, dtype, max_length_limit: int) -> int:
        key = next(self._keys)
        self.listeners[key] = (listener, Load(key, model, dtype, max_length_limit))
        return key

    def update(self, message: Update) -> None:
        """Send admissions and drops (on the event loop). Raises ``WorkerLost`` if the loop is gone."""
        if self.closed:
            raise WorkerLost("the server is stopping; caption decoding has stopped")
        self._ensure_started()
        if message.key not in self._loaded:
            self._post(self.listeners[message.key][1])
            self._loaded.add(message.key)
        self._post(message)

    def forget(self, key: int) -> None:
        self.listeners.pop(key, None)
        if key in self._loaded:
            self._loaded.discard(key)
            self._post(Forget(key))

    def _dispatch(self, report: Report) -> None:
        """On the event loop: hand a report to its batcher."""
        entry = self.listeners.get(report.key)
        if entry is None:
            return
        try:
            entry[0].on_report(report)
        except Exception as exc:  # noqa: BLE001 - a bug here must fail its requests, not leave them waiting
            log.exception("handing over a decoding report failed; failing that captioner's requests")
            entry[0].on_lost(exc)

    def _lose_all(self, exc: BaseException) -> None:
        self._loaded.clear()
        for listener, _ in list(self.listeners.values()):
            listener.on_lost(exc)

    # to implement
    def _ensure_started(self) -> None: ...
    def _post(self, message) -> None: ...
    def close(self) -> None: ...


class ThreadEngine(DecodeEngine):
    """The loop in a thread of the server process (``caption_decode=thread``)."""

    kind = "thread"

    def __init__(self):
        super().__init__()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_started(self) -> None:
        self._loop = asyncio.get_running_loop()  # reports go to the loop of the latest update
        if self._thread is None:
            self._thread = threading.Thread(target=DecodeLoop(self._receive, self._send).run,
                                            name="pixelrpc-decode", daemon=True)
            self._thread.start()

    def _receive(self, block: bool):
        try:
            return self._inbox.get(block=block)
        except queue.Empty:
            return EMPTY

    def _send(self, report: Report) -> None:
        try:
            self._loop.call_soon_threadsafe(self._dispatch, report)
        except RuntimeError:  # the event loop is closed: nobody listens any more
            pass

    def _post(self, message) -> None:
        self._inbox.put(message)

    def close(self) -> None:
        self.closed = True
        self._inbox.put(STOP)


class ProcessEngine(DecodeEngine):
    """The loop in a worker process of its own (``caption_decode=process``): ``python -m
    pixelrpc.services.decode_worker FD``, a fresh interpreter (not a fork of the server, which runs
    grpc's threads; not multiprocessing's spawn, which would re-run the server's main script) in a
    session of its own, talking over a socket pair."""

    kind = "process"

    def __init__(self):
        super().__init__()
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._process is not None:
            if self._reader_loop is not loop:  # a new event loop (asyncio.run again): read on this one
                loop.add_reader(self._conn.fileno(), self._on_readable)
                self._reader_loop = loop
            return
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, start_new_session=True)
        self._conn = Connection(ours.detach())
        loop.add_reader(self._conn.fileno(), self._on_readable)
        self._reader_loop = loop
        log.info("caption decoding process started (pid %d)", self._process.pid)

    def _on_readable(self) -> None:
        conn = self._conn
        try:
            while conn is self._conn and conn.poll():
                self._dispatch(conn.recv())
        except (EOFError, OSError):
            self._lost()

    def _post(self, message) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError):
            raise self._lost() from None

    def _lost(self) -> WorkerLost:
        """The process exited: what was sent to it fails (``UNAVAILABLE``); the next update starts a
        new one. Returns the error."""
        pid = self.pid
        self._stop()
        exc = WorkerLost("the caption decoding process exited while decoding this caption; retry (the server "
                         "starts a new one)")
        if not self.closed:
            log.error("the caption decoding process (pid %s) exited; its requests fail UNAVAILABLE and the next "
                      "request starts a new process", pid)
            self._lose_all(exc)
        return exc

    def _stop(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        self._loaded.clear()
        if conn is not None:
            loop, self._reader_loop = self._reader_loop, None
            if loop is not None and not loop.is_closed():
                loop.remove_reader(conn.fileno())
            conn.close()
        if process is not None:
            if process.poll() is None:
                process.kill()
            try:
                process.wait(timeout=5)  # reaped (at once: killed, or gone already)
            except subprocess.TimeoutExpired:
                log.warning("the caption decoding process (pid %d) did not exit", process.pid)

    def close(self) -> None:
        self.closed = True
        self._stop()


ENGINES = {engine.kind: engine for engine in (ProcessEngine, ThreadEngine)}


if __name__ == "__main__":  # the worker process (ProcessEngine): python -m pixelrpc.services.decode_worker FD
    _serve(Connection(int(sys.argv[1])))
