"""
The supervisor's state as one immutable value, published by the selector thread for readers on
other threads (the HTTP server, ``multitrigger status`` through it, the metrics collector).

The selector thread owns the slots; nothing else may read them while it runs. So every
``PUBLISH_EVERY`` seconds, at the end of a pass, it copies what the health surfaces show into
frozen dataclasses (``build``) and swaps one reference (``Board.latest``): a reader gets a
consistent picture without a lock, and the selector pays a copy of a few numbers per loop, not
per trigger. Process figures (memory, CPU, cgroup) are read by the readers, from ``/proc``
(``multitrigger.health.procstats``), so they cost nothing unless someone looks.

Its age is the liveness signal: a main loop that stopped turning stops publishing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multitrigger.loop.blame import read_blame
from multitrigger.routing import AMBIGUOUS

if TYPE_CHECKING:
    from multitrigger.supervisor.core import Supervisor
    from multitrigger.supervisor.slot import LoopSlot

#: The selector thread publishes at most this often (s).
PUBLISH_EVERY = 0.5
#: "Restarts recently" counts restarts in this window (s).
RECENT_WINDOW = 600.0
#: Worst blocking triggers listed per loop.
WORST_BLOCKERS = 5
#: A loop silent this long (s; it polls at least every ``POLL_HOLD_SECONDS``) is looked into:
#: whose code is running now (its blame slot) is shown as ``blocking_now``, before any hang kill.
SILENT_AFTER = 3.0


@dataclass(frozen=True)
class LoopSnapshot:
    name: str
    bundles: tuple[str, ...]  # () for the default loop: every bundle not listed elsewhere
    level: str
    interpreter: str
    start_method: str
    wanted: bool
    state: str  # starting, running, backing off, idle, stopped
    pid: int | None
    forked: bool | None
    triggers: int
    events: int
    events_persisted: int
    failures: int
    failures_persisted: int
    restarts: int
    restarts_recent: int
    last_exit: str | None
    last_exit_at: float | None  # wall clock
    since_checkin: float | None  # seconds of listening time since its last frame; None: not heard yet
    airflow_version: str | None
    python_version: str | None
    lag_p50: float | None
    lag_p99: float | None
    lag_max: float | None
    blocked_episodes: int
    blocked_seconds: float
    worst_blockers: tuple[dict[str, Any], ...]
    quarantined: tuple[dict[str, Any], ...]  # triggers with strikes (they crashed this loop)
    poison_failed: int
    output_dropped_bytes: int
    limits: dict[str, Any] | None  # the loop's cgroup limits (LoopConfig.limits), when configured
    blocking_now: dict[str, Any] | None = None  # a silent loop: the trigger whose code is running
    cgroup_path: str | None = None  # its own cgroup (multitrigger.cgroups), when it has limits
    #: best_effort = true on a host that could not apply them: what the loop runs without, e.g.
    #: ``memory: no cgroup filesystem at /sys/fs/cgroup`` (empty: applied, or none configured).
    limits_not_applied: tuple[str, ...] = ()
    #: That cgroup, for readers to ask its usage (reads cgroupfs files); not part of the document.
    cgroup: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def bundle_label(self) -> str:
        """The ``bundle`` label of its metrics: its bundles joined by ``+``; ``*`` for the default loop."""
        return "+".join(self.bundles) or "*"

    @property
    def up(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # the supervisor's clock (monotonic)
    taken_wall: float
    pid: int
    hostname: str
    job_id: int | None
    team_name: str | None
    capacity: int | None
    claimed: bool  # the first claim has completed
    db: str  # "ok" or "unreachable"
    triggers: int
    loops: tuple[LoopSnapshot, ...]
    # Per-trigger log files (``supervisor.log_files``): open now; reopened after the pool closed
    # them to stay under ``max_open_log_files`` (churn); lines that could not be written.
    log_files_open: int = 0
    log_file_reopens: int = 0
    log_lines_dropped: int = 0
    # Triggers found to come from several bundles (``routing.AMBIGUOUS``), each time one was routed.
    triggers_ambiguous_bundle: int = 0

    @property
    def not_ready(self) -> list[str]:
        """Why the supervisor is not ready (empty: ready): not claiming yet, or a wanted loop not up."""
        problems = [] if self.claimed else ["has not claimed triggers yet (first claim not done)"]
        for loop in self.loops:
            if loop.wanted and not loop.up:
                why = f"; last exit: {loop.last_exit}" if loop.last_exit and loop.state == "backing off" else ""
                problems.append(f"loop {loop.name} is {loop.state}{why}")
        return problems

    @property
    def ready(self) -> bool:
        return not self.not_ready

    @property
    def summary(self) -> str:
        """One line for systemd's ``STATUS=``: the wanted loops by state, triggers held, the DB."""
        wanted = [loop.state for loop in self.loops if loop.wanted]
        running, restarting = wanted.count("running"), wanted.count("backing off")
        return (f"{running} loops running, {len(wanted) - running - restarting} starting, {restarting} restarting; "
                f"{self.triggers} triggers; DB {self.db}")

    def as_dict(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "loops"}
        return body | {"ready": self.ready, "not_ready": self.not_ready, "loops": [_loop_dict(loop) for loop in self.loops]}


def _loop_dict(loop: LoopSnapshot) -> dict[str, Any]:
    body = {f.name: getattr(loop, f.name) for f in dataclasses.fields(loop) if f.name != "cgroup"}
    return body | {"bundle_label": loop.bundle_label}


def loop_state(slot: LoopSlot, wanted: bool, now: float) -> str:
    if slot.process is not None:
        return "starting" if slot.last_heard == math.inf else "running"
    if slot.start_at == math.inf:
        return "stopped"
    if not wanted:
        return "idle"  # a lazy default loop with no trigger yet
    return "backing off" if slot.stats.restarts and now < slot.start_at else "starting"


def _blocking_now(slot: LoopSlot, silent: float | None) -> dict[str, Any] | None:
    """For a loop silent past ``SILENT_AFTER``: the trigger its blame slot says is running (8 bytes)."""
    if silent is None or silent < SILENT_AFTER or not (trigger_id := read_blame(slot.blame_file)):
        return None
    info = slot.describe(trigger_id)
    return {"trigger_id": trigger_id, "classpath": info.classpath if info else None,
            "dag_id": info.dag_id if info else None, "task_id": info.task_id if info else None,
            "run_id": info.run_id if info else None, "silent_s": round(silent, 1)}


def _loop(slot: LoopSlot, wanted: bool, now: float, wall: float, lost: tuple[str, ...] = ()) -> LoopSnapshot:
    stats, health, process = slot.stats, slot.stats.health, slot.process
    heard = slot.last_heard
    silent = None if heard == math.inf or process is None else max(0.0, slot.listening() - heard)
    return LoopSnapshot(
        name=slot.name, bundles=tuple(sorted(slot.config.bundles)), level=slot.config.level,
        interpreter=str(slot.config.python), start_method=slot.config.start_method, wanted=wanted,
        state=loop_state(slot, wanted, now), pid=process.pid if process else None,
        forked=process.forked if process else None, triggers=len(slot.assigned), events=stats.events, events_persisted=stats.events_persisted,
        failures=stats.failures, failures_persisted=stats.failures_persisted, restarts=stats.restarts,
        restarts_recent=sum(1 for t in stats.restart_times if wall - t <= RECENT_WINDOW),
        last_exit=stats.last_exit, last_exit_at=stats.last_exit_at,
        since_checkin=silent,
        airflow_version=health.airflow_version, python_version=health.python_version,
        lag_p50=health.lag_p50, lag_p99=health.lag_p99, lag_max=health.lag_max,
        blocked_episodes=health.blocked_episodes, blocked_seconds=round(health.blocked_seconds, 3),
        worst_blockers=tuple(health.worst(WORST_BLOCKERS)),
        quarantined=tuple({"trigger_id": tid, "strikes": n} for tid, n in sorted(slot.poison.struck().items())),
        poison_failed=stats.poison_failed, output_dropped_bytes=slot.relay.dropped_total,
        limits=slot.config.limits.model_dump(mode="json") if slot.config.limits else None,
        blocking_now=_blocking_now(slot, silent),
        cgroup_path=str(slot.cgroup.path) if slot.cgroup is not None else None, cgroup=slot.cgroup,
        limits_not_applied=lost,
    )


def build(sup: Supervisor, now: float, wall: float | None = None) -> Snapshot:
    """Copy what the health surfaces show (on the selector thread)."""
    wall = time.time() if wall is None else wall
    claim, job = sup.store.claim_filters, sup.store.job
    return Snapshot(
        taken_at=now, taken_wall=wall, pid=os.getpid(), hostname=job.hostname or socket.gethostname(),
        job_id=job.id, team_name=claim.team_name, capacity=claim.capacity,
        claimed=sup.claimed, db="ok" if sup.db_health.down_since is None else "unreachable",
        triggers=len(sup.routes),
        log_files_open=sup.store.log_files.open_count, log_file_reopens=sup.store.log_files.reopens,
        log_lines_dropped=sup.store.log_files.dropped, triggers_ambiguous_bundle=AMBIGUOUS.value,
        loops=tuple(_loop(slot, sup._wanted(name, slot), now, wall, lost=tuple(sup.cgroups.lost.get(sup.versions.loop_of(name), ())))
                    for name, slot in sup.slots.items()),
    )


class Board:
    """Where the selector thread publishes and readers read the latest ``Snapshot``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.latest: Snapshot | None = None  # one reference, swapped whole: no lock needed
        self._next = 0.0
        self.subscribers: list[Callable[[Snapshot], None]] = []  # run on the selector thread

    def due(self, now: float) -> bool:
        return now >= self._next

    def publish(self, snapshot: Snapshot) -> None:
        self.latest = snapshot
        self._next = snapshot.taken_at + PUBLISH_EVERY
        for subscriber in self.subscribers:
            subscriber(snapshot)

    def age(self) -> float:
        return math.inf if self.latest is None else self.clock() - self.latest.taken_at
