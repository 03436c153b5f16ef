"""Shared fixtures: temporary registries, a toy model architecture, paths to ../shared data."""

from __future__ import annotations

import os

# One BLAS thread per process: the numpy tests run beside server threads and subprocesses on a small
# machine, where oversubscribed BLAS threads made them several times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("PIXELRPC_DEVICE", "cpu")

from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared" / "data" / "cs231n").resolve()


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads, then restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    with torch_threads(1):
        yield


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data/cs231n, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data/cs231n absent ({path} not found): real-data test skipped")
    return path


class ToyModel:
    """y = x @ W: a registry model small enough for runtime tests."""

    def __init__(self, weights: np.ndarray):
        self.weights = weights


def load_toy(manifest, read, device):
    from pixelrpc.models.registry.serialization import numpy_from_bytes

    return ToyModel(numpy_from_bytes(read("weights.safetensors"))["W"])


@pytest.fixture(autouse=True, scope="session")
def _toy_loader():
    from pixelrpc.models.registry import register_loader

    register_loader("toy", load_toy)


def publish_toy(registry, name="toy", value=1.0, tasks=("captioning",), version=None):
    from pixelrpc.models.registry.serialization import numpy_to_bytes

    w = np.full((2, 2), value, dtype=np.float32)
    return registry.publish(name, {"weights.safetensors": numpy_to_bytes({"W": w})}, tasks=tasks,
                            framework="numpy", metadata={"architecture": "toy", "value": value},
                            version=version)


@pytest.fixture
def registry(tmp_path):
    from pixelrpc.models.registry import Registry

    return Registry(tmp_path / "registry")


@pytest.fixture(scope="session")
def quick_bootstrap():
    """A registry bootstrapped with ``--quick`` (QUICK plan) once per session: see ``conftest_bootstrap``."""
    from conftest_bootstrap import build_quick_registry

    return build_quick_registry()
