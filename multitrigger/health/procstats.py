"""
Memory, CPU and cgroup of a process, read from ``/proc`` by psutil when someone asks.

PSS (``/proc/<pid>/smaps_rollup``) is the honest memory figure for loops
forked from a zygote, whose pages are shared; RSS would count every shared page once per loop.
A loop with limits has its own cgroup, whose usage (memory, CPU, pids, OOM kills: the whole
loop, children included) is read the same way (``cgroup_usage``). Reads happen on the reader's thread (HTTP), never the selector's, and are cached ``TTL`` seconds
(memory ``MEMORY_TTL``), so a scrape per second of many loops costs a few ``/proc`` reads.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from multitrigger.cgroups import files

#: A process's figures are read again after this long (s).
TTL = 1.0
#: ... but its memory only after this long: the kernel walks every mapping for PSS (1.5-3 ms of
#: CPU per loop process on this machine), and memory does not need a one-second resolution.
MEMORY_TTL = 10.0


@dataclass(frozen=True)
class ProcStats:
    pss_bytes: int | None
    rss_bytes: int | None
    cpu_seconds: float | None  # user + system, this process only
    cgroup: str | None  # its cgroup (v2 unified path, or v1 memory controller's)

    @classmethod
    def read(cls, pid: int, memory: tuple[int | None, int | None] | None = None) -> ProcStats:
        """Read now; ``memory`` (PSS, RSS) if already known (it is the costly part)."""
        try:
            times = psutil.Process(pid).cpu_times()
            pss, rss = memory if memory is not None else _rollup(pid)
            if rss is None:
                rss = psutil.Process(pid).memory_info().rss
            return cls(pss, rss, times.user + times.system, _cgroup(pid))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, OSError):
            return cls(None, None, None, None)


def _rollup(pid: int) -> tuple[int | None, int | None]:
    """PSS and RSS from ``/proc/<pid>/smaps_rollup`` (Linux >= 4.14): ~0.1 ms, where psutil's
    ``memory_full_info`` walks every mapping in ``smaps`` (~1.6 ms a loop process, measured here)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None, None
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            found[key] = int(rest.split()[0]) * 1024
    return found.get("Pss"), found.get("Rss")


def _cgroup(pid: int) -> str | None:
    """Its v1 memory controller's cgroup path, else its v2 one."""
    by_controller = files.cgroups_of(pid)
    return by_controller.get("memory") or by_controller.get("")


def cgroup_usage(cgroup: Any) -> dict[str, Any]:
    """A loop cgroup's usage (``multitrigger.cgroups.LoopCgroup.usage``) as a dict; {} if unreadable."""
    try:
        return dataclasses.asdict(cgroup.usage())
    except (OSError, ValueError):
        return {}


class ProcCache:
    """``ProcStats`` per pid, at most ``TTL`` old; safe to share between reader threads."""

    def __init__(self, ttl: float = TTL, memory_ttl: float = MEMORY_TTL) -> None:
        self.ttl, self.memory_ttl = ttl, memory_ttl
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[float, ProcStats]] = {}
        self._usage: dict[str, tuple[float, dict[str, Any]]] = {}
        self._memory: dict[int, tuple[float, tuple[int | None, int | None]]] = {}

    def get(self, pid: int | None) -> ProcStats:
        if pid is None:
            return ProcStats(None, None, None, None)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(pid)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        with self._lock:
            memory = self._memory.get(pid)
        if memory is None or now - memory[0] >= self.memory_ttl:
            memory = (now, _rollup(pid))
        stats = ProcStats.read(pid, memory[1])
        with self._lock:
            self._cache = {p: v for p, v in self._cache.items() if now - v[0] < 10 * self.ttl}
            self._memory = {p: v for p, v in self._memory.items() if now - v[0] < 2 * self.memory_ttl}
            self._cache[pid], self._memory[pid] = (now, stats), memory
        return stats

    def usage(self, cgroup: Any) -> dict[str, Any]:
        """``cgroup_usage``, cached like process figures (keyed by the cgroup's path)."""
        if cgroup is None:
            return {}
        now, key = time.monotonic(), str(cgroup.path)
        with self._lock:
            hit = self._usage.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        usage = cgroup_usage(cgroup)
        with self._lock:
            self._usage[key] = (now, usage)
        return usage
