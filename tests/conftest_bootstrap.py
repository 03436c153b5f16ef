"""A registry bootstrapped once per test session with ``--quick`` (the QUICK plan).

``tests/conftest.py`` turns ``build_quick_registry`` into the session fixture ``quick_bootstrap``; the
result is also cached here, so the quick bootstrap runs at most once per test process.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from conftest import torch_threads

from pixelrpc.models.bootstrap import QUICK, Bootstrap, BootstrapReport
from pixelrpc.models.registry import Registry


@dataclass(frozen=True)
class QuickBootstrap:
    registry: Registry
    report: BootstrapReport
    events: tuple  # every BootstrapEvent, in order


_lock = threading.Lock()
_cache: dict[str, QuickBootstrap] = {}
_folders: list[str] = []


def build_quick_registry() -> QuickBootstrap:
    """Bootstrap QUICK into a fresh temporary registry (once per process)."""
    import torch

    with _lock:
        if "quick" not in _cache:
            folder = tempfile.mkdtemp(prefix="pixelrpc-quick-registry-")
            _folders.append(folder)
            registry = Registry(Path(folder) / "registry")
            with torch_threads(min(2, torch.get_num_threads())):
                runner = Bootstrap(registry, QUICK)
                events = tuple(runner.run())
            _cache["quick"] = QuickBootstrap(registry, runner.report, events)
        return _cache["quick"]


@atexit.register
def _cleanup() -> None:
    for folder in _folders:
        shutil.rmtree(folder, ignore_errors=True)
