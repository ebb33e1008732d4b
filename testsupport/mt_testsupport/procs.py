"""Processes through psutil, for tests and benchmarks: whose children are these loops, are they
still alive, how much CPU and memory do they use (and, sampled over time, how much RSS)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import psutil

_DEAD = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def process_tree(root: int) -> set[int]:
    """``root`` and every live process below it (empty if ``root`` is gone)."""
    try:
        proc = psutil.Process(root)
        return {root, *(child.pid for child in proc.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() not in _DEAD
    except psutil.NoSuchProcess:
        return False


def parent_pid(pid: int) -> int:
    return psutil.Process(pid).ppid()


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time used so far by ``pids`` (vanished ones count 0)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def memory_kb(pid: int) -> dict[str, int]:
    """``{"uss", "pss", "rss"}`` of ``pid`` in kB (``memory_full_info``: smaps_rollup on Linux);
    raises ``psutil.NoSuchProcess`` if it is gone."""
    info = psutil.Process(pid).memory_full_info()
    return {"uss": info.uss // 1024, "pss": info.pss // 1024, "rss": info.rss // 1024}


class RssSampler(threading.Thread):
    """Samples ``pid``'s RSS every ``interval`` s, each with its wall-clock time, until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True, name=f"rss-{pid}")
        self.proc, self.interval = psutil.Process(pid), interval
        self.samples: list[tuple[float, int]] = []
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.samples.append((time.time(), self.proc.memory_info().rss))
            except psutil.NoSuchProcess:
                return
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()
        self.join(5)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> int | None:
        """The highest RSS sampled in [since, until), or None if no sample falls there."""
        return max((rss for t, rss in self.samples if since <= t < until), default=None)
