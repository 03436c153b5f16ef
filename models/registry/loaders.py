"""Which function turns a manifest into an in-memory model.

A manifest's ``metadata["architecture"]`` picks the loader. Each entry is ``"module:function"``,
imported on first use so that loading a captioner never imports torch and vice versa.
A loader is called as ``fn(manifest, read, device)`` where ``read(filename) -> bytes`` returns a
file whose sha256 has already been verified.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pixelrpc.models.errors import ModelCorrupt
from pixelrpc.models.registry.manifest import Manifest

Reader = Callable[[str], bytes]
Loader = Callable[[Manifest, Reader, str], object]

LOADERS: dict[str, str] = {
    # architecture name -> "module:function"; each model family adds its own line.
    "captioning-rnn": "pixelrpc.models.captioning.captioning_rnn:load_from_registry",
    "squeezenet1_1": "pixelrpc.models.zoo:load_squeezenet",
    "squeezenet1_1-features": "pixelrpc.models.zoo:load_squeezenet",
}


def register_loader(architecture: str, target: str | Loader) -> None:
    """Add a loader (``"module:function"`` or a callable); tests use this for toy models."""
    LOADERS[architecture] = target  # type: ignore[assignment]


def loader_for(manifest: Manifest) -> Loader:
    arch = manifest.architecture
    target = LOADERS.get(arch)
    if target is None:
        raise ModelCorrupt(
            f"model {manifest.ref} has architecture {arch!r}, which this server cannot load "
            f"(known: {', '.join(sorted(LOADERS))})"
        )
    if callable(target):
        return target
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def load_model(registry, manifest: Manifest, device: str) -> object:
    """Read every file of ``manifest`` from ``registry`` and check its sha256, then deserialise it.

    Any mismatch refuses the whole model (``ModelCorrupt``) before anything is deserialised.
    """
    blobs = {entry.name: registry.read_file(manifest, entry.name) for entry in manifest.files}

    def read(filename: str) -> bytes:
        if filename not in blobs:
            manifest.file(filename)  # raises ModelCorrupt naming the file
        return blobs[filename]

    return loader_for(manifest)(manifest, read, device)
