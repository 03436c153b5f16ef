"""A server's CPU time and memory from Linux /proc, counting its child processes.

A server's work is not all in its own process: the captioning service decodes in a worker process of
its own (``services/decode_worker.py``). Every benchmark that reports a server's CPU per call or its
RSS reads it here, for the process and all its descendants, so that moving work to a child never
makes a row look cheaper than it is.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every living process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of ``pid`` (all its threads), of its living descendants, and of
    the children it has reaped."""
    total = 0.0
    for p in descendants(pid):
        try:
            f = _stat(p)
        except OSError:  # exited meanwhile
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # utime stime cutime cstime
    return total / _TICK


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of ``pid`` alone (all its threads, no children)."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / _TICK


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS), in KiB, summed over ``pid`` and its descendants; empty when gone."""
    out: dict[str, int] = {}
    for p in descendants(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = out.get(key, 0) + int(value.split()[0])
    return out


def rss_mib(pid: int) -> float:
    """RSS of ``pid`` and its descendants, MiB (0 when gone)."""
    return status_kib(pid).get("VmRSS", 0) / 1024
