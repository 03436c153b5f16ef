"""The registry's file-system primitives: durable writes, folder locks, and how a file-system
problem reads in an error message (``strerror``, ``file_kind``, ``who``)."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path


def strerror(exc: OSError) -> str:
    """The reason an OSError gives, for a message."""
    return exc.strerror or exc.__class__.__name__


def file_kind(mode: int) -> str:
    """What a non-regular file is (``st_mode``), for a message: "a folder", "a pipe", ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def who() -> str:
    """Who this process is to the file system, for a message about permissions."""
    return f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this process"


def is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, False when it cannot be told."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def try_lock_folder(path: str | Path) -> int | None:
    """A descriptor holding an exclusive ``flock`` on the folder for as long as it is open; None when
    another process holds the lock (or the folder cannot be opened). A publisher locks its fresh
    staging folder; the cleaner skips the folders it cannot lock."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        pass  # locks unsupported: rely on the grace period
    return fd


def fsync_dir(path: Path) -> None:
    """Fsync a folder, so that a rename or a new file in it survives a crash (best effort)."""
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
