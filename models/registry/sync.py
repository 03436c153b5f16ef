"""Copy a whole registry from any fsspec URL into a local folder, verifying every byte.

This is what a Kubernetes init container runs (``pixelrpc models sync SRC DEST``) to give each pod
its own copy of the registry before the server starts: SRC is a mounted path, ``memory://``,
``s3://`` or ``gs://`` (with ``s3fs``/``gcsfs`` installed), DEST a local folder (an ``emptyDir``).

Nothing is trusted on the way: every manifest must be sealed (``Manifest.from_bytes``), every file is
hashed while it streams and compared with its manifest entry, and before anything becomes visible
the staged copy is checked once more with the registry's own ``Registry.resolve`` (sealed manifest)
and ``sha256_file`` (streaming, so memory stays flat for models of any size).
Files are only ever copied and hashed, never deserialized (no unpickling, no torch.load).

Atomicity: the whole copy is staged under ``DEST/.staging-sync-*`` (the registry ignores staging
folders and ``pixelrpc models gc`` removes abandoned ones); only after every version of SRC verified
is each version renamed into place (the registry's own rule: a version exists once its folder with
its manifest does), then the ``DEFAULT`` pins, and last the marker ``DEST/.pixelrpc-sync.json``. The
marker is removed when a sync starts, so a copy that is partial, interrupted or refused never
carries it (``sync_complete``); an init container's exit status says the same to Kubernetes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pixelrpc.models.errors import (
    FailedPrecondition,
    InvalidInput,
    ModelCorrupt,
    RegistryConflict,
    RegistryUnavailable,
)
from pixelrpc.models.registry.disk import fsync_dir as _fsync_dir
from pixelrpc.models.registry.disk import try_lock_folder as _try_lock_folder
from pixelrpc.models.registry.disk import write_synced as _write_synced
from pixelrpc.models.registry.manifest import (
    DEFAULT_FILE,
    FILE_PATTERN,
    MANIFEST,
    NAME_PATTERN,
    VERSION_PATTERN,
    Manifest,
    sha256_file,
    shown,
)
from pixelrpc.models.registry.store import REMOVING_PREFIX, STAGING_PREFIX, Registry

MARKER = ".pixelrpc-sync.json"
CHUNK = 1 << 20


@dataclass
class SyncReport:
    source: str
    dest: str
    copied: list[str] = field(default_factory=list)  # refs copied now
    unchanged: list[str] = field(default_factory=list)  # refs DEST had already, verified
    bytes_copied: int = 0

    def to_json(self) -> dict:
        return {"source": self.source, "dest": self.dest, "copied": self.copied,
                "unchanged": self.unchanged, "bytes_copied": self.bytes_copied}


@dataclass
class _Version:
    manifest: Manifest
    raw: bytes  # the manifest's exact bytes
    folder: str  # in SRC


def open_source(url: str, storage_options: Mapping | None = None):
    """(filesystem, root path) for an fsspec URL; a missing optional backend says what to install."""
    try:
        import fsspec
    except ImportError:
        raise FailedPrecondition("syncing a registry needs fsspec: pip install fsspec") from None
    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:  # e.g. s3:// without s3fs
        raise FailedPrecondition(f"cannot open {url!r}: {exc} (install the fsspec backend for it, e.g. "
                                 "pip install s3fs for s3://, gcsfs for gs://)") from None
    except ValueError as exc:  # unknown protocol
        raise InvalidInput(f"cannot open {url!r}: {exc}", field="source") from None


def _children(fs, path: str) -> list[tuple[str, str]]:
    """(base name, full path) of the folders directly under ``path``."""
    out = []
    for entry in fs.ls(path, detail=True):
        if entry.get("type") == "directory":
            full = entry["name"].rstrip("/")
            out.append((posixpath.basename(full), full))
    return out


def scan_source(fs, root: str, names: Iterable[str] = ()) -> tuple[list[_Version], dict[str, bytes]]:
    """Every sealed model version under ``root`` (and the DEFAULT pins), refusing any broken one."""
    wanted = set(names)
    try:
        if not fs.isdir(root):
            raise RegistryUnavailable(f"registry source {root!r} is not a folder (or cannot be reached)")
        models = _children(fs, root)
    except OSError as exc:
        raise RegistryUnavailable(f"registry source {root!r} cannot be listed: {exc}") from None
    versions: list[_Version] = []
    pins: dict[str, bytes] = {}
    for name, folder in sorted(models):
        if not NAME_PATTERN.fullmatch(name) or (wanted and name not in wanted):
            continue
        for ver, vfolder in sorted(_children(fs, folder), key=lambda c: c[0]):
            if not VERSION_PATTERN.fullmatch(ver):
                continue
            mpath = posixpath.join(vfolder, MANIFEST)
            if not fs.exists(mpath):
                continue  # a version exists once its manifest does (e.g. an interrupted upload)
            raw = fs.cat_file(mpath)
            manifest = Manifest.from_bytes(raw, f"{name}:{ver} in {root}")
            if manifest.name != name or manifest.version != int(ver):
                raise ModelCorrupt(f"manifest at {name}/{ver} of {root} describes {manifest.ref}")
            for entry in manifest.files:
                if not FILE_PATTERN.fullmatch(entry.name) or entry.name == MANIFEST:
                    raise ModelCorrupt(f"manifest of {manifest.ref} names an invalid file {shown(entry.name)}")
            versions.append(_Version(manifest, raw, vfolder))
        pin = posixpath.join(folder, DEFAULT_FILE)
        if fs.exists(pin):
            pins[name] = fs.cat_file(pin)
    missing = wanted - {v.manifest.name for v in versions}
    if missing:
        raise FailedPrecondition(f"registry source {root!r} has no model {', '.join(sorted(missing))}")
    if not versions:
        raise FailedPrecondition(f"registry source {root!r} holds no model versions; fill it first with "
                                 "'pixelrpc models bootstrap --registry ...' or 'pixelrpc models import'")
    return versions, pins


def _copy_file(fs, src: str, dst: Path, size: int, sha256: str, ref: str) -> int:
    h = hashlib.sha256()
    n = 0
    with fs.open(src, "rb") as fin, open(dst, "wb") as fout:
        while n <= size:
            chunk = fin.read(CHUNK)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if n != size or h.hexdigest() != sha256:
        raise ModelCorrupt(
            f"model {ref}: file {dst.name!r} at {src} does not match its manifest "
            f"({'size ' + str(n) + ' != ' + str(size) if n != size else 'sha256 differs'}); it was changed or "
            "damaged after publishing: nothing was synced; re-publish that version at the source")
    return n


def _existing(dest: Registry, v: _Version) -> str:
    """'same' when DEST has this version with identical bytes that verify, 'absent', or 'damaged'."""
    m = v.manifest
    if m.version not in dest.versions(m.name):
        return "absent"
    try:
        raw = (dest.root / m.name / str(m.version) / MANIFEST).read_bytes()
    except OSError:
        return "damaged"
    if raw != v.raw:
        try:
            Manifest.from_bytes(raw, m.ref)
        except Exception:  # noqa: BLE001 - a damaged manifest is replaced
            return "damaged"
        raise RegistryConflict(f"{dest.root} already has {m.ref} with other content than the source; "
                               "remove it there (pixelrpc models remove) or sync into an empty folder")
    try:
        dest.verify(m)
    except Exception:  # noqa: BLE001 - ModelCorrupt, FailedPrecondition: copy it again
        return "damaged"
    return "same"


def _verify_streaming(registry: Registry, manifest: Manifest) -> None:
    """``Registry.verify`` without reading whole files into memory (an init container's memory limit
    stays small for models of any size): size and the registry's ``sha256_file`` of every file."""
    folder = registry.model_dir(manifest)
    for entry in manifest.files:
        path = folder / entry.name
        if not path.is_file() or path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise ModelCorrupt(f"model {manifest.ref}: staged file {entry.name!r} does not match its manifest "
                               "sha256 (changed while syncing?); nothing was synced")


def sync_registry(source: str, dest: str | os.PathLike, *, names: Iterable[str] = (),
                  storage_options: Mapping | None = None,
                  progress: Callable[[str], None] | None = None) -> SyncReport:
    """Copy every model version of ``source`` (an fsspec URL) into the local folder ``dest``."""
    say = progress or (lambda _msg: None)
    dest_root = Path(dest)
    if dest_root.is_dir():
        (dest_root / MARKER).unlink(missing_ok=True)  # from here on, DEST does not look complete
    fs, root = open_source(source, storage_options)
    versions, pins = scan_source(fs, root, names)
    dest_root.mkdir(parents=True, exist_ok=True)
    target = Registry(dest_root)
    report = SyncReport(source=source, dest=str(dest_root))
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX + "sync-", dir=dest_root))
    lock = _try_lock_folder(staging)
    try:
        todo: list[tuple[_Version, bool]] = []
        for v in versions:
            state = _existing(target, v)
            if state == "same":
                report.unchanged.append(v.manifest.ref)
                continue
            m = v.manifest
            folder = staging / m.name / str(m.version)
            folder.mkdir(parents=True)
            for entry in m.files:
                report.bytes_copied += _copy_file(fs, posixpath.join(v.folder, entry.name), folder / entry.name,
                                                  entry.size, entry.sha256, m.ref)
            _write_synced(folder / MANIFEST, v.raw)
            say(f"copied {m.ref} ({len(m.files)} files)")
            todo.append((v, state == "damaged"))
        staged = Registry(staging)
        for v, _ in todo:  # the registry's own checks over exactly what will be moved into place
            _verify_streaming(staged, staged.resolve(v.manifest.name, v.manifest.version))
        for v, replace in todo:
            m = v.manifest
            (dest_root / m.name).mkdir(exist_ok=True)
            final = dest_root / m.name / str(m.version)
            if replace:
                trash = dest_root / f"{REMOVING_PREFIX}{m.name}-{m.version}-{os.getpid()}"
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(staging / m.name / str(m.version), final)
            _fsync_dir(dest_root / m.name)
            report.copied.append(m.ref)
        for name, text in pins.items():
            tmp = dest_root / name / f".{DEFAULT_FILE}.{os.getpid()}"
            _write_synced(tmp, text)
            os.replace(tmp, dest_root / name / DEFAULT_FILE)
        marker = {**report.to_json(), "versions": sorted(v.manifest.ref for v in versions),
                  "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        tmp = dest_root / f"{MARKER}.{os.getpid()}"
        _write_synced(tmp, (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode())
        os.replace(tmp, dest_root / MARKER)
        _fsync_dir(dest_root)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def sync_complete(dest: str | os.PathLike) -> dict | None:
    """The marker of the last finished sync into ``dest``, or None when none finished there."""
    try:
        return json.loads((Path(dest) / MARKER).read_text())
    except (OSError, ValueError):
        return None
