"""Slower caption decoding steps, in this process (``slow_steps_here``) or in every Python process
started with a PYTHONPATH (``slow_steps_pythonpath``): the caption decoding process included, which a
patch made in the test process would not reach (it is a fresh interpreter)."""

from __future__ import annotations

import os
import time
from pathlib import Path

SITECUSTOMIZE = """\
from pixelrpc.models.captioning import decoding
from slow_decoding import slow_step
decoding.BatchDecoder.step = slow_step(decoding.BatchDecoder.step, {seconds})
"""


def slow_step(real, seconds: float):
    """``BatchDecoder.step`` taking ``seconds`` more."""

    def slow(self):
        time.sleep(seconds)
        return real(self)

    return slow


def slow_steps_here(monkeypatch, seconds: float) -> None:
    from pixelrpc.models.captioning import decoding

    monkeypatch.setattr(decoding.BatchDecoder, "step", slow_step(decoding.BatchDecoder.step, seconds))


def slow_steps_pythonpath(folder: Path, seconds: float) -> str:
    """A PYTHONPATH (``folder`` first, then this one's) whose ``sitecustomize`` makes every decoding
    step ``seconds`` longer."""
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(seconds=seconds))
    here = str(Path(__file__).resolve().parent)
    return os.pathsep.join(p for p in (str(folder), here, os.environ.get("PYTHONPATH", "")) if p)
