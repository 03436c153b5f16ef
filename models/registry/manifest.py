"""Manifests: model names and references, file entries, and the sealed ``manifest.json``.

A manifest is sealed: it carries ``digest``, the sha256 of the canonical JSON of every other field,
and its bytes must be exactly the canonical form of what they parse to, so a one-bit change inside a
value is ``ModelCorrupt`` (DATA_LOSS) rather than silently used. Manifests written before sealing
(schema 1) are refused with FAILED_PRECONDITION naming ``pixelrpc models seal``. Sealing guards
against damage and mistakes, not an attacker who can write the registry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pixelrpc.common.refs import split_ref
from pixelrpc.models.errors import FailedPrecondition, InvalidInput, ModelCorrupt, clip
from pixelrpc.models.registry.serving import ServingConfig

# Always used with ``fullmatch``: ``$`` in ``re.match`` also matches before a trailing newline, which
# would let ``"evil\n"`` through.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
FILE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,8}")  # a version folder: no sign, no leading zero, ASCII
MAX_VERSION = 999_999_999
MANIFEST = "manifest.json"
DEFAULT_FILE = "DEFAULT"
MANIFEST_SCHEMA = 2  # 2: sealed (``digest``); 1: written before manifests were sealed
DIGEST_KEY = "digest"
_MANIFEST_KEYS = {"schema", "name", "version", "tasks", "framework", "files", "metadata", "created"}
def shown(text: str, limit: int = 80) -> str:
    """``repr`` of a name from outside, shortened: control characters come out escaped."""
    return repr(clip(text, limit))


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(
            f"invalid model name {shown(name)}: names match [a-z0-9][a-z0-9._-]{{0,63}} "
            "(lower-case letters, digits, '.', '_', '-'; no slashes, spaces or control characters)",
            field="model.name",
        )
    return name


def parse_ref(ref: str) -> tuple[str, int]:
    """``"name"`` -> (name, 0); ``"name:3"`` -> (name, 3). Version 0 means the default version.

    ``pixelrpc.common.refs.split_ref`` (the one parser, which clients use too) with the registry's name
    rules; InvalidInput for a bad name or version."""
    return split_ref(ref, check_name=validate_name, shown=shown,
                     error=lambda message: InvalidInput(message, field="model"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(body: Mapping) -> str:
    """``sha256:<hex>`` of the canonical JSON of a manifest without its ``digest``."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + sha256_bytes(canonical.encode())


def manifest_bytes(data: Mapping) -> bytes:
    """The one byte form of a sealed manifest: a file that differs from it was changed."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()


@dataclass(frozen=True)
class FileEntry:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What the registry knows of one model version (``manifest.json``)."""

    name: str
    version: int
    tasks: tuple[str, ...]
    framework: str
    files: tuple[FileEntry, ...]
    metadata: dict = field(default_factory=dict, hash=False, compare=False)
    created: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @functools.cached_property
    def sha256(self) -> str:
        """Content identity of the model: files, tasks, framework and metadata, not name or time.
        Computed once (manifests are sealed: nothing changes them after loading)."""
        body = {
            "tasks": list(self.tasks),
            "framework": self.framework,
            "files": [[f.name, f.sha256, f.size] for f in sorted(self.files, key=lambda e: e.name)],
            "metadata": self.metadata,
        }
        return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())

    @functools.cached_property
    def serving(self) -> ServingConfig:
        """The ``serving`` section, parsed once (``serving.py``); ModelCorrupt for a value of the wrong
        type. The cache parses it when it loads the model."""
        return ServingConfig.from_metadata(self.metadata, self.ref)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("architecture", ""))

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise ModelCorrupt(f"model {self.ref} has no file {shown(name)} in its manifest")

    def has_file(self, name: str) -> bool:
        return any(entry.name == name for entry in self.files)

    def to_json(self) -> dict:
        """The manifest as written: its fields, then ``digest`` sealing them."""
        body = {
            "schema": MANIFEST_SCHEMA,
            "name": self.name,
            "version": self.version,
            "tasks": list(self.tasks),
            "framework": self.framework,
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.files],
            "metadata": self.metadata,
            "created": self.created,
        }
        return {**body, DIGEST_KEY: manifest_digest(body)}

    def to_bytes(self) -> bytes:
        return manifest_bytes(self.to_json())

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        try:
            return cls(
                name=str(data["name"]),
                version=int(data["version"]),
                tasks=tuple(str(t) for t in data["tasks"]),
                framework=str(data["framework"]),
                files=tuple(FileEntry(str(f["name"]), str(f["sha256"]), int(f["size"])) for f in data["files"]),
                metadata=dict(data.get("metadata") or {}),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelCorrupt(f"manifest is malformed: {exc!r}") from exc

    @classmethod
    def from_bytes(cls, raw: bytes, where: str = "manifest") -> Manifest:
        """Parse a sealed manifest, refusing any byte that differs from what its publisher wrote.

        Three checks: the JSON parses; ``digest`` matches the canonical JSON of the rest (any changed
        value); the bytes are exactly the canonical form of what was parsed (any change that parses to
        the same values, e.g. ``e`` -> ``E`` in a number). A manifest of schema 1 without a digest was
        written before manifests were sealed: it is refused until an operator seals it.
        """
        try:
            data = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise ModelCorrupt(f"manifest of {where} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelCorrupt(f"manifest of {where} is not a JSON object")
        digest = data.get(DIGEST_KEY)
        body = {k: v for k, v in data.items() if k != DIGEST_KEY}
        if digest is None and set(body) <= _MANIFEST_KEYS and body.get("schema") == 1:
            raise FailedPrecondition(
                f"manifest of {where} is not sealed (written by an older PixelRPC, it has no digest); "
                "check the model, then run 'pixelrpc models seal' to seal it, or re-publish it")
        if not isinstance(digest, str) or digest != manifest_digest(body) or raw != manifest_bytes(data):
            raise ModelCorrupt(
                f"manifest of {where} does not match its digest: it was changed or damaged after it was "
                "published; restore it from a backup, or remove this version and re-publish it")
        if not set(body) <= _MANIFEST_KEYS:
            raise ModelCorrupt(f"manifest of {where} has unknown fields {sorted(set(body) - _MANIFEST_KEYS)}")
        return cls.from_json(body)
