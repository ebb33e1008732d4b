"""
Was a loop killed for being out of memory? Ask its memory cgroup.

A loop the kernel's OOM killer picks dies by SIGKILL — indistinguishable, from the exit status
alone, from ``kill -9``. Its memory cgroup counts OOM kills, so multitrigger reads that counter
when a loop starts and again when it dies by SIGKILL: if it went up, the loop ran out of memory.

* cgroup v1: ``/sys/fs/cgroup/memory/<path>/memory.oom_control``, line ``oom_kill N``
  (``/proc/<pid>/cgroup`` line ``N:memory:<path>``);
* cgroup v2: ``/sys/fs/cgroup/<path>/memory.events``, line ``oom_kill N``
  (``/proc/<pid>/cgroup`` line ``0::<path>``).

The counter is per cgroup, so a loop sharing a cgroup with others (no per-loop cgroup) can be
mislabelled only if another member was OOM-killed in the same window: the reason says which
cgroup's counter rose. A loop with ``[loops.<name>.limits]`` has a cgroup of its own (``multitrigger.cgroups``), whose
counter is watched directly (``watch_file``): exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multitrigger.cgroups import files

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class OomWatch:
    """A loop's memory cgroup and its OOM-kill count when the loop started."""

    counter_file: Path
    at_start: int

    def fired(self) -> bool:
        """Whether the cgroup has OOM-killed something since the loop started."""
        now = read_oom_kills(self.counter_file)
        return now is not None and now > self.at_start

    def describe(self) -> str:
        return f"out of memory (killed by SIGKILL; OOM kill counted in {self.counter_file.parent})"


def memory_counter_file(pid: int, root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> Path | None:
    """The OOM counter file of ``pid``'s memory cgroup (v1 memory controller, else v2), if any."""
    cgroups = files.cgroups_of(pid, proc)
    candidates = [root / "memory" / cgroups["memory"].lstrip("/") / "memory.oom_control"] if "memory" in cgroups else []
    if "" in cgroups:
        candidates.append(root / cgroups[""].lstrip("/") / "memory.events")
    return next((c for c in candidates if c.exists()), None)


def read_oom_kills(counter_file: Path) -> int | None:
    return files.keyed_int(counter_file, "oom_kill")


def watch_file(counter: Path) -> OomWatch:
    """Watch a known counter file (a loop's own cgroup, ``multitrigger.cgroups``)."""
    return OomWatch(counter, read_oom_kills(counter) or 0)


def watch(pid: int, root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> OomWatch | None:
    """Start watching ``pid``'s memory cgroup; ``None`` when it has no readable OOM counter."""
    counter = memory_counter_file(pid, root, proc)
    if counter is None or (count := read_oom_kills(counter)) is None:
        return None
    return OomWatch(counter, count)
