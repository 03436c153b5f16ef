"""An in-process, bounded, least-recently-used cache of loaded models.

``get(name, 0)`` follows the registry's default version: at most every ``refresh_seconds`` it
re-reads which version is the default, loads a new one *outside* the lock and then swaps it in.
Requests already running keep the object they got, so a swap or a removal never breaks them.

Every load runs the version's golden examples (``golden.py``) before the version may serve. A new
default that fails them, or that cannot be loaded at all, is not swapped in: the last good default
keeps serving, and the failure is logged once and reported (``golden_status``, ``on_golden``). When
the registry folder goes away (``RegistryUnavailable``), the last resolved default of each name stays
in use, so loaded models keep answering until the folder is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pixelrpc.models.errors import Cancelled, DeadlineExceeded, PixelRPCError, RegistryUnavailable
from pixelrpc.models.registry.golden import GoldenFailed, GoldenReport, run_golden
from pixelrpc.models.registry.loaders import load_model
from pixelrpc.models.registry.serving import ServingConfig
from pixelrpc.models.registry.store import Manifest, Registry

log = logging.getLogger("pixelrpc.registry")


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    model: object
    load_seconds: float
    loaded_at: float
    golden: GoldenReport | None = None

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def serving(self) -> ServingConfig:
        """The manifest's ``serving`` section, parsed when the model was loaded."""
        return self.manifest.serving


class ModelCache:
    """Loaded models by ``(name, version)``.

    ``compute``: how the torch work of a load (deserialising, moving to the device, the golden run)
    is run, ``compute(fn) -> fn()``. A server passes its torch thread's runner, so that no other
    thread ever starts an OpenMP pool (two pools in one process spin against each other: a
    SqueezeNet forward took 1.7x as long once a second thread had run torch). Default: the caller.
    """

    def __init__(self, registry: Registry, *, max_models: int = 8, refresh_seconds: float = 2.0,
                 device: str = "cpu", device_is_explicit: bool = False, on_load=None, on_golden=None,
                 golden: bool = True, compute=None):
        self.registry = registry
        self.max_models = max(1, int(max_models))
        self.refresh_seconds = refresh_seconds
        self.device = device
        # An explicitly configured device wins; otherwise a manifest's ``serving.device`` may pick one.
        self.device_is_explicit = device_is_explicit
        self.on_load = on_load  # callback(manifest, seconds) for metrics
        self.on_golden = on_golden  # callback(manifest, GoldenReport) after every golden run
        self.golden = golden
        self.compute = compute or (lambda fn: fn())
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._defaults: dict[str, tuple[int, float]] = {}  # name -> (version, checked at)
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._good: dict[str, int] = {}  # name -> the default version last served
        # (name, version) -> GoldenReport of the last golden run (kept after eviction, for GetModel)
        self._golden: dict[tuple[str, int], GoldenReport] = {}
        # a new default that could not be loaded: (name, version) -> (time, message); retried later
        self._failed: dict[tuple[str, int], tuple[float, str]] = {}

    def default_version(self, name: str) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._defaults.get(name)
        if cached is not None and now - cached[1] < self.refresh_seconds:
            return cached[0]
        try:
            version = self.registry.default_version(name)
        except RegistryUnavailable:
            if cached is None:
                raise
            return cached[0]  # the registry is away: keep the last resolved default
        with self._lock:
            self._defaults[name] = (version, now)
        return version

    def get(self, name: str, version: int = 0) -> LoadedModel:
        """The loaded model ``name:version`` (0: default). Raises ModelNotFound / ModelCorrupt /
        GoldenFailed (FailedPrecondition) / RegistryUnavailable."""
        if version != 0:
            return self._get_exact(name, version)
        wanted = self.default_version(name)
        with self._lock:
            good = self._good.get(name)
            failed = self._failed.get((name, wanted))
            rejected = self._golden.get((name, wanted))
        if good is not None and good != wanted:
            if (rejected is not None and rejected.state == "failed") or (
                    failed is not None and time.monotonic() - failed[0] < max(self.refresh_seconds, 1.0)):
                return self._get_exact(name, good)  # known bad: the old default keeps serving
        try:
            loaded = self._get_exact(name, wanted)
        except (Cancelled, DeadlineExceeded, RegistryUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke the new version, the old one serves on
            if good is None or good == wanted:
                raise
            self._note_failed_swap(name, good, wanted, exc)
            try:
                return self._get_exact(name, good)
            except Exception:  # noqa: BLE001 - the old one is gone too: report the new one's failure
                raise exc from None
        with self._lock:
            self._good[name] = wanted
            self._failed.pop((name, wanted), None)
        return loaded

    def _note_failed_swap(self, name: str, good: int, wanted: int, exc: Exception) -> None:
        message = exc.message if isinstance(exc, PixelRPCError) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            before = self._failed.get((name, wanted))
            self._failed[(name, wanted)] = (time.monotonic(), message)
        if before is None or before[1] != message:
            log.warning("not swapping in %s:%d, %s:%d keeps serving: %s", name, wanted, name, good, message)

    def _get_exact(self, name: str, version: int) -> LoadedModel:
        key = (name, version)
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None:
                self._loaded.move_to_end(key)
                return hit
            rejected = self._golden.get(key)
            gate = self._loading.setdefault(key, threading.Lock())
        if rejected is not None and rejected.state == "failed":
            # Versions are immutable: a version that failed its golden examples fails them again.
            raise GoldenFailed(rejected)
        with gate:  # one loader per key; others wait for it
            with self._lock:
                hit = self._loaded.get(key)
                if hit is not None:
                    return hit
            try:
                loaded = self._load(name, version)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._loaded[key] = loaded
                self._loaded.move_to_end(key)
                while len(self._loaded) > self.max_models:
                    self._loaded.popitem(last=False)
            return loaded

    def peek(self, name: str, version: int = 0) -> LoadedModel | None:
        """``get(name, version)`` when it is a plain cache hit that needs no registry read (a pinned
        version already loaded, or the default resolved less than ``refresh_seconds`` ago and loaded);
        None otherwise. Never blocks on I/O, so an event loop may call it."""
        with self._lock:
            if version == 0:
                cached = self._defaults.get(name)
                if cached is None or time.monotonic() - cached[1] >= self.refresh_seconds:
                    return None
                version = cached[0]
                if self._good.get(name) != version:
                    return None
            hit = self._loaded.get((name, version))
            if hit is not None:
                self._loaded.move_to_end((name, version))
            return hit

    def is_loaded(self, name: str, version: int) -> bool:
        with self._lock:
            return (name, version) in self._loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def serving_default(self, name: str) -> int | None:
        """The default version of ``name`` this cache last served (None before the first)."""
        with self._lock:
            return self._good.get(name)

    def golden_status(self, name: str, version: int) -> GoldenReport | None:
        """The report of the last golden run of ``name:version`` in this process (None: never loaded)."""
        with self._lock:
            return self._golden.get((name, version))

    def evict(self, name: str, version: int | None = None) -> None:
        with self._lock:
            for key in [k for k in self._loaded if k[0] == name and (version is None or k[1] == version)]:
                del self._loaded[key]

    def device_for(self, manifest: Manifest) -> str:
        """This cache's device, unless it is not explicit and the manifest's ``serving.device`` picks one
        (parsing the ``serving`` section: ModelCorrupt for a value of the wrong type)."""
        wanted = manifest.serving.device
        if self.device_is_explicit or not wanted:
            return self.device
        if wanted == "cuda" and self.device != "cuda":
            return self.device  # the manifest asks for a GPU this process does not have
        return wanted

    def _load(self, name: str, version: int) -> LoadedModel:
        manifest = self.registry.resolve(name, version)
        return self.compute(lambda: self._deserialise(name, version, manifest))

    def _deserialise(self, name: str, version: int, manifest: Manifest) -> LoadedModel:
        start = time.perf_counter()
        model = load_model(self.registry, manifest, self.device_for(manifest))
        seconds = time.perf_counter() - start
        if self.on_load is not None:
            self.on_load(manifest, seconds)
        report = None
        if self.golden:
            report = run_golden(manifest, model, lambda f: self.registry.read_file(manifest, f))
            with self._lock:
                self._golden[(name, version)] = report
            if self.on_golden is not None:
                self.on_golden(manifest, report)
            if not report.passed:
                raise GoldenFailed(report)  # the caller logs it (a hot swap) or answers it (a request)
        return LoadedModel(manifest, model, seconds, time.time(), report)
