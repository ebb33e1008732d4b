"""
The supervisor's loop cgroups: one per loop that has ``[loops.<name>.limits]``, made at start-up.

A limit this host cannot apply stops start-up with a ``ConfigError`` naming the loop, the limit
and the fix (``loops.team_a.limits.memory: cgroup v2 controller memory is not available in …
— add Delegate=yes …``). With ``best_effort = true`` the loop starts anyway, without what could
not be applied, and the supervisor says so at ERROR level at start-up (and ``lost`` keeps it for
health surfaces). Loops without limits get no cgroup (``multitrigger.cgroups.leftovers`` then
cleans up after them as far as it can).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from multitrigger.cgroups import CgroupUnavailable, Hierarchy, LoopCgroup, open_hierarchy
from multitrigger.config import Config, ConfigError, Limits, Problem

log = structlog.get_logger(__name__)

#: Which limit key needs which controller.
_KEYS = {"memory": "memory", "memory_high": "memory", "cpu": "cpu", "pids": "pids"}


def instance_name(state_dir: Path) -> str:
    """Stable per supervisor home: a restarted supervisor finds (and empties) its old cgroups."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


@dataclass
class LoopCgroups:
    groups: dict[str, LoopCgroup] = field(default_factory=dict)
    hierarchy: Hierarchy | None = None
    lost: dict[str, list[str]] = field(default_factory=dict)  # best_effort loop → what it runs without
    applied: dict[str, Limits] = field(default_factory=dict)  # loop → the limits its cgroup has

    @classmethod
    def open(cls, config: Config, root: Path, instance: str, own: str | None = None) -> LoopCgroups:
        """Make every limited loop's cgroup and set its limits; raise ``ConfigError`` if one cannot."""
        limited = {name: loop.limits for name, loop in config.loops.items() if loop.limits is not None}
        made = cls()
        if not limited:
            return made
        wanted = frozenset().union(*(limits.controllers for limits in limited.values()))
        try:
            made.hierarchy = open_hierarchy(root, instance, wanted, own=own)
            missing = made.hierarchy.missing
        except (CgroupUnavailable, OSError) as err:
            problem, fix = (err.problem, err.fix) if isinstance(err, CgroupUnavailable) else (
                f"cannot set up cgroups under {root}: {err}", "make the cgroup filesystem writable for the supervisor")
            missing = {c: (problem, fix) for c in ("memory", "cpu", "pids", "*")}
        problems: list[Problem] = []
        for name, limits in limited.items():
            problems += made._make(name, limits, missing)
        if problems:
            made.close()
            raise ConfigError(config.source, problems)
        return made

    def _make(self, name: str, limits: Limits, missing: dict[str, tuple[str, str]]) -> list[Problem]:
        gaps = [(key, *missing[_KEYS[key]]) for key in _KEYS
                if getattr(limits, key) is not None and _KEYS[key] in missing]
        group: LoopCgroup | None = None
        if self.hierarchy is not None and "*" not in missing:
            try:
                group = self.hierarchy.create(name)
                self.applied[name] = _without(limits, {key for key, *_ in gaps})
                group.set_limits(self.applied[name])
            except OSError as err:
                gaps = [("limits", f"cannot create or configure the cgroup of loop {name!r}: {err}",
                         "make the cgroup filesystem writable for the supervisor (root, or Delegate=yes)")]
                _discard(group)
                group = None
        if gaps and not limits.best_effort:
            return [Problem(f"loops.{name}.limits" + ("" if key == "limits" else f".{key}"), problem,
                            f"{fix}; or set best_effort = true to start without it") for key, problem, fix in gaps]
        if gaps:
            self.lost[name] = [f"{key}: {problem}" for key, problem, _fix in gaps]
            log.error("LOOP RUNS WITHOUT ITS LIMITS (best_effort = true)", loop=name,
                      not_applied=self.lost[name], cgroup=str(group.path) if group else None)
        if group is not None:
            self.groups[name] = group
            log.info("loop cgroup ready", loop=name, cgroup=str(group.path), limits=limits.model_dump(exclude_none=True),
                     join=list(group.join_files))
        return []

    def get(self, name: str) -> LoopCgroup | None:
        return self.groups.get(name)

    def for_slot(self, name: str, loop: str, limits: Limits | None) -> LoopCgroup | None:
        """The cgroup of slot ``name`` of loop ``loop``: the loop's own, or, for another process of
        the same loop (a bundle version's, ``supervisor.bundle_versions``), one of its own with the
        loop's limits, made now (the host was checked at start-up)."""
        if name in self.groups or limits is None or loop not in self.groups:
            return self.groups.get(name)
        assert self.hierarchy is not None
        group = None
        try:
            group = self.hierarchy.create(name)
            group.set_limits(self.applied[loop])
        except OSError as err:
            _discard(group)
            log.error("could not make the cgroup of a loop process; it runs without limits", loop=loop, slot=name, error=str(err))
            return None
        self.groups[name] = group
        return group

    def close(self) -> None:
        """Kill whatever is still inside any loop's cgroup and remove them all (idempotent per cgroup)."""
        for name, group in self.groups.items():
            try:
                group.remove()
            except OSError as err:
                log.error("could not remove loop cgroup", loop=name, cgroup=str(group.path), error=str(err))
        self.groups.clear()
        if self.hierarchy is not None:
            self.hierarchy.close()


def _without(limits: Limits, keys: set[str]) -> Limits:
    return limits.model_copy(update={key: None for key in keys}) if keys else limits


def _discard(group: LoopCgroup | None) -> None:
    """Remove a cgroup made but not configured (no process is in it yet), so none is left behind."""
    if group is not None:
        try:
            group.remove()
        except OSError as err:
            log.warning("could not remove an unconfigured loop cgroup", cgroup=str(group.path), error=str(err))
