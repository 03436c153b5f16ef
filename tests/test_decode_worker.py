"""Where captions are decoded (``caption_decode``): the decoding loop in a worker process or a thread.

Both engines run ``DecodeLoop`` (models/captioning/stepping.py). Checked here: the same bits as
in-process decoding for every strategy, alone and batched; deadlines and cancellation stop the work
inside the loop; a decoder that fails fails its batch and recovers; a worker process that dies fails
its requests with ``WorkerLost`` (UNAVAILABLE) and the next request gets a new process.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import time

import numpy as np
import pytest
from registry_helpers import tiny_captioner
from slow_decoding import slow_steps_here, slow_steps_pythonpath

from pixelrpc.models.captioning import stepping
from pixelrpc.models.captioning.decoding import DecodeOptions, decode
from pixelrpc.models.errors import Cancelled, CancelToken, DeadlineExceeded, InvalidInput, WorkerLost
from pixelrpc.services.captioning_batcher import BatchPolicy, ModelBatcher
from pixelrpc.services.decode_worker import ENGINES, ProcessEngine, ThreadEngine

OPTIONS = [DecodeOptions(strategy="greedy", max_length=12),
           DecodeOptions(strategy="beam", beam_width=3, max_length=10),
           DecodeOptions(strategy="sample", seed=7, temperature=0.8, num_captions=2, max_length=10)]


def endless_captioner():
    """Never ends a caption by itself: a request decodes max_length steps."""
    model = tiny_captioner(seed=3)
    model.params["b_vocab"][model.end_idx] = -1e3
    return model


def features(n: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(dim).astype(np.float32) for _ in range(n)]


def batcher_with(engine, model, size: int = 16) -> ModelBatcher:
    return ModelBatcher(model, policy=BatchPolicy(max_batch_size=size, max_delay_s=0.0), engine=engine)


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    made = ENGINES[request.param]()
    yield made
    made.close()


def test_every_strategy_alone_and_batched_gives_the_in_process_bits(engine):
    model = tiny_captioner()
    xs = features(12, model.input_dim)
    jobs = [(x, OPTIONS[i % len(OPTIONS)]) for i, x in enumerate(xs)]
    batcher = batcher_with(engine, model)

    async def main():
        alone = [await batcher.decode(x, o, CancelToken()) for x, o in jobs[:3]]
        together = await asyncio.gather(*(batcher.decode(x, o, CancelToken()) for x, o in jobs))
        return alone, together

    alone, together = asyncio.run(main())
    assert batcher.stats.max_batch > 1  # they did share steps
    for finished, (x, o) in zip([*alone, *together], [*jobs[:3], *jobs], strict=True):
        want = decode(model, x, o)
        assert [c.tokens for c in finished.captions] == [c.tokens for c in want]
        assert [c.logprobs for c in finished.captions] == [c.logprobs for c in want]  # bitwise
        assert finished.compute_ms > 0


def test_a_bad_request_fails_alone(engine):
    model = tiny_captioner()
    batcher = batcher_with(engine, model)
    good = features(2, model.input_dim)

    async def main():
        return await asyncio.gather(batcher.decode(good[0], OPTIONS[0], CancelToken()),
                                    batcher.decode(good[1], DecodeOptions(max_length=10_000), CancelToken()),
                                    return_exceptions=True)

    ok, bad = asyncio.run(main())
    assert ok.captions[0].tokens == decode(model, good[0], OPTIONS[0])[0].tokens
    assert isinstance(bad, InvalidInput) and "max_length" in str(bad)
    assert bad.violations and bad.violations[0].field  # crossed the process boundary whole


@pytest.fixture
def slow_engine(request, tmp_path, monkeypatch):
    """An engine whose steps take 20 ms more: patched here for a thread, through the worker
    interpreter's ``sitecustomize`` for a process."""
    kind = request.param
    if kind == "process":
        monkeypatch.setenv("PYTHONPATH", slow_steps_pythonpath(tmp_path, 0.02))
    else:
        slow_steps_here(monkeypatch, 0.02)
    made = ENGINES[kind]()
    yield made
    made.close()


@pytest.mark.parametrize("slow_engine", sorted(ENGINES), indirect=True)
def test_a_deadline_stops_the_caption_in_the_loop(slow_engine):
    """100 steps would take 2 s; the deadline passes after 0.3 s and the loop drops the request."""
    model = endless_captioner()
    batcher = batcher_with(slow_engine, model)
    token = CancelToken(deadline=time.monotonic() + 0.3)

    async def main():
        await batcher.decode(features(1, model.input_dim)[0], DecodeOptions(max_length=3), CancelToken())  # warm
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await batcher.decode(features(1, model.input_dim)[0], DecodeOptions(max_length=100), token)
        return time.monotonic() - start

    assert asyncio.run(main()) < 1.2


@pytest.mark.parametrize("slow_engine", sorted(ENGINES), indirect=True)
def test_a_cancelled_caller_stops_the_steps(slow_engine):
    model = endless_captioner()
    batcher = batcher_with(slow_engine, model)

    async def main():
        task = asyncio.create_task(batcher.decode(features(1, model.input_dim)[0], DecodeOptions(max_length=100),
                                                  CancelToken()))
        deadline = time.monotonic() + 10
        while not batcher.active and time.monotonic() < deadline:  # admitted: the loop is stepping it
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while batcher.active or batcher.sent or batcher.leaving:  # the loop confirmed the drop
            await asyncio.sleep(0.01)
        steps = batcher.stats.steps
        await asyncio.sleep(0.3)
        return steps, batcher.stats.steps

    before, after = asyncio.run(main())
    assert before == after < 60  # nothing runs any more, long before 100 steps


@pytest.mark.parametrize("slow_engine", ["process"], indirect=True)
def test_a_dead_worker_fails_its_requests_unavailable_and_the_next_gets_a_new_one(slow_engine):
    model = endless_captioner()
    batcher = batcher_with(slow_engine, model)
    x = features(1, model.input_dim)[0]

    async def main():
        task = asyncio.create_task(batcher.decode(x, DecodeOptions(max_length=100), CancelToken()))
        deadline = time.monotonic() + 10
        while not batcher.active and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        first = slow_engine.pid
        os.kill(first, signal.SIGKILL)
        with pytest.raises(WorkerLost, match="retry"):
            await task
        again = await batcher.decode(x, DecodeOptions(max_length=4), CancelToken())
        return first, again

    first, again = asyncio.run(main())
    assert slow_engine.pid not in (None, first)
    assert again.captions[0].tokens == decode(model, x, DecodeOptions(max_length=4))[0].tokens
    assert not batcher.active and not batcher.sent


def test_closed_engine_refuses_and_nothing_hangs():
    engine = ProcessEngine()
    model = tiny_captioner()
    batcher = batcher_with(engine, model)
    x = features(1, model.input_dim)[0]

    async def main():
        first = await batcher.decode(x, OPTIONS[0], CancelToken())
        engine.close()
        with pytest.raises(WorkerLost, match="stopping"):
            await batcher.decode(x, OPTIONS[0], CancelToken())
        return first

    assert asyncio.run(main()).captions
    assert not batcher.active and not batcher.pending and not batcher.sent


# ------------------------------------------------------------------ the loop itself, in this thread
def run_loop(messages: list) -> list[stepping.Report]:
    """Run a DecodeLoop on ``messages``, in this thread, until it has nothing left to decode."""
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    for m in messages:
        inbox.put(m)
    reports: list[stepping.Report] = []

    def receive(block: bool):
        try:
            return inbox.get(block=False)
        except queue.Empty:
            return stepping.STOP if block else stepping.EMPTY  # idle: done

    stepping.DecodeLoop(receive, reports.append).run()
    return reports


def test_the_loop_reports_admissions_tokens_and_the_caption():
    model = tiny_captioner()
    xs = features(2, model.input_dim)
    admit = [(xs[0], OPTIONS[0], True, None), (xs[1], DecodeOptions(max_length=0), False, None)]
    reports = run_loop([stepping.Load(0, model, None, 100), stepping.Update(0, 0, admit, [])])
    assert reports[0].admitted == [(0, 0, 0)]
    assert [(seq, i) for seq, i, _ in reports[0].rejected] == [(0, 1)]
    want = decode(model, xs[0], OPTIONS[0])[0]
    assert [e.token for r in reports for e in r.events] == want.tokens  # one report per token
    assert reports[-1].finished[0][0].tokens == want.tokens
    assert sum(r.steps for r in reports) == len(want.tokens) and all(r.batch == 1 for r in reports)


def test_a_failing_decoder_fails_its_batch_and_the_next_update_starts_afresh(monkeypatch):
    from pixelrpc.models.captioning import decoding

    model = tiny_captioner()
    x = features(1, model.input_dim)[0]
    real = decoding.BatchDecoder.step
    calls = {"n": 0}

    def broken_once(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return real(self)

    monkeypatch.setattr(decoding.BatchDecoder, "step", broken_once)
    engine = ThreadEngine()
    batcher = batcher_with(engine, model)

    async def main():
        with pytest.raises(RuntimeError, match="a bug"):
            await batcher.decode(x, OPTIONS[0], CancelToken())
        return await batcher.decode(x, OPTIONS[0], CancelToken())

    try:
        finished = asyncio.run(main())
    finally:
        engine.close()
    assert finished.captions[0].tokens == decode(model, x, OPTIONS[0])[0].tokens


def test_a_model_that_cannot_decode_is_refused_with_its_reason(engine):
    model = tiny_captioner()
    model._end = None  # no <END>: BatchDecoder refuses it (FailedPrecondition)
    batcher = batcher_with(engine, model)

    async def main():
        return await asyncio.gather(batcher.decode(features(1, model.input_dim)[0], OPTIONS[0], CancelToken()),
                                    return_exceptions=True)

    (error,) = asyncio.run(main())
    assert type(error).__name__ == "FailedPrecondition" and "END" in str(error)
    assert not isinstance(error, Cancelled)


def test_preload_starts_the_decoding_process_before_the_service_is_ready(registry):
    from registry_helpers import publish_captioner

    from pixelrpc.services.captioning import ENGINE_KEY
    from pixelrpc.services.settings import Settings
    from pixelrpc.services.testing import running_server

    publish_captioner(registry, "tiny-captioner")
    settings = Settings(shutdown_delay=0.0, torch_threads=1, device="cpu", preload="tiny-captioner")
    with running_server(["captioning"], settings, registry=registry) as srv:
        engine = srv.ctx.state[ENGINE_KEY]
        assert engine.kind == "process" and engine.pid is not None
        assert os.path.exists(f"/proc/{engine.pid}")  # started and given the model during warm-up
    assert engine.pid is None  # stopped with the server


def test_an_update_for_a_captioner_never_loaded_fails_it_and_the_loop_goes_on():
    model = tiny_captioner()
    x = features(1, model.input_dim)[0]
    reports = run_loop([stepping.Update(7, 0, [(x, OPTIONS[0], False, None)], []),
                        stepping.Load(0, model, None, 100), stepping.Update(0, 1, [(x, OPTIONS[0], False, None)], [])])
    assert reports[0].key == 7 and isinstance(reports[0].failed, KeyError)
    assert reports[-1].key == 0 and reports[-1].finished[0][0].tokens == decode(model, x, OPTIONS[0])[0].tokens


def test_a_drop_is_confirmed_after_every_step_the_row_took_part_in():
    model = endless_captioner()
    x = features(1, model.input_dim)[0]
    script = [stepping.Load(0, model, None, 100), stepping.Update(0, 0, [(x, OPTIONS[0], False, None)], []),
              stepping.EMPTY, stepping.EMPTY, stepping.EMPTY, stepping.Update(0, 1, [], [0])]  # 3 steps, then drop

    def receive(block: bool):
        return script.pop(0) if script else stepping.STOP if block else stepping.EMPTY

    reports: list[stepping.Report] = []
    stepping.DecodeLoop(receive, reports.append).run()
    confirm = next(n for n, r in enumerate(reports) if r.dropped == [0])
    assert sum(r.steps for r in reports[:confirm]) == 3  # every step it took part in, reported first
    assert not any(r.steps for r in reports[confirm:])
