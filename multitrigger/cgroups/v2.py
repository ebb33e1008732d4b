"""
cgroup v2: one unified tree; the supervisor manages the subtree systemd delegated to it.

Where loops go. The supervisor's own cgroup comes from ``/proc/self/cgroup`` (``0::<path>``):

* with ``DelegateSubgroup=supervisor`` (systemd >= 254) systemd already started us in the leaf
  ``<unit>/supervisor``: the delegated cgroup is its parent;
* with plain ``Delegate=yes`` we are in ``<unit>`` itself, which then holds processes, and the "no
  internal processes" rule forbids enabling controllers for children of a cgroup with processes of
  its own (``cgroup.subtree_control`` fails with EBUSY). So every process of ``<unit>`` (the
  supervisor, prestarted zygotes) first moves into a new leaf ``<unit>/supervisor``.

Then the controllers the limits need are enabled in the delegated cgroup's ``subtree_control``
(delegation makes that file ours) and each loop gets ``<unit>/loop-<name>``. The unit's own cgroup's
attributes (``memory.max``...) are systemd's: never written. Zygotes stay in ``supervisor/``, so no
team's limit ever applies to them.

Files: ``memory.max``, ``memory.high`` (throttles and reclaims, never kills), ``memory.oom.group=1``
(an OOM kill takes the whole loop, not one process of it), ``cpu.max`` ("quota period" in µs),
``pids.max``; ``memory.events`` (``oom_kill``), ``pids.events`` (``max``), ``cpu.stat``
(``usage_usec``); ``cgroup.kill`` (Linux >= 5.14; SIGKILLs the subtree, race-free against forks;
older kernels: freeze with ``cgroup.freeze``, SIGKILL each pid, thaw, until empty, as v1 does:
``multitrigger.cgroups.kill``) and ``cgroup.events`` (``populated 0``)
before ``rmdir``.

``root`` may be a fake tree (a plain directory with the files): a write then simply creates the
file, which is how tests check limits on a host whose memory/cpu/pids are bound to v1.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from multitrigger.cgroups import CgroupUnavailable, Usage, files, loop_dir_name
from multitrigger.cgroups.kill import kill_until_empty

if TYPE_CHECKING:
    from multitrigger.config import Limits

LEAF = "supervisor"
CPU_PERIOD_US = 100_000


class V2Hierarchy:
    version = 2

    def __init__(self, root: Path, controllers: frozenset[str], own: str | None = None) -> None:
        own = files.cgroups_of().get("", "/") if own is None else own
        here = root / own.lstrip("/")
        self.root = root
        self.base = here.parent if here.name == LEAF and here != root else here  # the delegated cgroup
        if self.base == root:
            raise CgroupUnavailable(f"the supervisor runs in the root cgroup of {root}",
                                    "run it in a cgroup of its own (a systemd service with Delegate=yes)")
        if not files.writable_dir(self.base) or not os.access(self.base / "cgroup.procs", os.W_OK):
            raise CgroupUnavailable(
                f"the supervisor's cgroup {self.base} is not writable (not delegated)",
                "run it as a systemd service with Delegate=yes (systemd/multitrigger.service), "
                "or as root with a writable cgroup2 mount")
        self.missing: dict[str, tuple[str, str]] = {}
        available = set((files.read(self.base / "cgroup.controllers") or "").split())
        for controller in sorted(controllers - available):
            self.missing[controller] = (
                f"cgroup v2 controller {controller} is not available in {self.base}",
                f"add Delegate=yes (or Delegate={controller}) to the unit; on a hybrid host the controller "
                "is bound to cgroup v1 (boot with systemd.unified_cgroup_hierarchy=1)")
        self.controllers = controllers & available
        self._into_leaf()
        self.enable(self.controllers)

    def _into_leaf(self) -> None:
        """Empty the delegated cgroup into ``supervisor/`` (no internal processes); idempotent."""
        inside = files.pids(self.base / "cgroup.procs")
        if not inside:
            return
        leaf = self.base / LEAF
        leaf.mkdir(exist_ok=True)
        for pid in inside:
            try:
                files.write(leaf / "cgroup.procs", pid)
            except ProcessLookupError:
                pass

    def enable(self, controllers: frozenset[str] | set[str]) -> None:
        """``+cpu +memory ...`` in the delegated cgroup's ``subtree_control`` (one write: all or none)."""
        if controllers:
            files.write(self.base / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(controllers)))

    def create(self, name: str) -> V2Cgroup:
        path = self.base / loop_dir_name(name)
        path.mkdir(exist_ok=True)
        group = V2Cgroup(name, path)
        if group.pids():
            group.kill_all()  # a predecessor's leftovers
        return group

    def close(self) -> None:
        """Loops' cgroups are gone; ``supervisor/`` and the unit's cgroup stay (we are in them)."""


@dataclass
class V2Cgroup:
    name: str
    path: Path

    @property
    def join_files(self) -> tuple[str, ...]:
        return (str(self.path / "cgroup.procs"),)

    @property
    def oom_counter_file(self) -> Path | None:
        return self.path / "memory.events"

    def set_limits(self, limits: Limits) -> None:
        settings: list[tuple[str, str | int, bool]] = [  # (file, value, needed)
            ("memory.max", limits.memory or "max", limits.memory is not None),
            ("memory.high", limits.memory_high or "max", limits.memory_high is not None),
            ("memory.oom.group", 1, limits.memory is not None),
            ("cpu.max", f"{round(limits.cpu * CPU_PERIOD_US)} {CPU_PERIOD_US}" if limits.cpu else f"max {CPU_PERIOD_US}",
             limits.cpu is not None),
            ("pids.max", limits.pids or "max", limits.pids is not None),
        ]
        for name, value, needed in settings:
            if needed or (self.path / name).exists():
                files.write(self.path / name, value)

    def pids(self) -> set[int]:
        return files.pids(self.path / "cgroup.procs")

    def populated(self) -> bool:
        value = files.read_keyed(self.path / "cgroup.events").get("populated")
        return bool(self.pids()) if value is None else value == "1"

    def usage(self) -> Usage:
        usec = files.keyed_int(self.path / "cpu.stat", "usage_usec")
        return Usage(
            memory_bytes=files.read_int(self.path / "memory.current"),
            cpu_seconds=usec / 1e6 if usec is not None else None,
            pids=files.read_int(self.path / "pids.current"),
            oom_kills=files.keyed_int(self.path / "memory.events", "oom_kill"),
            pids_refused=files.keyed_int(self.path / "pids.events", "max"),
        )

    def kill_all(self, timeout: float = 5.0) -> int:
        inside = self.pids() - {os.getpid()}
        if not inside:
            return 0
        if not (self.path / "cgroup.kill").exists():  # Linux < 5.14
            return self.freeze_and_kill(timeout)
        files.write(self.path / "cgroup.kill", 1)
        files.wait_for(lambda: not self.populated(), timeout)
        return len(inside)

    def freeze_and_kill(self, timeout: float = 5.0) -> int:
        """Without ``cgroup.kill``: freeze, SIGKILL every pid in ``cgroup.procs``, thaw, until empty (as v1)."""
        return kill_until_empty(self.pids, self._freeze, lambda: files.write(self.path / "cgroup.freeze", 0), timeout)

    def _freeze(self) -> None:
        """``cgroup.freeze`` 1, then wait for ``cgroup.events`` to say ``frozen 1`` (a fake tree has no such line)."""
        files.write(self.path / "cgroup.freeze", 1)
        files.wait_for(lambda: files.read_keyed(self.path / "cgroup.events").get("frozen", "1") == "1", 1.0)

    def remove(self) -> None:
        self.kill_all()
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno == errno.ENOTEMPTY:
                return  # a fake tree: its files are plain files (a real cgroup says EBUSY)
            raise
