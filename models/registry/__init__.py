"""The model registry: versioned, verified, atomically published models on disk."""

from pixelrpc.models.registry.cache import LoadedModel, ModelCache
from pixelrpc.models.registry.golden import (
    GOLDEN_FILE,
    GoldenFailed,
    GoldenReport,
    golden_files,
    register_golden_runner,
    run_golden,
)
from pixelrpc.models.registry.loaders import LOADERS, load_model, loader_for, register_loader
from pixelrpc.models.registry.serving import ServingConfig
from pixelrpc.models.registry.store import (
    BrokenEntry,
    FileEntry,
    Manifest,
    Registry,
    RegistryStatus,
    default_root,
    parse_ref,
    sha256_bytes,
    validate_name,
)

__all__ = [
    "GOLDEN_FILE",
    "LOADERS",
    "BrokenEntry",
    "FileEntry",
    "GoldenFailed",
    "GoldenReport",
    "LoadedModel",
    "Manifest",
    "ModelCache",
    "Registry",
    "RegistryStatus",
    "ServingConfig",
    "default_root",
    "load_model",
    "loader_for",
    "parse_ref",
    "golden_files",
    "register_golden_runner",
    "register_loader",
    "run_golden",
    "sha256_bytes",
    "validate_name",
]
