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
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pixelrpc.models.errors import (
    FailedPrecondition,
    InvalidInput,
    ModelCorrupt,
    ModelNotFound,
    PixelRPCError,
    RegistryConflict,
    RegistryUnavailable,
    clip,
)
from pixelrpc.models.registry.disk import (
    file_kind,
    fsync_dir,
    is_dir,
    strerror,
    try_lock_folder,
    who,
    write_synced,
)
from pixelrpc.models.registry.manifest import (  # noqa: F401 - re-exported
    DEFAULT_FILE,
    DIGEST_KEY,
    FILE_PATTERN,
    MANIFEST,
    MANIFEST_SCHEMA,
    MAX_VERSION,
    NAME_PATTERN,
    VERSION_PATTERN,
    FileEntry,
    Manifest,
    manifest_bytes,
    manifest_digest,
    parse_ref,
    sha256_bytes,
    sha256_file,
    shown,
    validate_name,
)

STAGING_PREFIX = ".staging-"
REMOVING_PREFIX = ".removing-"
# A staging folder whose publisher is gone (its lock is free) is removed once it is this old. The lock
# is what protects a live publisher; the grace period only covers the instant between creating the
# folder and locking it, and file systems where locks are not shared.
STAGING_GRACE_SECONDS = 600.0
# Files a loader may deserialise. Pickle-based formats are never accepted.
SAFE_SUFFIXES = (".safetensors", ".json", ".npz", ".pt", ".pth", ".txt", ".png")
# How publish and seal write a manifest; a module attribute that fault tests replace to stall a publish.
_write_synced = write_synced


def default_root() -> Path:
    env = os.environ.get("PIXELRPC_REGISTRY")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/pixelrpc/registry").expanduser()


@dataclass(frozen=True)
class RegistryStatus:
    """Whether the registry folder can be read now (the ``ModelRegistry`` health name).

    state: ``ok``; ``absent`` (never existed: nothing published yet); ``gone`` (existed, now missing:
    deleted or unmounted); ``empty`` (had models, now has none: an unmounted volume's bare mount point);
    ``unreadable`` (permissions, not a folder, I/O error).
    """

    state: str
    message: str = ""

    @property
    def healthy(self) -> bool:
        return self.state == "ok"


@dataclass(frozen=True)
class BrokenEntry:
    """An entry of the registry that cannot be used, and why; the healthy entries are unaffected."""

    name: str  # the folder name as found (escaped with ``shown`` when it is not a valid name)
    version: int  # 0: the model folder (or its default) as a whole
    error: PixelRPCError

    @property
    def reason(self) -> str:
        return self.error.message

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "error": type(self.error).__name__,
                "reason": self.reason}


class Registry:
    """A folder of versioned models. Reading is safe from many processes; so is publishing.

    Every failure of the file system is a typed error an operator can act on, never an OSError:
    the root gone, unmounted or unreadable is ``RegistryUnavailable`` (UNAVAILABLE); a model folder,
    version folder or manifest that cannot be read or is not what it should be is
    ``FailedPrecondition``; a manifest or file whose bytes changed is ``ModelCorrupt`` (DATA_LOSS).
    """

    def __init__(self, root: str | os.PathLike | None = None, *,
                 staging_grace_seconds: float = STAGING_GRACE_SECONDS):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.staging_grace_seconds = float(staging_grace_seconds)
        # What this process has seen of the root: a root that existed and is now missing, or that
        # held models and is now empty, was deleted or unmounted (UNAVAILABLE), while a root that never
        # existed is simply an empty registry (NOT_FOUND with how to add models).
        self._seen_root = False
        self._seen_models = False

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ----------------------------------------------------------------- the root
    def status(self) -> RegistryStatus:
        """The state of the root now (cheap: a stat and, when it looks empty, one listing)."""
        status = self._root_status()
        if status.state == "ok" and self._seen_models and self._root_is_empty():
            return RegistryStatus("empty", self._empty_message())
        return status

    def _root_status(self) -> RegistryStatus:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            if self._seen_root:
                return RegistryStatus("gone", f"registry folder {self.root} is gone (deleted or unmounted); "
                                              "models already loaded keep serving and the server recovers "
                                              "by itself once the folder is back")
            return RegistryStatus("absent", f"registry folder {self.root} does not exist; add models with "
                                            "'pixelrpc models bootstrap' or 'pixelrpc models import ...'")
        except OSError as exc:
            return RegistryStatus("unreadable", f"registry folder {self.root} cannot be read "
                                                f"({strerror(exc)}); check the volume and its permissions "
                                                f"for {who()}")
        if not stat.S_ISDIR(st.st_mode):
            return RegistryStatus("unreadable", f"registry root {self.root} is {file_kind(st.st_mode)}, not a "
                                                "folder; point PIXELRPC_REGISTRY at the registry folder")
        if not os.access(self.root, os.R_OK | os.X_OK):
            return RegistryStatus("unreadable", f"registry folder {self.root} cannot be read (permission "
                                                f"denied for {who()}); give the server read and search "
                                                "permission on it (chmod a+rX)")
        self._seen_root = True
        return RegistryStatus("ok")

    def _require_root(self) -> bool:
        """True when the root is a readable folder, False when it never existed; else RegistryUnavailable."""
        status = self._root_status()
        if status.state in ("gone", "unreadable"):
            raise RegistryUnavailable(status.message)
        return status.state == "ok"

    def _root_entries(self) -> list[os.DirEntry]:
        try:
            with os.scandir(self.root) as it:
                return sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            if self._require_root():  # raises when it is gone
                return []
            return []
        except OSError as exc:
            raise RegistryUnavailable(f"registry folder {self.root} cannot be listed ({strerror(exc)}); "
                                      f"check the volume and its permissions for {who()}") from None

    def _root_is_empty(self) -> bool:
        try:
            with os.scandir(self.root) as it:
                return not any(not e.name.startswith(".") for e in it)
        except OSError:
            return False

    def _empty_message(self) -> str:
        return (f"registry folder {self.root} is empty but held models before (an unmounted volume?); "
                "models already loaded keep serving and the server recovers once they are back")

    def _not_found(self, name: str) -> PixelRPCError:
        if self._seen_models and self._root_is_empty():
            return RegistryUnavailable(self._empty_message())
        return ModelNotFound(self._not_found_message(name))

    # ----------------------------------------------------------------- reading
    def names(self) -> list[str]:
        """Valid model names with a folder in the registry."""
        if not self._require_root():
            return []
        return [e.name for e in self._root_entries() if NAME_PATTERN.fullmatch(e.name) and is_dir(e)]

    def versions(self, name: str) -> list[int]:
        folder = self.root / validate_name(name)
        if not self._require_root():
            return []
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise FailedPrecondition(f"model folder {folder} cannot be read ({strerror(exc)}); fix its "
                                     f"permissions for {who()} or remove it") from None
        if not stat.S_ISDIR(st.st_mode):
            raise FailedPrecondition(f"registry entry {folder} is {file_kind(st.st_mode)}, not a model folder; "
                                     "remove it or move it out of the registry")
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise FailedPrecondition(f"model folder {folder} cannot be listed ({strerror(exc)}); fix its "
                                     f"permissions for {who()} (chmod a+rX) or remove it") from None
        out = []
        for e in entries:
            if not VERSION_PATTERN.fullmatch(e.name):
                continue
            try:  # a version exists once its manifest does, whatever the manifest turns out to be
                os.lstat(os.path.join(e.path, MANIFEST))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:
                pass  # unreadable version folder: listed, and resolve says what is wrong with it
            out.append(int(e.name))
        if out:
            self._seen_models = True
        return sorted(out)

    def default_version(self, name: str) -> int:
        versions = self.versions(name)
        if not versions:
            raise self._not_found(name)
        pinned = self.root / name / DEFAULT_FILE
        try:
            text = pinned.read_text(encoding="ascii", errors="replace").strip()
        except FileNotFoundError:
            return versions[-1]
        except OSError as exc:
            raise FailedPrecondition(f"default pin {pinned} cannot be read ({strerror(exc)}); fix it or "
                                     f"remove it (then the highest version is the default)") from None
        if VERSION_PATTERN.fullmatch(text) and int(text) in versions:
            return int(text)
        return versions[-1]

    def resolve(self, name: str, version: int = 0) -> Manifest:
        """The verified manifest of ``name:version`` (version 0: the default). Raises ModelNotFound."""
        validate_name(name)
        if not isinstance(version, int) or version < 0 or version > MAX_VERSION:
            raise InvalidInput(f"model version must be between 0 and {MAX_VERSION}, got {version}",
                               field="model.version")
        if version == 0:
            version = self.default_version(name)
        raw = self._read_manifest(name, version)
        manifest = Manifest.from_bytes(raw, f"{name}:{version}")
        if manifest.name != name or manifest.version != version:
            raise ModelCorrupt(f"manifest at {name}/{version} describes {manifest.ref}")
        self._seen_models = True
        return manifest

    def _read_manifest(self, name: str, version: int) -> bytes:
        path = self.root / name / str(version) / MANIFEST
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise FailedPrecondition(
                    f"manifest {path} is {file_kind(st.st_mode)}; remove the version folder {path.parent} or "
                    "re-publish the version")
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            self._require_root()  # the whole registry went away: UNAVAILABLE, not NOT_FOUND
            have = self.versions(name)
            if not have:
                raise self._not_found(name) from None
            raise ModelNotFound(
                f"model {name!r} has no version {version} (available: {', '.join(map(str, have))})"
            ) from None
        except OSError as exc:
            raise FailedPrecondition(f"manifest {path} cannot be read ({strerror(exc)}); fix the "
                                     f"permissions of {path.parent} for {who()} or remove it") from None

    def scan(self, task: str | None = None, *, all_versions: bool = False
             ) -> tuple[list[Manifest], list[BrokenEntry]]:
        """Every usable manifest (default versions unless ``all_versions``) and every broken entry.

        A broken model folder, version or manifest is reported and skipped, so it never hides the
        healthy models. Only an unreadable root raises (``RegistryUnavailable``).
        """
        out: list[Manifest] = []
        broken: list[BrokenEntry] = []
        if not self._require_root():
            return out, broken
        entries = self._root_entries()
        if self._seen_models and not any(not e.name.startswith(".") for e in entries):
            raise RegistryUnavailable(self._empty_message())
        for entry in entries:
            n = entry.name
            if n.startswith("."):
                continue  # staging, removing and other hidden entries
            if not NAME_PATTERN.fullmatch(n):
                broken.append(BrokenEntry(shown(n), 0, FailedPrecondition(
                    f"registry entry {shown(n)} is not a valid model name ([a-z0-9][a-z0-9._-]{{0,63}}); "
                    "it is ignored: rename or remove it")))
                continue
            try:
                versions = self.versions(n) if all_versions else [self.default_version(n)]
            except RegistryUnavailable:
                raise
            except ModelNotFound:
                continue  # a model folder without versions (all removed)
            except PixelRPCError as exc:
                broken.append(BrokenEntry(n, 0, exc))
                continue
            for v in versions:
                try:
                    m = self.resolve(n, v)
                except RegistryUnavailable:
                    raise
                except ModelNotFound:
                    continue  # removed while we looked
                except PixelRPCError as exc:
                    broken.append(BrokenEntry(n, v, exc))
                    continue
                if task is None or task in m.tasks:
                    out.append(m)
        return out, broken

    def list(self, task: str | None = None, *, all_versions: bool = False) -> list[Manifest]:
        return self.scan(task, all_versions=all_versions)[0]

    def model_dir(self, manifest: Manifest) -> Path:
        return self.root / manifest.name / str(manifest.version)

    def read_file(self, manifest: Manifest, filename: str) -> bytes:
        """Read one file of a model into memory and check its sha256 (ModelCorrupt on mismatch)."""
        entry = manifest.file(filename)
        path = self.model_dir(manifest) / entry.name
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise FailedPrecondition(f"model {manifest.ref}: {path} is {file_kind(st.st_mode)}; "
                                         "re-publish or remove this version")
            if st.st_size != entry.size:
                data = b""
            else:
                with open(path, "rb") as f:
                    data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            self._require_root()
            raise ModelCorrupt(f"model {manifest.ref} is missing its file {entry.name!r}") from None
        except OSError as exc:
            raise FailedPrecondition(f"model {manifest.ref}: {path} cannot be read ({strerror(exc)}); fix "
                                     f"its permissions for {who()} or remove this version") from None
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
        free number; an explicit version that exists raises RegistryConflict. The staging folder is
        locked (``flock``) while this publisher lives, so a cleaner never removes it under us; stale
        staging folders of killed publishers are removed first (``clean_staging``).
        """
        validate_name(name)
        tasks = tuple(tasks)
        if not tasks:
            raise InvalidInput("a model needs at least one task", field="tasks")
        if version is not None and not (isinstance(version, int) and 0 < version <= MAX_VERSION):
            raise InvalidInput(f"version must be between 1 and {MAX_VERSION}, got {version}", field="version")
        for fname in files:
            if not isinstance(fname, str) or not FILE_PATTERN.fullmatch(fname) or fname == MANIFEST:
                raise InvalidInput(f"invalid model file name {shown(fname)}", field="files")
            if not fname.endswith(SAFE_SUFFIXES):
                raise InvalidInput(f"file {fname!r} is not of a safe format ({', '.join(SAFE_SUFFIXES)})")
        metadata = json.loads(json.dumps(dict(metadata or {})))  # must be plain JSON
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.clean_staging()
        except PixelRPCError:
            pass  # cleaning is best effort; publishing decides below
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        lock = try_lock_folder(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; a version is readable like its files
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
                _write_synced(staging / MANIFEST, manifest.to_bytes())
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
            fsync_dir(self.root / name)
            return manifest
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            if lock is not None:
                os.close(lock)

    def seal(self, name: str, version: int) -> bool:
        """Seal an older manifest (schema 1, no digest) after checking every file against it.

        Returns False when it was sealed already. Sealing vouches for the manifest as it is now, so it
        is refused when any file does not match (ModelCorrupt).
        """
        validate_name(name)
        raw = self._read_manifest(name, version)
        try:
            Manifest.from_bytes(raw, f"{name}:{version}")
            return False
        except FailedPrecondition:
            pass  # not sealed: the only case we seal
        manifest = Manifest.from_json(json.loads(raw))
        if manifest.name != name or manifest.version != version:
            raise ModelCorrupt(f"manifest at {name}/{version} describes {manifest.ref}")
        self.verify(manifest)
        folder = self.root / name / str(version)
        tmp = folder / f".{MANIFEST}.{os.getpid()}"
        _write_synced(tmp, manifest.to_bytes())
        os.replace(tmp, folder / MANIFEST)
        fsync_dir(folder)
        return True

    def set_default(self, name: str, version: int) -> None:
        if version not in self.versions(name):
            raise ModelNotFound(f"model {name!r} has no version {version}")
        tmp = self.root / name / f".DEFAULT.{os.getpid()}"
        tmp.write_text(f"{version}\n")
        os.replace(tmp, self.root / name / DEFAULT_FILE)

    def remove(self, name: str, version: int) -> None:
        """Remove one version. Services that loaded it keep their in-memory copy."""
        if version not in self.versions(name):
            self.resolve(name, version)  # raises the precise error
        target = self.root / name / str(version)
        trash = self.root / f"{REMOVING_PREFIX}{name}-{version}-{os.getpid()}"
        os.rename(target, trash)  # atomic: readers see the version or nothing
        shutil.rmtree(trash, ignore_errors=True)
        pinned = self.root / name / DEFAULT_FILE
        if pinned.is_file() and pinned.read_text().strip() == str(version):
            pinned.unlink()

    def clean_staging(self, grace_seconds: float | None = None, *, dry_run: bool = False) -> list[str]:
        """Remove what killed publishers and removers left behind; returns the names removed.

        A ``.staging-*`` folder is removed only when its lock is free (its publisher is dead) and it is
        older than ``grace_seconds`` (default ``staging_grace_seconds``); ``.removing-*`` folders
        (a removal's trash) only when older than the grace period. A live publisher is never touched.
        """
        grace = self.staging_grace_seconds if grace_seconds is None else float(grace_seconds)
        if not self._require_root():
            return []
        removed = []
        now = time.time()
        for entry in self._root_entries():
            if not entry.name.startswith((STAGING_PREFIX, REMOVING_PREFIX)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or now - st.st_mtime < grace:
                continue
            fd = None
            if entry.name.startswith(STAGING_PREFIX):
                fd = try_lock_folder(entry.path)
                if fd is None:
                    continue  # a live publisher holds it
            try:
                if not dry_run:
                    shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
            finally:
                if fd is not None:
                    os.close(fd)
        return removed

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
