"""
A loop slot: one configured loop, its current process, and the triggers it owns.

The slot outlives its processes. It keeps every workload routed to it, so when a process dies the
same triggers are delivered to the next one without another trip to the database; it keeps the
held long-poll (see ``multitrigger.protocol``) and the "last heard from" clock that hang detection
reads. Check-ins (``TriggerStateChanges``) are handled here; every other request goes to the
supervisor's ``RequestDesk`` (``sinks.on_request``), which answers off the selector thread.

Hang detection reads a *listening* clock (``listening``), which the supervisor advances only for
time in which it was actually serving the loops' sockets: a supervisor that was itself stalled
(swapped out, stopped, starved) never kills a loop, or blames a trigger, for its own deafness.

Policies are separate, pure objects: when to restart (``RestartPolicy``) and when a trigger that
keeps killing its loop is failed (``PoisonPolicy``). Every log line carries ``loop``, ``bundle``
and, once a process runs, ``pid`` (``self.log``).
"""

from __future__ import annotations

import math
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, TypeAdapter

from airflow.executors import workloads
from airflow.jobs.triggerer_job_runner import ToTriggerSupervisor, TriggerEventEntry, messages
from airflow.sdk.execution_time.comms import _RequestFrame
from multitrigger import oom
from multitrigger.cgroups import LoopCgroup
from multitrigger.cgroups.join import ENV_CGROUP_PROCS
from multitrigger.cgroups.leftovers import Leftovers, ProcTable
from multitrigger.config import LoopConfig
from multitrigger.health.loop_health import ReportedHealth, TriggerInfo
from multitrigger.loop.blame import read_blame, reset_blame
from multitrigger.poison import PoisonPolicy
from multitrigger.protocol import ENV_BLAME_FILE, HEALTH_KEY, POLL_HOLD_SECONDS, HealthReport
from multitrigger.restart import RestartPolicy
from multitrigger.supervisor.loop_process import LoopCallbacks, LoopProcess
from multitrigger.supervisor.output import OutputLimits, cut_json_record
from multitrigger.supervisor.relay import LogRelay, Stream
from multitrigger.supervisor.request_desk import Reply
from multitrigger.supervisor.zygote_client import Zygote

_decoder: TypeAdapter[Any] = TypeAdapter(ToTriggerSupervisor)


@dataclass
class SlotSinks:
    """Where a slot delivers what it cannot handle itself (owned by the supervisor)."""

    on_event: Callable[[str, TriggerEventEntry], None]
    on_failure: Callable[[str, int, list[str] | None], None]
    on_finished: Callable[[str, int], None]
    on_output: Callable[[str, int, str], None]
    on_log_line: Callable[[bytes], None]
    on_request: Callable[[str, BaseModel, Reply], None]


@dataclass
class LoopStats:
    """Counters shown by status/health surfaces (``multitrigger.health.snapshot``)."""

    events: int = 0
    events_persisted: int = 0  # of those, written to the DB (what stock's triggers.succeeded counts)
    failures: int = 0
    failures_persisted: int = 0  # of those, written to the DB (what stock's triggers.failed counts)
    restarts: int = 0
    last_exit: str | None = None
    last_exit_at: float | None = None  # wall clock (time.time)
    restart_times: deque[float] = field(default_factory=lambda: deque(maxlen=1000))  # wall clock
    poison_failed: int = 0  # triggers failed for crashing their loop
    health: ReportedHealth = field(default_factory=ReportedHealth)  # what the loop reports of itself


@dataclass
class LoopSlot:
    """One loop: its configuration and the process currently running it."""

    config: LoopConfig
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    policy: RestartPolicy
    poison: PoisonPolicy
    sinks: SlotSinks
    hang_threshold: float
    blame_file: Path
    listening: Callable[[], float] = time.monotonic
    limits: OutputLimits = OutputLimits()
    clock: Callable[[], float] = time.monotonic  # the output budget's
    process: LoopProcess | None = None
    zygote: Zygote | None = None  # of this loop's interpreter; set by the supervisor
    cgroup: LoopCgroup | None = None  # with [loops.<name>.limits] (multitrigger.cgroups.loops)
    start_at: float = 0.0
    stats: LoopStats = field(default_factory=LoopStats)
    assigned: dict[int, workloads.RunTrigger] = field(default_factory=dict)
    last_heard: float = math.inf  # on the listening clock; inf: not heard from since its start
    _undelivered: dict[int, workloads.RunTrigger] = field(default_factory=dict)
    _cancel_wanted: set[int] = field(default_factory=set)
    _cancel_sent: set[int] = field(default_factory=set)
    _persisted_seqs: list[int] = field(default_factory=list)
    _kill_reason: str | None = None
    _oom: oom.OomWatch | None = None
    _leftovers: Leftovers | None = None  # without a cgroup: what the process started
    _held_poll: int | None = None
    _held_until: float = 0.0
    relay: LogRelay = field(init=False)  # this loop's output lines on their way to the sinks

    def __post_init__(self) -> None:
        self.relay = LogRelay.for_loop(self.name, self.limits, self.clock)
        self.log = structlog.get_logger(__name__).bind(loop=self.name, bundle=",".join(sorted(self.config.bundles)) or None)

    @property
    def name(self) -> str:
        return self.config.name

    # -- what the supervisor tells the slot -------------------------------------------------

    def add(self, workload: workloads.RunTrigger) -> None:
        self.assigned[workload.id] = workload
        self._undelivered[workload.id] = workload

    def cancel(self, trigger_id: int) -> None:
        if trigger_id in self._undelivered:  # never reached the loop: nothing to cancel there
            self._forget(trigger_id)
        elif trigger_id in self.assigned:
            self._cancel_wanted.add(trigger_id)

    def persisted(self, seq: int) -> None:
        self._persisted_seqs.append(seq)

    # -- process lifecycle --------------------------------------------------------------------

    def start(self, selector: selectors.BaseSelector) -> None:
        env = {**self.env, ENV_BLAME_FILE: str(self.blame_file)}
        if self.cgroup is not None:
            env[ENV_CGROUP_PROCS] = os.pathsep.join(self.cgroup.join_files)
        try:
            reset_blame(self.blame_file)
            self.process = process = LoopProcess.spawn(self.name, self.argv, env, self.cwd, zygote=self.zygote)
        except OSError as err:  # e.g. EMFILE (its blame file, its sockets): this loop backs off, the supervisor goes on
            self.start_at = self.policy.died()
            self.log.error("loop could not start; retrying after backoff", error=str(err),
                           retry_in=round(self.start_at - self.clock(), 3))
            return
        self.log = self.log.bind(pid=process.pid)
        output = Stream(lambda line: self.sinks.on_output(self.name, process.pid, line.decode("utf-8", "replace")))
        logs = Stream(self.sinks.on_log_line, render=cut_json_record)
        process.register(
            selector,
            LoopCallbacks(
                on_frame=lambda frame: self._on_frame(selector, process, frame),
                on_output=lambda pieces: self.relay.put(pieces, output),
                on_log_lines=lambda pieces: self.relay.put(pieces, logs),
                on_broken=lambda why: self.kill(why),
            ),
            self.limits,
        )
        self.policy.started()
        self.stats.health.restarted()
        counter = self.cgroup.oom_counter_file if self.cgroup is not None else None
        self._oom = oom.watch_file(counter) if counter is not None else oom.watch(process.pid)
        self._leftovers = Leftovers(process.pid) if self.cgroup is None else None
        self.last_heard = math.inf  # a cold start is not a hang
        self._held_poll = None
        self._undelivered = dict(self.assigned)
        self._cancel_sent.clear()
        # Stock handshake: the runner's first read must be a StartTriggerer frame (request id 0).
        process.respond(selector, 0, messages.StartTriggerer().model_dump())
        self.log.info("loop started", interpreter=self.argv[0], forked=process.forked)

    def kill(self, reason: str) -> None:
        """Kill the process for ``reason``; ``reap`` records it when the exit is seen."""
        if self.process is not None and self._kill_reason is None and self.process.poll_exit() is None:
            self.log.error("killing loop", reason=reason)
            self._kill_reason = reason
            self.process.signal(signal.SIGKILL)

    def reap(self, selector: selectors.BaseSelector, now: float) -> str | None:
        """If the process has exited: close it, schedule the restart, return the exit reason."""
        if self.process is None or (code := self.process.poll_exit()) is None:
            return None
        reason = self._kill_reason or self.process.exit_reason(code)
        if code == -signal.SIGKILL and self._kill_reason is None and self._oom is not None and self._oom.fired():
            reason = self._oom.describe()
        level = self.log.info if code == 0 and self._kill_reason is None else self.log.error
        usage = self.cgroup.usage() if self.cgroup is not None else None
        level("loop process ended", reason=reason, triggers=len(self.assigned),
              **({"cgroup_oom_kills": usage.oom_kills, "cgroup_forks_refused": usage.pids_refused,
                  "cgroup_cpu_s": usage.cpu_seconds} if usage is not None else {}))
        self._kill_leftovers()
        self.process.close(selector)
        self.process = None
        self.log = self.log.unbind("pid")
        self.stats.last_exit, self.stats.last_exit_at = reason, time.time()
        self._kill_reason = None
        self._blame(read_blame(self.blame_file), reason)
        # Triggers we were cancelling are done with; the rest are re-delivered to the next process.
        for trigger_id in self._cancel_wanted:
            self.assigned.pop(trigger_id, None)
            self.sinks.on_finished(self.name, trigger_id)
        self._cancel_wanted.clear()
        self.start_at = self.policy.died()
        self.stats.restarts += 1
        self.stats.restart_times.append(time.time())
        return reason

    def _kill_leftovers(self) -> None:
        """Nothing outlives its loop: whatever its triggers started dies with it."""
        if self.cgroup is not None:
            if count := self.cgroup.kill_all():
                self.log.warning("killed processes left in the loop's cgroup", count=count, cgroup=str(self.cgroup.path))
        elif self._leftovers is not None and (killed := self._leftovers.kill()):
            self.log.warning("killed processes the loop left behind", pids=killed)

    @property
    def notes_descendants(self) -> bool:
        """A live loop without a cgroup: its descendants are noted (``Leftovers``)."""
        return self._leftovers is not None and self.process is not None

    def note_descendants(self, table: ProcTable) -> None:
        """Remember the live loop's descendants in ``table`` (one scan of /proc serves every loop)."""
        if self._leftovers is not None and self.process is not None:
            self._leftovers.note(table)

    def _blame(self, trigger_id: int, reason: str) -> None:
        """Strike the trigger whose code was running when the loop died; fail it on a verdict."""
        if trigger_id not in self.assigned:
            return
        verdict = self.poison.strike(trigger_id, reason)
        self.log.warning("loop death blamed on trigger", trigger_id=trigger_id,
                         strikes=self.poison.strikes(trigger_id) if verdict is None else len(verdict.reasons), reason=reason)
        if verdict is not None:
            self.log.error("failing poison trigger", trigger_id=trigger_id, reason=verdict.traceback()[0].strip())
            self.sinks.on_failure(self.name, trigger_id, verdict.traceback())
            self.stats.failures += 1
            self.stats.poison_failed += 1
            self._forget(trigger_id)

    def check_hang(self) -> None:
        """Kill the loop if it said nothing for ``hang_threshold`` seconds of *listening* time."""
        silent = self.listening() - self.last_heard
        if self.process is not None and silent > self.hang_threshold and self._kill_reason is None:
            # A block that never ended is an episode too, named by the blame slot (the loop itself
            # cannot report it: it is stuck in the trigger's code).
            culprit = read_blame(self.blame_file)
            self.stats.health.episode(culprit, silent, self.describe(culprit) if culprit else None, self.log)
            self.kill(f"event loop blocked: no check-in for {silent:.1f}s (threshold {self.hang_threshold:g}s)")

    # -- frames from the loop -----------------------------------------------------------------

    def _on_frame(self, selector: selectors.BaseSelector, process: LoopProcess, frame: _RequestFrame) -> None:
        if self.last_heard == math.inf:  # its first frame: the process is up and talking
            self.log.info("loop ready", forked=process.forked, startup_s=round(time.monotonic() - process.started_at, 3))
        self.last_heard = self.listening()
        if isinstance(frame.body, dict) and (raw := frame.body.get(HEALTH_KEY)) is not None:
            if (report := HealthReport.from_body(raw)) is not None:
                self.stats.health.take(report, self.describe, self.log)
        try:
            msg = _decoder.validate_python(frame.body)
        except Exception as err:
            self.kill(f"undecodable request from loop: {type(err).__name__}")
            return
        if isinstance(msg, messages.TriggerStateChanges):
            self._on_state_changes(selector, frame.id, msg)
            return

        def reply(body: dict | None, error: dict | None) -> None:
            if self.process is process:  # never answer a later process with an earlier one's reply
                process.respond(selector, frame.id, body, error)

        self.sinks.on_request(self.name, msg, reply)

    def _on_state_changes(self, selector: selectors.BaseSelector, req_id: int, msg: messages.TriggerStateChanges) -> None:
        for entry in msg.events or ():
            self.stats.events += 1
            self.sinks.on_event(self.name, entry)
        if msg.failures or msg.finished:
            self.process.drain_logs(selector)  # their last log lines first, then close their files
        for trigger_id, tb in msg.failures or ():
            self.stats.failures += 1
            self.sinks.on_failure(self.name, trigger_id, tb)
            # A failed trigger is done with (it may never have started: bad import), so it is
            # never re-delivered to a restarted process.
            self._forget(trigger_id)
        for trigger_id in msg.finished or ():
            self._forget(trigger_id)
        if msg.events or msg.failures or msg.finished:
            self._respond_sync(selector, req_id)
        else:  # a poll: hold it until there is work
            if self._held_poll is not None:  # a loop keeps one poll; answer a stale one empty
                self._respond_sync(selector, self._held_poll, empty=True)
            self._held_poll, self._held_until = req_id, time.monotonic() + POLL_HOLD_SECONDS
            self.answer_poll(selector, time.monotonic())

    def describe(self, trigger_id: int) -> TriggerInfo | None:
        """Name a trigger this loop holds: classpath and, for a task's trigger, its task."""
        if (workload := self.assigned.get(trigger_id)) is None:
            return None
        ti = workload.ti
        return TriggerInfo(workload.classpath, ti.dag_id if ti else None, ti.task_id if ti else None,
                           ti.run_id if ti else None)

    def _forget(self, trigger_id: int) -> None:
        self.poison.forget(trigger_id)
        if self.assigned.pop(trigger_id, None) is not None:
            self.sinks.on_finished(self.name, trigger_id)
        self._undelivered.pop(trigger_id, None)
        self._cancel_wanted.discard(trigger_id)
        self._cancel_sent.discard(trigger_id)

    def has_work(self) -> bool:
        return bool(self._undelivered or (self._cancel_wanted - self._cancel_sent) or self._persisted_seqs)

    def answer_poll(self, selector: selectors.BaseSelector, now: float) -> None:
        """Answer the held poll if there is work for the loop or it has been held long enough."""
        if self._held_poll is not None and self.process is not None and (self.has_work() or now >= self._held_until):
            req_id, self._held_poll = self._held_poll, None
            self._respond_sync(selector, req_id)

    def poll_deadline(self) -> float:
        return self._held_until if self._held_poll is not None else math.inf

    def _respond_sync(self, selector: selectors.BaseSelector, req_id: int, empty: bool = False) -> None:
        to_create: list[workloads.RunTrigger] = [] if empty else list(self._undelivered.values())
        to_cancel: set[int] = set() if empty else self._cancel_wanted - self._cancel_sent
        seqs, self._persisted_seqs = ([], self._persisted_seqs) if empty else (self._persisted_seqs, [])
        sync = messages.TriggerStateSync(to_create=to_create, to_cancel=to_cancel, events_persisted=seqs or None)
        if not empty:
            self._undelivered.clear()
            self._cancel_sent |= to_cancel
        self.process.respond(selector, req_id, sync.model_dump())
