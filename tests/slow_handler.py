"""A test-only slow RPC, registered as a generic handler (no proto): ``/test.Slow/Sleep``.

The request is the ASCII number of steps; each step sleeps 50 ms inside the bounded executor and
streams one message. It exercises drain, cancellation and queue depth like a real long job.
"""

from __future__ import annotations

import time

import grpc

from pixelrpc.services.runtime import Call, rpc

METHOD = "/test.Slow/Sleep"
UNARY_METHOD = "/test.Slow/SleepUnary"
STEP_SECONDS = 0.05


class SlowServicer:
    def __init__(self, ctx):
        self.ctx = ctx
        self.steps_run = 0
        self.finished = 0

    def _job(self, steps: int):
        for i in range(steps):
            time.sleep(STEP_SECONDS)
            self.steps_run += 1
            yield i
        self.finished += 1

    @rpc
    async def Sleep(self, request: bytes, call: Call):
        async for i in call.steps(lambda: self._job(int(request.decode()))):
            yield f"step {i}".encode()

    @rpc
    async def SleepUnary(self, request: bytes, call: Call):
        last = None
        async for i in call.steps(lambda: self._job(int(request.decode()))):
            last = i
        return f"done {last}".encode()


def install(server) -> SlowServicer:
    """Add the slow handler to a PixelServer before it starts; returns the servicer."""
    servicer = SlowServicer(next(iter(server.contexts.values())))
    handler = grpc.method_handlers_generic_handler("test.Slow", {
        "Sleep": grpc.unary_stream_rpc_method_handler(servicer.Sleep),
        "SleepUnary": grpc.unary_unary_rpc_method_handler(servicer.SleepUnary),
    })
    server.grpc_server.add_generic_rpc_handlers((handler,))
    server.slow = servicer
    return servicer
