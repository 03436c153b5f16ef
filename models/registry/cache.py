"""An in-process, bounded, least-recently-used cache of loaded models.

``get(name, 0)`` follows the registry's default version: at most every ``refresh_seconds`` it
re-reads which version is the default, loads a new one *outside* the lock and then swaps it in.
Requests already running keep the object they got, so a swap or a removal never breaks them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pixelrpc.models.registry.loaders import load_model
from pixelrpc.models.registry.store import Manifest, Registry


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    model: object
    load_seconds: float
    loaded_at: float

    @property
    def sha256(self) -> str:
        return self.manifest.sha256


class ModelCache:
    def __init__(self, registry: Registry, *, max_models: int = 8, refresh_seconds: float = 2.0,
                 device: str = "cpu", device_is_explicit: bool = False, on_load=None):
        self.registry = registry
        self.max_models = max(1, int(max_models))
        self.refresh_seconds = refresh_seconds
        self.device = device
        # An explicitly configured device wins; otherwise a manifest's ``serving.device`` may pick one.
        self.device_is_explicit = device_is_explicit
        self.on_load = on_load  # callback(manifest, seconds) for metrics
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._defaults: dict[str, tuple[int, float]] = {}  # name -> (version, checked at)
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def default_version(self, name: str) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._defaults.get(name)
        if cached is not None and now - cached[1] < self.refresh_seconds:
            return cached[0]
        version = self.registry.default_version(name)
        with self._lock:
            self._defaults[name] = (version, now)
        return version

    def get(self, name: str, version: int = 0) -> LoadedModel:
        """The loaded model ``name:version`` (0: default). Raises ModelNotFound / ModelCorrupt."""
        if version == 0:
            version = self.default_version(name)
        key = (name, version)
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None:
                self._loaded.move_to_end(key)
                return hit
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one loader per key; others wait for it
            with self._lock:
                hit = self._loaded.get(key)
                if hit is not None:
                    return hit
            loaded = self._load(name, version)
            with self._lock:
                self._loaded[key] = loaded
                self._loaded.move_to_end(key)
                while len(self._loaded) > self.max_models:
                    self._loaded.popitem(last=False)
                self._loading.pop(key, None)
            return loaded

    def is_loaded(self, name: str, version: int) -> bool:
        with self._lock:
            return (name, version) in self._loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def evict(self, name: str, version: int | None = None) -> None:
        with self._lock:
            for key in [k for k in self._loaded if k[0] == name and (version is None or k[1] == version)]:
                del self._loaded[key]

    def device_for(self, manifest: Manifest) -> str:
        serving = manifest.metadata.get("serving") or {}
        wanted = serving.get("device")
        if self.device_is_explicit or not wanted:
            return self.device
        if wanted == "cuda" and self.device != "cuda":
            return self.device  # the manifest asks for a GPU this process does not have
        return str(wanted)

    def _load(self, name: str, version: int) -> LoadedModel:
        manifest = self.registry.resolve(name, version)
        start = time.perf_counter()
        model = load_model(self.registry, manifest, self.device_for(manifest))
        seconds = time.perf_counter() - start
        if self.on_load is not None:
            self.on_load(manifest, seconds)
        return LoadedModel(manifest, model, seconds, time.time())
