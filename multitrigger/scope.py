"""Which bundles this instance serves, and the capacity share of each of its loops. Pure: no DB.

- No ``--bundles`` (and no ``[supervisor] bundles``): every bundle except those of loops with
  ``level = "dedicated"``, plus triggers whose bundle is unknown (asset watchers, a DAG row that
  is gone): they belong to the default loop, which is never dedicated.
- ``--bundles team_a`` (or ``[supervisor] bundles = ["team_a"]``): exactly those bundles, whatever
  their loops' levels; nothing of unknown bundle. Loops with none of them are not started.

A trigger's bundle for claiming is the one routing uses (``multitrigger.routing``): task instance
→ DAG → ``dag.bundle_name``; callback → ``callback.bundle_name``; an asset watcher's counts as
unknown (several DAGs may watch one asset), so only an instance serving the default loop claims it.

Capacity shares: a loop with ``capacity = N`` holds at most N triggers of its bundles here;
``ClaimGroup`` is one such share (or the uncapped rest), as a ``Bundles`` set that
``supervisor.claims`` turns into SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from multitrigger.config import DEFAULT_LOOP, Config, LoopConfig


@dataclass(frozen=True)
class Bundles:
    """A set of bundle names that may be cofinite: ``names``, or (``complement``) every bundle but
    ``names``; ``unknown``: also the triggers whose bundle is unknown. Closed under & | ~."""

    names: frozenset[str] = frozenset()
    complement: bool = False
    unknown: bool = False

    @classmethod
    def everything(cls) -> Bundles:
        return cls(frozenset(), complement=True, unknown=True)

    def __contains__(self, bundle: object) -> bool:
        if bundle is None:
            return self.unknown
        return (bundle in self.names) != self.complement

    def __invert__(self) -> Bundles:
        return Bundles(self.names, not self.complement, not self.unknown)

    def __and__(self, other: Bundles) -> Bundles:
        a, b = self, other
        match (a.complement, b.complement):
            case (False, False):
                names, complement = a.names & b.names, False
            case (False, True):
                names, complement = a.names - b.names, False
            case (True, False):
                names, complement = b.names - a.names, False
            case _:
                names, complement = a.names | b.names, True
        return Bundles(frozenset(names), complement, a.unknown and b.unknown)

    def __or__(self, other: Bundles) -> Bundles:
        return ~(~self & ~other)

    @property
    def empty(self) -> bool:
        return not self.complement and not self.names and not self.unknown

    def describe(self) -> str:
        if self.complement:
            but = f" but {', '.join(sorted(self.names))}" if self.names else ""
            return f"every bundle{but}" + ("" if self.unknown else " (not unknown ones)")
        listed = ", ".join(sorted(self.names)) or "no bundle"
        return listed + (" and unknown ones" if self.unknown else "")


@dataclass(frozen=True)
class ClaimGroup:
    """Triggers claimed together: one loop's capacity share (``capacity`` set) or the rest."""

    loop: str | None  # None: the uncapped rest
    bundles: Bundles
    capacity: int | None


@dataclass(frozen=True)
class Scope:
    """What this instance serves: a ``Bundles`` set, the loops it runs, the claim groups."""

    served: Bundles
    loops: tuple[str, ...]
    groups: tuple[ClaimGroup, ...]

    @classmethod
    def of(cls, config: Config, only: Iterable[str] | None = None) -> Scope:
        """The scope of *config* for an instance started with *only* (``--bundles``); without it,
        ``[supervisor] bundles``; without that, every bundle of a loop that is not dedicated."""
        only = tuple(only) if only else (tuple(config.supervisor.bundles) if config.supervisor.bundles else None)
        if only is not None:
            served = Bundles(frozenset(only))
        else:
            served = ~Bundles(frozenset(b for lp in config.loops.values() if lp.level == "dedicated" for b in lp.bundles))
        loops = tuple(name for name, lp in config.loops.items() if not (loop_bundles(lp, config) & served).empty)
        capped = [ClaimGroup(n, loop_bundles(config.loops[n], config) & served, config.loops[n].capacity)
                  for n in loops if config.loops[n].capacity is not None]
        rest = served
        for group in capped:
            rest = rest & ~group.bundles
        groups = tuple(capped) + ((ClaimGroup(None, rest, None),) if not rest.empty else ())
        return cls(served, loops, groups)


def loop_bundles(loop: LoopConfig, config: Config) -> Bundles:
    """The bundles routed to *loop*: its list; for the default loop every bundle no other loop
    lists (shared entries' bundles included) and unknown ones."""
    if loop.name != DEFAULT_LOOP:
        return Bundles(loop.bundles)
    return ~Bundles(frozenset(b for lp in config.loops.values() for b in lp.bundles))


def served_config(config: Config, scope: Scope) -> Config:
    """*config* with only the loops this instance runs (and always the default loop, lazily
    started); the bundles of the others are ``unserved`` so no default loop takes them."""
    kept = {name: lp for name, lp in config.loops.items() if name in scope.loops or name == DEFAULT_LOOP}
    unserved = frozenset(b for name, lp in config.loops.items() if name not in kept for b in lp.bundles)
    return dataclasses.replace(config, loops=kept, unserved=unserved)
