"""
Versioned bundles: the triggers of DAG runs pinned to one bundle version run that version's code.

A worker runs a task with the code of the bundle version its DAG run is pinned to
(``dag_run.bundle_version``): ``DagBundlesManager().get_bundle(name, version)``, ``initialize()``,
then ``path`` on ``sys.path``, holding a ``BundleVersionLock`` so stale-version cleanup leaves the
checkout alone (Airflow 3.3.2 ``task_runner``; ``GitDagBundle`` from apache-airflow-providers-git
1.0.1 clones into ``<dag_bundle_storage_path>/<bundle>/versions/<sha>``). The same here, per
version in use:

* **Checkout in the supervisor.** It has the configuration and the credentials (the bundle's
  ``git_conn_id`` through the supervisor's secrets backends); a loop gets a directory on its
  ``sys.path`` and nothing else. The checkout may be slow (a clone), so it runs on a lane of its
  own per bundle (one team's unreachable git server delays no other bundle's versions), and a
  trigger waits at most ``CHECKOUT_TIMEOUT`` for it: past that, or if it fails, every trigger
  waiting for that version fails with the reason.
* **One process per (loop, bundle, version).** Two versions of one module cannot share a process
  (``sys.modules``), so each version gets a child slot, a ``LoopSlot`` with the loop's own
  ``LoopConfig`` (interpreter, zygote, restart and poison policy, allow-list already applied by the
  ``Router``) under the name ``<loop>[<bundle>@<sha12>]``, whose ``sys.path`` is the loop's plus
  the checkout. It lives in the supervisor's slot table, so starting (forked from the loop's
  zygote), restarting, hang checks, output budgets and shutdown are the supervisor's, unchanged.
  A loop with ``limits`` gives each version process a cgroup of its own with the same limits
  (``cgroups.loops.LoopCgroups.for_slot``): per process, like the loop's own.
* **Ended with its last trigger.** A version slot with no trigger for ``IDLE_LINGER`` seconds is
  sent SIGTERM and, once its process is gone, removed and its lock released. A trigger of that
  version arriving meanwhile simply lands in it again.
* **A cap.** At most ``max_bundle_versions`` (per loop, default 4) versions of one bundle are in
  use at once (checking out, or holding a trigger); a trigger of one more version fails on its task
  with the reason. An idle version does not count, and gives way at once.

Unversioned bundles (``LocalDagBundle``, or ``bundle_version`` NULL) never come here: they run in
their loop's own slot, as before.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from multitrigger.config import LoopConfig
from multitrigger.routing import Refusal, Route
from multitrigger.supervisor.lanes import Done, Lane
from multitrigger.supervisor.slot import LoopSlot
from multitrigger.supervisor.trigger_path import TriggerPaths

log = structlog.get_logger(__name__)

#: A trigger waits at most this long (s) for its bundle version's checkout before it fails.
CHECKOUT_TIMEOUT = 300.0
#: A version slot with no trigger for this long (s) is ended (a re-deferral soon after reuses it).
IDLE_LINGER = 5.0


@dataclass(frozen=True)
class Checkout:
    """A bundle version on disk, and the lock that keeps stale-version cleanup off it."""

    path: Path
    lock: Any  # airflow.dag_processing.bundles.base.BundleVersionLock

    def release(self) -> None:
        self.lock.release()


def checkout(bundle: str, version: str) -> Checkout:
    """On a bundle lane, in the supervisor: that version on disk, with the bundle's own API."""
    from airflow.dag_processing.bundles.base import BundleVersionLock
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    instance = DagBundlesManager().get_bundle(bundle, version)
    instance.initialize()
    lock = BundleVersionLock(bundle_name=bundle, bundle_version=version)
    lock.acquire()
    return Checkout(Path(instance.path), lock)


def slot_name(loop: str, bundle: str, version: str) -> str:
    return f"{loop}[{bundle}@{version[:12]}]"


@dataclass
class _Version:
    loop: str
    bundle: str
    version: str
    slot: LoopSlot
    asked_at: float
    checkout: Checkout | None = None  # None: still checking out
    idle_since: float | None = None
    stopping_pid: int | None = None

    @property
    def in_use(self) -> bool:
        return self.checkout is None or bool(self.slot.assigned)


class BundleVersions:
    """The version slots of every loop: made on demand, in ``slots`` beside the loops' own."""

    def __init__(self, loops: Mapping[str, LoopConfig], slots: dict[str, LoopSlot], paths: TriggerPaths, *,
                 make_slot: Callable[[LoopConfig, str], LoopSlot], fail: Callable[[int, list[str]], None],
                 forget: Callable[[str], None], wake: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic,
                 checkout: Callable[[str, str], Checkout] = checkout) -> None:
        self._loops = loops
        self._slots = slots
        self._paths = paths
        self._make_slot = make_slot
        self._fail = fail
        self._forget = forget
        self._wake = wake
        self._clock = clock
        self._checkout = checkout
        self._versions: dict[str, _Version] = {}  # by slot name
        self._lanes: dict[str, Lane] = {}  # by bundle

    # -- what the supervisor asks ---------------------------------------------------------------

    def slot_for(self, route: Route) -> str | Refusal:
        """The slot that runs ``route``'s trigger: its loop's own, or its version's (made on demand)."""
        if route.version is None or route.bundle is None:
            return route.loop
        name = slot_name(route.loop, route.bundle, route.version)
        if name not in self._versions:
            if (refusal := self._over_cap(route)) is not None:
                return refusal
            self._begin(name, route)
        return name

    def owns(self, name: str) -> bool:
        return name in self._versions

    def loop_of(self, name: str) -> str:
        """The configured loop a slot belongs to: its own name, or a version slot's loop."""
        version = self._versions.get(name)
        return version.loop if version is not None else name

    def may_start(self, name: str) -> bool:
        """Not a version slot, or one whose checkout is on disk."""
        version = self._versions.get(name)
        return version is None or version.checkout is not None

    def next_deadline(self, now: float) -> float:
        deadlines = [v.asked_at + CHECKOUT_TIMEOUT if v.checkout is None else
                     v.idle_since + IDLE_LINGER if v.idle_since is not None and v.stopping_pid is None else math.inf
                     for v in self._versions.values()]
        return min(deadlines, default=math.inf)

    def run_completions(self) -> None:
        for lane in self._lanes.values():
            lane.run_completions()

    def tend(self, now: float) -> None:
        """Time out checkouts, end idle version processes, remove ended ones."""
        for name, version in list(self._versions.items()):
            if version.checkout is None:
                if now - version.asked_at > CHECKOUT_TIMEOUT:
                    self._give_up(name, f"checkout did not finish within {CHECKOUT_TIMEOUT:g}s")
            elif version.slot.assigned:
                version.idle_since = None
            elif version.idle_since is None:
                version.idle_since = now
            elif now - version.idle_since >= IDLE_LINGER:
                self._retire(name, version)

    def close(self) -> None:
        """At shutdown, after every process has ended: release the locks, stop the lanes."""
        for version in self._versions.values():
            if version.checkout is not None:
                version.checkout.release()
        self._versions.clear()
        for lane in self._lanes.values():
            lane.close()

    # -- the steps --------------------------------------------------------------------------------

    def _over_cap(self, route: Route) -> Refusal | None:
        assert route.bundle is not None and route.version is not None
        cap = self._loops[route.loop].max_bundle_versions
        same = [v for v in self._versions.values() if (v.loop, v.bundle) == (route.loop, route.bundle)]
        in_use = [v for v in same if v.in_use]
        if len(in_use) < cap:
            for idle in (v for v in same if not v.in_use):
                idle.idle_since = -math.inf  # gives way now: ended on the next pass
            return None
        running = ", ".join(sorted(v.version[:12] for v in in_use))
        return Refusal(route.loop, route.bundle,
                       f"bundle {route.bundle!r} already runs {len(in_use)} versions in loop {route.loop!r} "
                       f"({running}), its max_bundle_versions; this trigger's DAG run is pinned to version "
                       f"{route.version}, which cannot start until one of them has no triggers left — "
                       f"raise max_bundle_versions for loop {route.loop!r} in multitrigger.toml, or let those runs finish")

    def _begin(self, name: str, route: Route) -> None:
        assert route.bundle is not None and route.version is not None
        config = replace(self._loops[route.loop], name=name, bundles=frozenset({route.bundle}))
        slot = self._slots[name] = self._make_slot(config, route.loop)
        version = self._versions[name] = _Version(route.loop, route.bundle, route.version, slot, self._clock())
        lane = self._lanes.get(route.bundle)
        if lane is None:
            lane = self._lanes[route.bundle] = Lane(f"bundle-{route.bundle}", self._wake, self._clock)
        log.info("bundle version checkout started", loop=route.loop, bundle=route.bundle, version=route.version)
        bundle, sha = route.bundle, route.version
        lane.submit(f"checkout {name}", lambda: self._checkout(bundle, sha), lambda done: self._checked_out(version, done))

    def _checked_out(self, version: _Version, done: Done[Checkout]) -> None:
        name = version.slot.name
        if self._versions.get(name) is not version:  # given up meanwhile (timeout)
            if done.value is not None:
                done.value.release()
            return
        if done.error is not None or done.value is None:
            self._give_up(name, f"{type(done.error).__name__}: {done.error}")
            return
        version.checkout = done.value
        version.slot.env = {**version.slot.env,
                            **self._paths.version_env(version.loop, version.bundle, version.version, done.value.path)}
        log.info("bundle version checked out", loop=version.loop, bundle=version.bundle, version=version.version,
                 path=str(done.value.path), seconds=round(self._clock() - version.asked_at, 3))

    def _give_up(self, name: str, why: str) -> None:
        """The checkout failed or timed out: its waiting triggers fail with the reason."""
        version = self._versions[name]
        reason = (f"cannot check out bundle {version.bundle!r} at version {version.version} "
                  f"(the version this trigger's DAG run is pinned to) for loop {version.loop!r}: {why}\n")
        log.error("bundle version checkout failed", loop=version.loop, bundle=version.bundle,
                  version=version.version, reason=why, triggers=len(version.slot.assigned))
        for trigger_id in list(version.slot.assigned):
            self._fail(trigger_id, [reason])
            version.slot.cancel(trigger_id)  # never delivered: forgotten at once
        self._remove(name)

    def _retire(self, name: str, version: _Version) -> None:
        process = version.slot.process
        if process is None:
            self._remove(name)
            if version.checkout is not None:
                version.checkout.release()
            log.info("bundle version ended", loop=version.loop, bundle=version.bundle, version=version.version)
        elif version.stopping_pid != process.pid:
            version.stopping_pid = process.pid
            version.slot.log.info("ending version loop: no triggers left", version=version.version)
            process.signal(signal.SIGTERM)

    def _remove(self, name: str) -> None:
        slot = self._slots.pop(name)
        slot.relay.flush()
        if slot.cgroup is not None:  # its own, with the loop's limits (multitrigger.cgroups.loops.for_slot)
            slot.cgroup.remove()
        shutil.rmtree(slot.cwd, ignore_errors=True)  # its private AIRFLOW_HOME and blame file
        self._forget(name)
        del self._versions[name]
