"""
cgroup v1: one directory per hierarchy (memory, cpu, cpuacct, pids, freezer), all named alike.

Layout: ``<root>/<hierarchy>/<the supervisor's own path there>/multitrigger/<instance>/loop-<name>``.
Nesting under the supervisor's own cgroup keeps every limit above it (a container's, a CI
runner's) in force; ``<instance>`` (from the supervisor's state directory) keeps two supervisors,
or two test runs, on one host apart, and lets a restarted supervisor find and empty the cgroups
a killed predecessor left.

Files: ``memory.limit_in_bytes`` (memory), ``memory.soft_limit_in_bytes`` (memory_high: v1 has no
throttling limit; the soft limit only makes the loop the first to be reclaimed under host memory
pressure), ``memory.oom_control`` (``oom_kill``), ``cpu.cfs_quota_us``/``cpu.cfs_period_us``,
``cpuacct.usage``, ``pids.max``/``pids.events``. v1's OOM killer kills one process, not the group:
``kill_all`` on the loop's death takes the rest.

Kill everything inside: freeze (``freezer.state``), so nothing forks while we read the list,
SIGKILL every pid in ``cgroup.procs``, thaw (frozen tasks die on thaw), repeat until empty.
Without a freezer hierarchy the same without the freeze, repeated: a fork between reading and
killing is caught by the next pass (and bounded by ``pids.max``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from multitrigger.cgroups import CgroupUnavailable, Usage, loop_dir_name
from multitrigger.cgroups import files
from multitrigger.cgroups.kill import kill_until_empty

if TYPE_CHECKING:
    from multitrigger.config import Limits

#: The hierarchies a loop's cgroup may use: a limit's controller, plus usage and kill-all helpers.
HIERARCHIES = ("memory", "cpu", "cpuacct", "pids", "freezer")
CFS_PERIOD_US = 100_000
_UNLIMITED = -1


def _mount_dir(root: Path, controller: str) -> Path | None:
    """The directory of the hierarchy holding ``controller`` (``cpu`` or ``cpu,cpuacct``)."""
    if (root / controller / "cgroup.procs").exists():
        return root / controller
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        if controller in entry.name.split(",") and (entry / "cgroup.procs").exists():
            return entry
    return None


class V1Hierarchy:
    version = 1

    def __init__(self, root: Path, instance: str, controllers: frozenset[str],
                 own: dict[str, str] | None = None) -> None:
        self.root = root
        own = files.cgroups_of() if own is None else own
        self.missing: dict[str, tuple[str, str]] = {}
        self.bases: dict[str, Path] = {}  # hierarchy → .../multitrigger/<instance>
        seen: set[Path] = set()
        for controller in HIERARCHIES:
            mount = _mount_dir(root, controller)
            if mount is None or mount.resolve() in seen:
                if mount is None and controller in controllers:
                    self.missing[controller] = (f"cgroup v1 controller {controller} is not mounted under {root}",
                                                f"mount it (mount -t cgroup -o {controller} cgroup {root}/{controller}) "
                                                "or boot with cgroup v2")
                continue
            seen.add(mount.resolve())
            parent = mount / own.get(controller, "/").lstrip("/")
            if not files.writable_dir(parent):
                if controller in controllers:
                    self.missing[controller] = (f"the supervisor's {controller} cgroup {parent} is not writable",
                                                "run multitrigger as root, or give its user that cgroup "
                                                "(cgroup v1 has no delegation; prefer cgroup v2 with Delegate=yes)")
                continue
            self.bases[controller] = parent / "multitrigger" / instance
        if not self.bases:
            raise CgroupUnavailable(f"no writable cgroup v1 hierarchy under {root}",
                                    "run multitrigger as root with cgroupfs mounted read-write, or use cgroup v2 "
                                    "with Delegate=yes in the unit")

    def create(self, name: str) -> V1Cgroup:
        dirs = {controller: base / loop_dir_name(name) for controller, base in self.bases.items()}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        group = V1Cgroup(name, dirs)
        group.kill_all()  # a predecessor's leftovers (a supervisor killed with -9)
        return group

    def close(self) -> None:
        for base in self.bases.values():
            for path in (base, base.parent):  # <instance>, then multitrigger/ if no one else uses it
                try:
                    path.rmdir()
                except OSError:
                    break


@dataclass
class V1Cgroup:
    name: str
    dirs: dict[str, Path]  # hierarchy → this loop's directory in it
    path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.path = self.dirs.get("memory") or next(iter(self.dirs.values()))

    @property
    def join_files(self) -> tuple[str, ...]:
        return tuple(str(d / "cgroup.procs") for d in self.dirs.values())

    @property
    def oom_counter_file(self) -> Path | None:
        return self.dirs["memory"] / "memory.oom_control" if "memory" in self.dirs else None

    def set_limits(self, limits: Limits) -> None:
        if memory := self.dirs.get("memory"):
            files.write(memory / "memory.limit_in_bytes", limits.memory or _UNLIMITED)
            files.write(memory / "memory.soft_limit_in_bytes", limits.memory_high or _UNLIMITED)
        if cpu := self.dirs.get("cpu"):
            files.write(cpu / "cpu.cfs_period_us", CFS_PERIOD_US)
            files.write(cpu / "cpu.cfs_quota_us", round(limits.cpu * CFS_PERIOD_US) if limits.cpu else _UNLIMITED)
        if pids := self.dirs.get("pids"):
            files.write(pids / "pids.max", limits.pids or "max")

    def pids(self) -> set[int]:
        return set().union(*(files.pids(d / "cgroup.procs") for d in self.dirs.values()))

    def usage(self) -> Usage:
        # cpuacct is often co-mounted with cpu (``cpu,cpuacct``): then only the cpu entry is kept.
        memory, pids = self.dirs.get("memory"), self.dirs.get("pids")
        cpuacct = self.dirs.get("cpuacct") or self.dirs.get("cpu")
        ns = files.read_int(cpuacct / "cpuacct.usage") if cpuacct else None
        return Usage(
            memory_bytes=files.read_int(memory / "memory.usage_in_bytes") if memory else None,
            cpu_seconds=ns / 1e9 if ns is not None else None,
            pids=files.read_int(pids / "pids.current") if pids else None,
            oom_kills=files.keyed_int(memory / "memory.oom_control", "oom_kill") if memory else None,
            pids_refused=files.keyed_int(pids / "pids.events", "max") if pids else None,
        )

    def kill_all(self, timeout: float = 5.0) -> int:
        if not self.pids():  # nothing to freeze (every create, reap and remove asks)
            return 0
        freezer = self.dirs.get("freezer")
        if freezer is None:
            return kill_until_empty(self.pids, None, None, timeout)
        return kill_until_empty(self.pids, lambda: _freeze(freezer),
                                lambda: files.write(freezer / "freezer.state", "THAWED"), timeout)

    def remove(self) -> None:
        self.kill_all()
        for path in self.dirs.values():
            try:
                path.rmdir()
            except FileNotFoundError:
                pass


def _freeze(freezer: Path) -> None:
    files.write(freezer / "freezer.state", "FROZEN")
    files.wait_for(lambda: (files.read(freezer / "freezer.state") or "").strip() != "FREEZING", 1.0)
