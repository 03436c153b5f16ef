"""The on-disk model registry shared by every service and the CLI.

Layout::

    <root>/<name>/<version>/manifest.json   # written last: a version exists once its manifest does
    <root>/<name>/<version>/<files...>
    <root>/<name>/DEFAULT                   # optional: the default version, else the highest

Publishing writes a complete version into ``<root>/.staging-<random>/`` and renames it into place,
so readers never see a partial version and a crash leaves at worst an ignored staging folder.
Two publishers racing for one version number cannot both win: ``rename`` onto a non-empty folder
fails, and the loser gets ``RegistryConflict``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pixelrpc.models.errors import InvalidInput, ModelCorrupt, ModelNotFound, RegistryConflict, clip

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST = "manifest.json"
DEFAULT_FILE = "DEFAULT"
MANIFEST_SCHEMA = 1
# Files a loader may deserialise. Pickle-based formats are never accepted.
SAFE_SUFFIXES = (".safetensors", ".json", ".npz", ".pt", ".pth", ".txt", ".png")


def default_root() -> Path:
    env = os.environ.get("PIXELRPC_REGISTRY")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/pixelrpc/registry").expanduser()


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in (".", ".."):
        raise InvalidInput(
            f"invalid model name {clip(name)!r}: use [a-z0-9][a-z0-9._-]{{0,63}} "
            "(lower-case letters, digits, '.', '_', '-')",
            field="model.name",
        )
    return name


def parse_ref(ref: str) -> tuple[str, int]:
    """``"name"`` -> (name, 0); ``"name:3"`` -> (name, 3). Version 0 means the default version."""
    name, _, version = ref.partition(":")
    validate_name(name)
    if not version:
        return name, 0
    if not version.isdigit():
        raise InvalidInput(f"invalid model reference {clip(ref)!r}: expected NAME or NAME:VERSION", field="model")
    return name, int(version)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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

    @property
    def sha256(self) -> str:
        """Content identity of the model: files, tasks, framework and metadata, not name or time."""
        body = {
            "tasks": list(self.tasks),
            "framework": self.framework,
            "files": [[f.name, f.sha256, f.size] for f in sorted(self.files, key=lambda e: e.name)],
            "metadata": self.metadata,
        }
        return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("architecture", ""))

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise ModelCorrupt(f"model {self.ref} has no file {name!r} in its manifest")

    def to_json(self) -> dict:
        return {
            "schema": MANIFEST_SCHEMA,
            "name": self.name,
            "version": self.version,
            "tasks": list(self.tasks),
            "framework": self.framework,
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.files],
            "metadata": self.metadata,
            "created": self.created,
        }

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
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCorrupt(f"manifest is malformed: {exc!r}") from exc


class Registry:
    """A folder of versioned models. Reading is safe from many processes; so is publishing."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ----------------------------------------------------------------- reading
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / validate_name(name)
        if not folder.is_dir():
            return []
        out = []
        for p in folder.iterdir():
            if p.name.isdigit() and int(p.name) > 0 and (p / MANIFEST).is_file():
                out.append(int(p.name))
        return sorted(out)

    def default_version(self, name: str) -> int:
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(self._not_found_message(name))
        pinned = self.root / name / DEFAULT_FILE
        if pinned.is_file():
            text = pinned.read_text().strip()
            if text.isdigit() and int(text) in versions:
                return int(text)
        return versions[-1]

    def resolve(self, name: str, version: int = 0) -> Manifest:
        """The manifest of ``name:version`` (version 0: the default). Raises ModelNotFound."""
        validate_name(name)
        if version < 0:
            raise InvalidInput(f"model version must be >= 0, got {version}", field="model.version")
        if version == 0:
            version = self.default_version(name)
        path = self.root / name / str(version) / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            have = self.versions(name)
            if not have:
                raise ModelNotFound(self._not_found_message(name)) from None
            raise ModelNotFound(
                f"model {name!r} has no version {version} (available: {', '.join(map(str, have))})"
            ) from None
        try:
            manifest = Manifest.from_json(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise ModelCorrupt(f"manifest of {name}:{version} is not valid JSON: {exc}") from exc
        if manifest.name != name or manifest.version != version:
            raise ModelCorrupt(f"manifest at {name}/{version} describes {manifest.ref}")
        return manifest

    def list(self, task: str | None = None, *, all_versions: bool = False) -> list[Manifest]:
        out = []
        for name in self.names():
            try:
                versions = self.versions(name) if all_versions else [self.default_version(name)]
                for v in versions:
                    m = self.resolve(name, v)
                    if task is None or task in m.tasks:
                        out.append(m)
            except (ModelNotFound, ModelCorrupt):
                continue
        return out

    def model_dir(self, manifest: Manifest) -> Path:
        return self.root / manifest.name / str(manifest.version)

    def read_file(self, manifest: Manifest, filename: str) -> bytes:
        """Read one file of a model into memory and check its sha256 (ModelCorrupt on mismatch)."""
        entry = manifest.file(filename)
        path = self.model_dir(manifest) / entry.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelCorrupt(f"model {manifest.ref} is missing its file {entry.name!r}") from None
        if len(data) != entry.size or sha256_bytes(data) != entry.sha256:
            raise ModelCorrupt(
                f"model {manifest.ref}: file {entry.name!r} does not match its manifest sha256 "
                "(the file was changed or damaged); re-publish or remove this version"
            )
        return data

    def verify(self, manifest: Manifest) -> None:
        for entry in manifest.files:
            self.read_file(manifest, entry.name)

    # ----------------------------------------------------------------- writing
    def publish(
        self,
        name: str,
        files: Mapping[str, bytes | os.PathLike | str],
        *,
        tasks: Iterable[str],
        framework: str,
        metadata: Mapping | None = None,
        version: int | None = None,
    ) -> Manifest:
        """Write a new version atomically and return its manifest.

        ``files`` maps a file name to its bytes or to a path to copy. ``version`` None takes the next
        free number; an explicit version that exists raises RegistryConflict.
        """
        validate_name(name)
        tasks = tuple(tasks)
        if not tasks:
            raise InvalidInput("a model needs at least one task", field="tasks")
        for fname in files:
            if not FILE_PATTERN.match(fname) or fname == MANIFEST:
                raise InvalidInput(f"invalid model file name {fname!r}", field="files")
            if not fname.endswith(SAFE_SUFFIXES):
                raise InvalidInput(f"file {fname!r} is not of a safe format ({', '.join(SAFE_SUFFIXES)})")
        metadata = json.loads(json.dumps(dict(metadata or {})))  # must be plain JSON
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            entries = []
            for fname, src in files.items():
                dst = staging / fname
                if isinstance(src, bytes | bytearray | memoryview):
                    with open(dst, "wb") as f:
                        f.write(src)
                        f.flush()
                        os.fsync(f.fileno())
                else:
                    shutil.copyfile(src, dst)
                entries.append(FileEntry(fname, sha256_file(dst), dst.stat().st_size))
            (self.root / name).mkdir(exist_ok=True)
            for attempt in range(8):
                target_version = version if version is not None else self._next_version(name)
                manifest = Manifest(
                    name=name,
                    version=target_version,
                    tasks=tasks,
                    framework=framework,
                    files=tuple(entries),
                    metadata=metadata,
                    created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                )
                with open(staging / MANIFEST, "w") as f:
                    json.dump(manifest.to_json(), f, indent=2, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                target = self.root / name / str(target_version)
                try:
                    os.rename(staging, target)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    if version is not None or attempt == 7:
                        raise RegistryConflict(
                            f"{name}:{target_version} already exists (another publisher won); "
                            "nothing was changed"
                        ) from None
            _fsync_dir(self.root / name)
            return manifest
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def set_default(self, name: str, version: int) -> None:
        if version not in self.versions(name):
            raise ModelNotFound(f"model {name!r} has no version {version}")
        tmp = self.root / name / f".DEFAULT.{os.getpid()}"
        tmp.write_text(f"{version}\n")
        os.replace(tmp, self.root / name / DEFAULT_FILE)

    def remove(self, name: str, version: int) -> None:
        """Remove one version. Services that loaded it keep their in-memory copy."""
        self.resolve(name, version)
        target = self.root / name / str(version)
        trash = self.root / f".removing-{name}-{version}-{os.getpid()}"
        os.rename(target, trash)  # atomic: readers see the version or nothing
        shutil.rmtree(trash, ignore_errors=True)
        pinned = self.root / name / DEFAULT_FILE
        if pinned.is_file() and pinned.read_text().strip() == str(version):
            pinned.unlink()

    # ----------------------------------------------------------------- helpers
    def _next_version(self, name: str) -> int:
        versions = self.versions(name)
        return (versions[-1] + 1) if versions else 1

    def _not_found_message(self, name: str) -> str:
        # No path: this message reaches remote callers, who need not learn the server's file layout
        # (`pixelrpc models list` shows an operator which registry is in use).
        return (
            f"model {clip(name)!r} is not in the model registry; add it with "
            "'pixelrpc models bootstrap' or 'pixelrpc models import ...'"
        )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
