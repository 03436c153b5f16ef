"""The decoding loop of the captioning service: ``BatchDecoder`` steps driven by messages.

The service's batchers (``services/captioning_batcher.py``) talk to one ``DecodeLoop`` per service,
which runs in a worker process of its own or in a thread (``services/decode_worker.py``): the very
same loop either way, so a caption does not depend on where it was decoded. It never waits for the
server between two steps. Requests arrive as ``Update`` messages (admissions and drops) that it
reads, without blocking, before every step; after a step that has something to say (requests
admitted or refused, tokens, finished captions, expired deadlines) it sends a ``Report``. With
nothing to decode it blocks on the next message. Everything that crosses is picklable.

Iteration-level batching as in Orca (Yu et al., OSDI 2022): a request joins the running batch at the
next step and leaves it as soon as it finishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pixelrpc.models.captioning.decoding import BatchDecoder, DecodeOptions, TokenEvent
from pixelrpc.models.errors import PixelRPCError


@dataclass
class Load:
    """Decode for captioner ``key`` with this model (built into a ``BatchDecoder`` on first use)."""

    key: int
    model: object  # CaptioningRNN
    dtype: str | None
    max_length_limit: int


@dataclass
class Forget:
    key: int


@dataclass
class Update:
    """Requests that join captioner ``key`` (``seq`` numbers this admission) and handles that leave."""

    key: int
    seq: int
    admit: list[tuple[np.ndarray, DecodeOptions, bool, float | None]]  # features, options, want_tokens, deadline
    drop: list[int]


@dataclass
class Report:
    """What the loop did for captioner ``key`` since its last report."""

    key: int
    admitted: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, index in admit, handle)
    rejected: list[tuple[int, int, PixelRPCError]] = field(default_factory=list)  # (seq, index, why)
    expired: list[int] = field(default_factory=list)  # handles whose deadline passed (dropped)
    dropped: list[int] = field(default_factory=list)  # handles the server dropped: their steps are all reported
    batch: int = 0  # requests decoded in the last step
    events: list[TokenEvent] = field(default_factory=list)  # the last step's token events
    finished: dict = field(default_factory=dict)  # handle -> captions
    seconds: float = 0.0  # time of the steps since the last report
    steps: int = 0  # steps since the last report
    failed: BaseException | None = None  # decoding failed: every request of this captioner fails

    def worth_sending(self, idle: bool) -> bool:
        return bool(self.admitted or self.rejected or self.expired or self.dropped or self.events or self.finished
                    or self.failed is not None or (idle and self.steps))


STOP = "stop"  # message: the loop returns
EMPTY = object()  # what ``receive(block=False)`` returns when no message waits


class DecodeLoop:
    """Runs the decoding steps of every captioner it was given, as ``Update`` messages arrive.

    ``receive(block)`` returns the next message (``Load``, ``Forget``, ``Update`` or ``STOP``), or
    ``EMPTY`` when ``block`` is false and none waits; ``send(report)`` hands a ``Report`` over.
    """

    def __init__(self, receive: Callable[[bool], object], send: Callable[[Report], None]):
        self.receive, self.send = receive, send
        self.models: dict[int, Load] = {}
        self.decoders: dict[int, BatchDecoder] = {}
        self.deadlines: dict[int, dict[int, float]] = {}  # key -> handle -> time.monotonic() deadline
        self.reports: dict[int, Report] = {}

    def run(self) -> None:
        while True:
            busy = any(d.active for d in self.decoders.values())
            message = self.receive(not busy)
            while message is not EMPTY:
                if message == STOP:
                    return
                try:
                    self.apply(message)
                except Exception as exc:  # noqa: BLE001 - a bad message fails its captioner, not the loop
                    key = getattr(message, "key", None)
                    if key is None:
                        raise
                    self._fail(key, exc)
                message = self.receive(False)
            for key in list(self.decoders):
                self.step(key)

    def _report(self, key: int) -> Report:
        report = self.reports.get(key)
        if report is None:
            report = self.reports[key] = Report(key)
        return report

    def _flush(self, key: int, idle: bool) -> None:
        report = self.reports.get(key)
        if report is not None and report.worth_sending(idle):
            del self.reports[key]
            self.send(report)

    def _fail(self, key: int, exc: BaseException) -> None:
        """Decoding failed for this captioner: report it, and start from a fresh decoder next time."""
        report = self.reports.pop(key, None) or Report(key)
        report.failed = exc
        self.decoders.pop(key, None)
        self.deadlines.pop(key, None)
        self.send(report)

    def apply(self, message) -> None:
        if isinstance(message, Load):
            self.models[message.key] = message
            self.decoders.pop(message.key, None)
        elif isinstance(message, Forget):
            for table in (self.models, self.decoders, self.deadlines, self.reports):
                table.pop(message.key, None)
        elif isinstance(message, Update):
            self.update(message)
        else:
            raise TypeError(f"unknown message {type(message).__name__}")

    def update(self, message: Update) -> None:
        key = message.key
        self._flush(key, idle=True)  # steps so far are reported apart: newcomers took no part in them
        decoder = self.decoders.get(key)
        if decoder is None:
            spec = self.models[key]
            try:  # weights prepared, products probed (once per shape): long, but only once
                decoder = self.decoders[key] = BatchDecoder(spec.model, dtype=spec.dtype,
                                                            max_length_limit=spec.max_length_limit)
            except Exception as exc:  # noqa: BLE001 - e.g. FailedPrecondition: a model that cannot decode
                self._fail(key, exc)  # the requests of this update fail with the rest
                return
        deadlines = self.deadlines.setdefault(key, {})
        report = self._report(key)
        for handle in message.drop:
            decoder.cancel(handle)
            deadlines.pop(handle, None)
        report.dropped.extend(message.drop)
        for i, (features, options, want_tokens, deadline) in enumerate(message.admit):
            try:
                handle = decoder.add(features, options, events=want_tokens)
            except PixelRPCError as exc:
                report.rejected.append((message.seq, i, exc))
                continue
            report.admitted.append((message.seq, i, handle))
            if deadline is not None:
                deadlines[handle] = deadline
        if not decoder.active:
            self._flush(key, idle=True)

    def step(self, key: int) -> None:
        """One step of captioner ``key``'s requests (those whose deadline passed leave first)."""
        decoder, deadlines = self.decoders[key], self.deadlines.setdefault(key, {})
        report = self._report(key)
        if deadlines:
            now = time.monotonic()
            for handle, deadline in list(deadlines.items()):
                if now > deadline:
                    decoder.cancel(handle)
                    del deadlines[handle]
                    report.expired.append(handle)
        active = len(decoder.active)
        if active:
            start = time.perf_counter()
            report.batch = active
            try:
                report.events = decoder.step()
                report.finished = decoder.pop_finished()
            except Exception as exc:  # noqa: BLE001 - a decoding bug fails this captioner's batch
                self._fail(key, exc)
                return
            for handle in report.finished:
                deadlines.pop(handle, None)
            report.seconds += time.perf_counter() - start
            report.steps += 1
        self._flush(key, idle=not decoder.active)
