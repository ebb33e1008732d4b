"""Which bundles this instance serves, and the capacity share of each of its loops. Pure: no DB.

- No ``--bundles`` (and no ``[supervisor] bundles``): every bundle except those of loops with
  ``level = "dedicated"``, plus triggers whose bundle is unknown (an asset watched by DAGs of
  several bundles, a DAG row that is gone): they belong to the default loop, which is never dedicated.
- ``--bundles team_a`` (or ``[supervisor] bundles = ["team_a"]``): exactly those bundles, whatever
  their loops' levels; nothing of unknown bundle. Loops with none of them are not started.

A trigger's bundle for claiming is the one routing uses (``multitrigger.routing``): task instance
→ DAG → ``dag.bundle_name``; callback → ``callback.bundle_name``; asset watcher → the one bundle of
the DAGs scheduled on its assets (none or several: unknown, so only an instance serving the
default loop claims it). Which loop a served bundle goes to is ``Config.loop_for_bundle``.

Capacity shares: a loop with ``capacity = N`` holds at most N triggers of its bundles here;
``ClaimGroup`` is one such share (or the uncapped rest), as a ``Bundles`` set that
``supervisor.claims`` turns into SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from multitrigger.bundles import Bundles
from multitrigger.config import DEFAULT_LOOP, Config


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
        loops = tuple(name for name in config.loops if not (config.bundles_of(name) & served).empty)
        capped = [ClaimGroup(n, config.bundles_of(n) & served, config.loops[n].capacity)
                  for n in loops if config.loops[n].capacity is not None]
        rest = served
        for group in capped:
            rest = rest & ~group.bundles
        groups = tuple(capped) + ((ClaimGroup(None, rest, None),) if not rest.empty else ())
        return cls(served, loops, groups)


def served_config(config: Config, scope: Scope) -> Config:
    """*config* with only the loops this instance runs (and always the default loop, lazily
    started), serving ``scope.served``: ``Config.loop_for_bundle`` sends nothing else anywhere."""
    kept = {name: lp for name, lp in config.loops.items() if name in scope.loops or name == DEFAULT_LOOP}
    return dataclasses.replace(config, loops=kept, served=scope.served)
