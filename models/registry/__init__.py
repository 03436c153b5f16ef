"""The model registry: versioned, verified, atomically published models on disk."""

from pixelrpc.models.registry.cache import LoadedModel, ModelCache
from pixelrpc.models.registry.loaders import LOADERS, load_model, loader_for, register_loader
from pixelrpc.models.registry.store import (
    FileEntry,
    Manifest,
    Registry,
    default_root,
    parse_ref,
    sha256_bytes,
    validate_name,
)

__all__ = [
    "LOADERS",
    "FileEntry",
    "LoadedModel",
    "Manifest",
    "ModelCache",
    "Registry",
    "default_root",
    "load_model",
    "loader_for",
    "parse_ref",
    "register_loader",
    "sha256_bytes",
    "validate_name",
]
