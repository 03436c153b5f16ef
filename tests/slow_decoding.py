"""Slower caption decoding steps in every Python process started with a PYTHONPATH: the caption
decoding process included (a patch made in the test process would not reach a fresh interpreter)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

SITECUSTOMIZE = textwrap.dedent("""
    import time
    from pixelrpc.models.captioning import decoding
    real = decoding.BatchDecoder.step
    def slow(self):
        time.sleep({seconds})
        return real(self)
    decoding.BatchDecoder.step = slow
""")


def slow_steps_pythonpath(folder: Path, seconds: float) -> str:
    """A PYTHONPATH (``folder`` first) whose ``sitecustomize`` makes every decoding step ``seconds`` longer."""
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(seconds=seconds))
    return os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
