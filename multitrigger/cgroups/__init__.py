"""
A cgroup per loop: memory, CPU and pids limits, usage and OOM counts, and a kill that leaves
nothing behind. cgroup v2 (``v2``) and v1 (``v1``) behind one narrow interface.

What a loop's cgroup does:

* **create** ``loop-<name>`` under the supervisor's own subtree, **set limits**
  (``Limits``: memory, memory_high, cpu, pids);
* **place** a process: the loop writes its *own* pid into ``cgroup.procs`` (``join``), first thing
  after the fork, before any user code (memory is charged to the cgroup that first touches a page);
* **read usage** and **OOM kills** (``usage``; ``oom_counter_file`` for ``multitrigger.oom``);
* **kill everything inside** (``kill_all``: ``cgroup.kill`` on v2; freeze, SIGKILL every pid,
  thaw on v1): whatever a trigger started, in any session, dies with its loop;
* **remove** it once it is empty.

Why cgroupfs is written directly, not through a tool or a library:

* loops are *forked* from zygotes, so a loop must join its cgroup itself, as its first act after
  the fork: an exec wrapper such as ``cgexec`` (Debian's cgroup-tools) can only place a process
  it execs;
* systemd's delegation model (``Delegate=yes``) expects a service to manage its delegated subtree
  through the filesystem, not through systemd or a cgroup daemon;
* the seeds' design card names a "cgroup-tools wrapper (pycgroup)", but no ``pycgroup`` exists on
  PyPI, and the wrappers that do exist (cgroupspy, cgroup-utils) are v1-only and unmaintained.

``open_hierarchy`` picks the backend from the cgroup root (``[supervisor] cgroup_root``, default
``/sys/fs/cgroup``; tests point it at a fake tree or a private cgroup2 mount): a unified (v2) mount
if ``cgroup.controllers`` is there, else the per-controller v1 hierarchies (hybrid hosts, like this
project's test machine, have memory/cpu/pids on v1). ``supervisor_cgroups`` makes the cgroups of
every loop that has limits, and turns a host that cannot apply them into start-up errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the package stays importable without pydantic (``join`` runs in fresh forks)
    from multitrigger.config import Limits

__all__ = ["CgroupUnavailable", "Hierarchy", "LoopCgroup", "Usage", "open_hierarchy"]

DEFAULT_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(Exception):
    """This host cannot give loops cgroups (or not this controller): what is wrong, and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem} — {fix}")
        self.problem, self.fix = problem, fix


@dataclass(frozen=True)
class Usage:
    memory_bytes: int | None  # memory.current / memory.usage_in_bytes
    cpu_seconds: float | None  # cpu.stat usage_usec / cpuacct.usage
    pids: int | None  # pids.current
    oom_kills: int | None  # memory.events / memory.oom_control oom_kill
    pids_refused: int | None  # pids.events max: forks refused at pids.max


class LoopCgroup(Protocol):
    """One loop's cgroup (on v1: one directory per hierarchy it uses)."""

    name: str
    path: Path  # where to look (v1: the memory hierarchy's directory, else the first one)

    @property
    def join_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files a loop writes its own pid into (``cgroups.join``)."""

    @property
    def oom_counter_file(self) -> Path | None:
        """The file with the ``oom_kill`` line (read by ``multitrigger.oom``)."""

    def set_limits(self, limits: Limits) -> None:
        """Apply ``limits`` (unset ones are lifted). Raises ``OSError``."""

    def pids(self) -> set[int]:
        """Every process inside now."""

    def usage(self) -> Usage: ...

    def kill_all(self, timeout: float = 5.0) -> int:
        """SIGKILL everything inside and wait until it is empty; returns how many were killed."""

    def remove(self) -> None:
        """Kill what is left and remove the cgroup (no error if already gone)."""


class Hierarchy(Protocol):
    version: int
    #: Controllers wanted but not usable here: {controller: (problem, fix)}.
    missing: dict[str, tuple[str, str]]

    def create(self, name: str) -> LoopCgroup:
        """Make (or reuse, emptied) the cgroup ``loop-<name>``. Raises ``OSError``."""

    def close(self) -> None:
        """Remove the directories this hierarchy made (its loops' cgroups are removed first)."""


def open_hierarchy(root: Path, instance: str, controllers: frozenset[str], *, own: str | None = None) -> Hierarchy:
    """The backend for ``root``. ``instance`` keeps supervisors apart on v1 (v2 is per unit);
    ``own`` overrides the supervisor's cgroup path (default: ``/proc/self/cgroup``)."""
    from multitrigger.cgroups import v1, v2

    if (root / "cgroup.controllers").exists():
        return v2.V2Hierarchy(root, controllers, own=own)
    if any((root / c).is_dir() for c in v1.HIERARCHIES):
        return v1.V1Hierarchy(root, instance, controllers)
    raise CgroupUnavailable(f"no cgroup filesystem at {root}",
                            "mount cgroupfs there, or set [supervisor] cgroup_root to where it is mounted")


def loop_dir_name(loop: str) -> str:
    return f"loop-{loop}"
