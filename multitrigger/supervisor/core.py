"""
The supervisor's main loop: one selector serves every loop; each pass reconciles.

Like gunicorn's arbiter, each pass of ``run`` is a handful of verbs: service the sockets of every
loop, answer held polls, reap and restart dead loops, kill hung ones, and drive the DB lanes:
persist what the loops reported (its own lane, at once), and once per claim interval
claim/route/cancel triggers and heartbeat. Signal handlers only record the signal; the loop acts on it. No thread per loop.

The selector thread never waits on the database or on remote log storage: that work runs on lanes
(``multitrigger.supervisor.lanes``: persisting, the claim pass, loop requests, log uploads), one thread each, whose
completions run back here. While the DB is slow or gone the selector keeps reading every loop,
answering check-ins and holding events; hang detection counts only time in which it listened.

Length: ~490 lines, because the verbs share the supervisor's state (slots, routes, outcomes,
lanes); each policy it consults is its own module (``RestartPolicy``, ``PoisonPolicy``,
``DbHealth``, ``Router``, ``ZygotePool``, ``RequestDesk``, the persist lane's ``Persister``), the
slots of versioned bundles (one per bundle version in use, made and ended on demand) are
``BundleVersions``', and the shutdown sequence (grace period, hand-backs) is ``supervisor.shutdown``.
"""

from __future__ import annotations

import gc
import math
import selectors
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from airflow.executors import workloads
from airflow.jobs.triggerer_job_runner import TriggerLoggingFactory
from multitrigger.cgroups.leftovers import NOTE_EVERY, ProcTable
from multitrigger.cgroups.loops import LoopCgroups, instance_name
from multitrigger.config import DEFAULT_LOOP, Config, ConfigError, LoopConfig
from multitrigger.heap import release_free_heap
from multitrigger.supervisor.gc_freeze import SurvivorFreezer
from multitrigger.supervisor.heartbeat import Heartbeat
from multitrigger.health import snapshot
from multitrigger.health.airflow_stats import AirflowStats
from multitrigger.interpreter_probe import loop_bootstrap_args
from multitrigger.poison import PoisonPolicy
from multitrigger.restart import RestartPolicy
from multitrigger.routing import NotServed, Origin, Refusal, Router
from multitrigger.supervisor import prestart
from multitrigger.supervisor.bundle_versions import BundleVersions
from multitrigger.supervisor.db_health import DbHealth
from multitrigger.supervisor.handback import HandbackListener
from multitrigger.supervisor.lanes import Done, Lane
from multitrigger.supervisor.launch import loop_env, private_home, user_reach_problems
from multitrigger.supervisor.loop_process import read_order
from multitrigger.supervisor.output import OutputLimits
from multitrigger.supervisor.outcomes import Outcomes
from multitrigger.supervisor.persisting import Persister
from multitrigger.supervisor.relay import OutputGate, output_busy_until, pressed
from multitrigger.supervisor.request_desk import RequestDesk
from multitrigger.supervisor.sd_notify import Notifier
from multitrigger.supervisor.shutdown import shut_down
from multitrigger.supervisor.zygote_pool import ZygotePool
from multitrigger.supervisor.settings import RunSettings
from multitrigger.supervisor.slot import LoopSlot, SlotSinks
from multitrigger.supervisor.trigger_path import TriggerPaths
from multitrigger.supervisor.teams import LoopTeams
from multitrigger.supervisor.store import DatabaseUnavailable, Tick, TriggerStore, raise_if_unreachable

if TYPE_CHECKING:
    from multitrigger.health.server import HealthServer

log = structlog.get_logger(__name__)

#: While new triggers keep arriving, claim again after this instead of a full claim interval.
BACKLOG_CLAIM_DELAY = 0.05
#: A pass is credited at most its select timeout plus this much listening time (see ``_listen``).
LISTEN_SLACK = 0.5
#: The longest select; also the longest pass credited as listening.
MAX_SELECT = 1.0
#: Each pass delivers loops' queued output lines for at most this long (then serves sockets again).
OUTPUT_SLICE = 0.01
#: While an event batch is being written or handed-back triggers are taken over, output is delivered
#: at most this often (``OutputGate``; for how long: ``relay.output_busy_until``); once a loop's
#: queue is over a quarter full, at most every ``OUTPUT_YIELD_PRESSED``.
OUTPUT_YIELD = 0.25
OUTPUT_YIELD_PRESSED = 0.05


class Supervisor:
    """Runs one loop per configured loop and routes every claimed trigger to its bundle's loop."""

    def __init__(self, config: Config, settings: RunSettings, store: TriggerStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.settings = settings
        self.store = store
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.router = Router(config)
        self.outcomes = Outcomes()
        self.db = Lane("db", self._wake_up, clock)  # claim, build, clean, release
        self.beat_lane = Lane("db-heartbeat", self._wake_up, clock)  # beside the claim pass (supervisor.heartbeat)
        self.heartbeat = Heartbeat(self.beat_lane, store.heartbeat, lambda done: self._db_done(done, lambda _: None))
        self.persist_lane = Lane("db-persist", self._wake_up, clock)  # events and failures, beside the claim pass
        self.uploads = Lane("log-uploads", self._wake_up, clock)
        teams = LoopTeams(config)  # a version slot's requests resolve as its loop's (its bundles are the loop's)
        self.desk = RequestDesk(Lane("requests", self._wake_up, clock), settings.request_timeout, clock,
                                team_of=lambda slot: teams.team_of(self.versions.loop_of(slot)))
        self._log_sink = store.log_line_consumer()
        self._signals: list[int] = []
        self._next_tick = 0.0
        self._unbuilt = 0  # held triggers the last pass left unbuilt (Tick.backlog)
        self.handback: HandbackListener | None = None  # other members' hand-backs (PostgreSQL)
        self._hinted_at: float | None = None  # since a hand-back was heard: claim at once while passes find new ones
        self._hints = 0  # hand-back hints heard so far
        self.db_health = DbHealth(settings.db_retry_limit, step_bound=settings.db_timeout + 2,
                                  retry_after_error=settings.claim_interval, clock=clock)
        self._gave_up = False
        self._listened = 0.0  # the listening clock (seconds); see _listen
        self._last_listen = clock()
        self.paths = TriggerPaths.compute(config)  # where each loop finds trigger code, once
        self._check_users_reach()
        # Loops' cgroups before any loop or zygote forks; a limit this host cannot apply raises ConfigError.
        self.cgroups = LoopCgroups.open(config, Path(settings.cgroup_root), instance_name(settings.state_dir))
        self.zygotes = ZygotePool(config, settings.state_dir, self.selector, clock=clock,
                                  env_for=lambda home: prestart.zygote_env(home, self.paths))
        self.slots = {name: self._make_slot(loop) for name, loop in config.loops.items()}
        self.versions = BundleVersions(config.loops, self.slots, self.paths, make_slot=self._make_slot,
                                       fail=self.outcomes.add_failure, forget=self.desk.forget,
                                       wake=self._wake_up, clock=clock)
        self.persister = Persister(self.outcomes, self.persist_lane, store, self.slots, self._db_done)
        self.routes: dict[int, str] = {}  # trigger id → slot name (a loop's, or a bundle version's), decided once
        self._output_turn = 0
        self._output_gate = OutputGate(OUTPUT_YIELD, clock, OUTPUT_YIELD_PRESSED)
        self._next_note = 0.0  # when loops' descendants are next noted
        self.notifier = Notifier()  # systemd Type=notify; a no-op without $NOTIFY_SOCKET
        self._trimmed = False  # the C heap was trimmed once the supervisor was first ready
        self._freezer = SurvivorFreezer(clock)  # full collections walk only what is new (gc_freeze)
        self.claimed = False  # set after the first successful claim
        self.board = snapshot.Board(clock)  # what the health server and Airflow's metrics read
        self.board.subscribers.append(AirflowStats())
        self._health_server: HealthServer | None = None

    # -- set-up -------------------------------------------------------------------------------

    def _make_slot(self, loop: LoopConfig, paths_of: str | None = None) -> LoopSlot:
        """A slot for ``loop``, finding trigger code where loop ``paths_of`` (default: itself) does."""
        home = self.settings.state_dir / "loops" / loop.name
        as_user = private_home(home, loop.user)  # 0700; the loop's user's, if it has one
        return LoopSlot(
            config=loop,
            argv=loop_bootstrap_args(loop.python),
            env=loop_env(home) | self.paths.loop_env(paths_of or loop.name) | as_user,
            cwd=home,
            policy=RestartPolicy(loop.restart, clock=self.clock),
            poison=PoisonPolicy(loop.name, loop.restart.poison_threshold, clock=self.clock),
            sinks=SlotSinks(
                on_event=self.outcomes.add_event,
                on_failure=lambda loop, tid, tb: self.outcomes.add_failure(tid, tb, loop),
                on_finished=self._on_finished,
                on_output=lambda name, pid, line: log.info(line, loop=name, pid=pid, source="loop output"),
                on_log_line=self._log_sink.send,
                on_request=self.desk.ask,
            ),
            hang_threshold=self.settings.runner_health_check_threshold,
            blame_file=home / "blame",
            listening=lambda: self._listened,
            limits=OutputLimits.of(self.settings),
            clock=self.clock,
            cgroup=self.cgroups.for_slot(loop.name, paths_of or loop.name, loop.limits),
        )

    def _check_users_reach(self) -> None:
        """A loop run as another user must reach its home and its trigger code: else a ConfigError
        (``multitrigger run`` exits 2 naming the key), not a loop that dies on every start."""
        homes = self.settings.state_dir / "loops"
        homes.mkdir(parents=True, exist_ok=True)
        problems = [problem for name, loop in self.config.loops.items() if loop.user
                    for problem in user_reach_problems(name, loop.user, homes / name, self.paths.loops[name])]
        if problems:
            raise ConfigError(self.config.source, problems)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, _f: self._signals.append(s))

    def _wake_up(self) -> None:
        """Wake the selector (called from lane threads when a step completes)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError, OSError):
            pass  # already a byte waiting: the selector wakes anyway

    # -- zygotes (multitrigger.loop.zygote): forked loops start in ~20 ms and share memory --------

    def _wanted(self, name: str, slot: LoopSlot) -> bool:
        """Should this loop run now? The default loop of a config where every bundle has its own
        loop often never gets a trigger: it starts with its first one (a fork: ~20 ms), not before,
        and saves a process (~30 MB PSS) until then. An "exec" default loop starts up front. A
        bundle version's slot runs while it has triggers, once its checkout is on disk."""
        if self.versions.owns(name):
            return bool(slot.assigned) and self.versions.may_start(name)
        lazy = name == DEFAULT_LOOP and len(self.config.loops) > 1 and slot.config.start_method == "fork"
        return not lazy or bool(slot.assigned)

    def _waiting_for_zygote(self, slot: LoopSlot, now: float) -> bool:
        """A loop's first start waits (bounded) for its zygote: N exec'd loops cost N x 120 MB."""
        return self.zygotes.waiting(slot.config, slot.stats.restarts == 0, now)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self.persister.warm_up()
        self.zygotes.start(prestart.take_prestarted())
        # Everything imported so far lives as long as the process: out of the collector's sight, a
        # full collection no longer walks Airflow's ~1600 modules (~0.25 s here, paid by whichever
        # event burst triggered it: measured on a 200-event batch, 0.29 s → 0.015 s).
        gc.collect()
        gc.freeze()
        self._freezer.install()  # and what survives each later full collection (supervisor.gc_freeze)
        release_free_heap()  # and again once ready (_reconcile): what start-up freed (multitrigger.heap)
        log.info("multitrigger supervisor starting", loops=sorted(self.slots), job_id=self.store.job.id)
        self._health_server = self._start_health_server()
        self.handback = self.store.listen_for_handbacks(self._wake_up)
        while not self._signals and not self.db_health.exhausted:
            self._service(self._next_wakeup())
            self._reconcile()
        self._gave_up = self.db_health.exhausted  # exit 1: a service manager restarts us, HA takes over
        if self._gave_up:
            log.critical("metadata DB unreachable for too long; exiting", limit=self.settings.db_retry_limit)
        return self.shutdown()

    def _next_wakeup(self) -> float:
        now = self.clock()
        deadlines = [self.desk.next_deadline()] + [s.poll_deadline() for s in self.slots.values()]
        busy_until = self._busy_until()  # the output gate opens then, at the latest
        for s in self.slots.values():
            gate = self._output_gate.opens_at(busy_until is not None, s.relay.filling())
            deadlines.append(max(s.relay.next_due(), gate if busy_until is None else min(gate, busy_until)))
        if self.persister.ready:
            deadlines.append(max(self.db_health.retry_at, now))
        if self.db.idle:
            deadlines.append(max(self.db_health.retry_at, now if self._unbuilt else self._next_tick))
        for name, s in self.slots.items():  # a waiting loop's deadline is the pool's
            if s.process is None and self._wanted(name, s) and not self._waiting_for_zygote(s, now):
                deadlines.append(s.start_at)
        deadlines.append(self.zygotes.next_deadline(now))
        deadlines.append(self.versions.next_deadline(now))
        deadlines.append(self.notifier.next_deadline(now))
        return max(0.0, min(deadlines) - now)

    def _service(self, timeout: float) -> None:
        timeout = min(timeout, MAX_SELECT)
        ready = self.selector.select(timeout)
        self._listen(timeout)
        # Requests and check-ins of every loop first; output and logs are read after them and
        # delivered last, within each loop's budget (a flood of log lines delays no one's events).
        for key, mask in sorted(ready, key=read_order):
            if key.data is None:  # the wake-up socket: a signal or a lane's completion
                _drain(key.fileobj)
                continue
            proc, sock, reader = key.data
            if mask & selectors.EVENT_WRITE:
                proc.flush(self.selector)
            if mask & selectors.EVENT_READ:
                proc.service(self.selector, sock, reader)
        for lane in (self.persist_lane, self.db, self.beat_lane, self.desk.lane, self.uploads):
            lane.run_completions()
        self._drive_persist_only()  # the events just read (or the rest of a burst) before this pass's log lines
        self.versions.run_completions()
        self._deliver_output()
        if self.board.due(now := self.clock()):
            self.board.publish(snapshot.build(self, now))

    def _deliver_output(self) -> None:
        """Deliver queued output lines for at most ``OUTPUT_SLICE``, each pass starting with the
        next loop, so no loop's lines always wait behind another's backlog; while an event batch is
        being written, less often (``OutputGate``: events before log lines)."""
        slots = list(self.slots.values())
        if not self._output_gate.enter(self._busy_until() is not None, pressed(s.relay for s in slots)):
            return
        self._output_turn = (self._output_turn + 1) % len(slots)
        deadline = self.clock() + OUTPUT_SLICE
        for slot in slots[self._output_turn:] + slots[: self._output_turn]:
            slot.relay.pump(deadline)

    def _listen(self, timeout: float) -> None:
        """Advance the listening clock by the time since the last pass, at most one select's worth.

        A pass that took far longer than its select timeout means the supervisor itself was not
        reading (stopped, swapped out, starved): that time is not held against any loop.
        """
        now = self.clock()
        elapsed, self._last_listen = now - self._last_listen, now
        self._listened += min(elapsed, timeout + LISTEN_SLACK)

    def _reconcile(self) -> None:
        now = self.clock()
        self.zygotes.tend(now)
        self.versions.tend(now)
        for name, slot in self.slots.items():
            slot.answer_poll(self.selector, now)
            if slot.reap(self.selector, now) is not None:
                self.desk.forget(name)
            slot.check_hang()
            if (slot.process is None and now >= slot.start_at and self._wanted(name, slot)
                    and not self._waiting_for_zygote(slot, now)):
                slot.zygote = self.zygotes.for_loop(slot.config)
                slot.start(self.selector)
        self._note_descendants(now)
        self.desk.pump()
        self._drive_db(now)
        self.notifier.tick(now, self._health)
        self._freezer.tend(idle=not self.outcomes and all(s.relay.next_due() == math.inf for s in self.slots.values()))
        if not self._trimmed and self._health()[0]:  # the first claim pass and every loop are done
            self._trimmed = release_free_heap() or True

    def _note_descendants(self, now: float) -> None:
        """Every ``NOTE_EVERY`` s, one /proc scan for all loops without a cgroup (``Leftovers``)."""
        if now < self._next_note:
            return
        self._next_note = now + NOTE_EVERY
        if noting := [slot for slot in self.slots.values() if slot.notes_descendants]:
            table = ProcTable.scan()
            for slot in noting:
                slot.note_descendants(table)

    def _start_health_server(self) -> HealthServer | None:
        """The health server, imported only when it runs: with it ``prometheus_client`` and
        ``http.server`` (1.3 MB of the supervisor's memory, tracemalloc, Airflow 3.3.2)."""
        if not self.config.health.enabled:
            log.info("health server disabled")
            return None
        from multitrigger.health.server import HealthServer

        return HealthServer.start(self.config.health, self.board, self.settings.state_dir)

    def _busy_until(self) -> float | None:
        """Until when output waits for a young persist step or a takeover (``relay.output_busy_until``)."""
        step = self.persist_lane.busy_for()
        return output_busy_until(self.clock(), step and step[1], self._hinted_at)

    def _health(self) -> tuple[bool, str]:
        """For systemd: ready, and a one-line summary, both as the health server shows them (the
        latest published snapshot; at most ``PUBLISH_EVERY`` old)."""
        snap = self.board.latest
        return (False, "starting") if snap is None else (snap.ready, snap.summary)

    # -- the DB lanes (the persist lane, and why it cannot undo a claim pass: ``persisting``) ----

    def _drive_db(self, now: float) -> None:
        """Give each DB lane its next step (one at a time per lane); notice a step that never ends."""
        for lane in (self.persist_lane, self.db, self.beat_lane):
            if busy := lane.busy_for():
                self.db_health.running(*busy)
        if not self.db_health.may_try:
            return
        if self.persister.ready:
            self.persister.submit()
        self.heartbeat.offer(now)
        if self.handback is not None and self.handback.take():
            # Another member handed triggers back: claim now, not up to a claim interval later.
            log.info("hand-back heard; claiming now")
            self._hinted_at, self._hints = now if self._hinted_at is None else self._hinted_at, self._hints + 1
            self._next_tick = min(self._next_tick, now)
        if self.db.idle and (now >= self._next_tick or self._unbuilt):
            # Claimed but not yet built (``Tick.backlog``): build the next chunk at once, without
            # claiming more; the claim cadence stays the claim interval's.
            claim = now >= self._next_tick
            if claim:
                self._next_tick = now + self.settings.claim_interval
            exclude = frozenset(self.routes) | self.outcomes.pending_ids()
            hints = self._hints
            self.db.submit("tick" if claim else "build", lambda: self.store.tick(exclude, claim=claim),
                           lambda done: self._db_done(done, lambda tick: self._ticked(tick, hints)))

    def _ticked(self, tick: Tick, hints: int) -> None:
        """Back on the selector thread: cancel what we no longer hold, route what is new.
        ``hints``: how many hand-back hints had been heard when this pass was submitted."""
        self.claimed = True  # the first claim completed: readiness may follow
        self._unbuilt = tick.backlog
        if not tick.built and hints == self._hints:  # a pass after the last hint found nothing new
            self._hinted_at = None
        for trigger_id in set(self.routes) - tick.held:
            self.slots[self.routes[trigger_id]].cancel(trigger_id)
        for trigger_id, traceback in tick.failures:
            self.outcomes.add_failure(trigger_id, traceback)
        pending = self.outcomes.pending_ids()
        routed: dict[tuple, list[int]] = {}  # (loop, bundle, version, classpath) -> trigger ids
        for workload, origin in tick.built:
            if workload.id not in self.routes and workload.id not in pending:
                if (loop := self._route(workload, origin)) is not None:
                    routed.setdefault((loop, origin.bundle, origin.version, workload.classpath), []).append(workload.id)
        for (loop, bundle, version, classpath), ids in routed.items():
            # One line per pass and group, not per trigger: at the limit the per-trigger line cost the
            # selector thread more than building the triggers cost the DB lane (~0.1 ms each).
            log.info("triggers routed", loop=loop, bundle=bundle, version=version, classpath=classpath, count=len(ids),
                     trigger_ids=ids)
        if tick.built and tick.more and (tick.alone or self._hinted_at is not None):
            # A backlog is claimed max_trigger_to_select_per_loop at a time: come back for the
            # rest at once, not a claim interval later (nothing built: no hurry, no spinning;
            # the last claim took less than that: nothing more to claim, the held rest is built
            # by build passes, which do not walk every held trigger).
            # Only with no other live triggerer: that setting exists to spread triggers over
            # HA triggerers, and claiming again every 50 ms would take them all. Or after a
            # hand-back hint: every listening member heard it and claims its turns in the same
            # rhythm, until a pass finds nothing new (the handed-back triggers are all taken).
            self._next_tick = min(self._next_tick, self.clock() + BACKLOG_CLAIM_DELAY)

    def _route(self, workload: workloads.RunTrigger, origin: Origin) -> str | None:
        """Hand the workload to its loop's slot; return that loop, or None (refused, not served)."""
        route = self.router.route(workload.classpath, origin.bundle, origin.version)
        if isinstance(route, NotServed):
            # TriggerStore.build hands these back by the same rule (``Config.served``), so this is
            # not reached; if it were, the trigger would stay held here, unrun, rebuilt every pass.
            log.warning("trigger of a bundle this instance does not serve; handed back, not run", bundle=route.bundle,
                        trigger_id=workload.id)
            self.db.submit("hand back", lambda: self.store.release([workload.id]),
                           lambda done: self._db_done(done, lambda _: None))
            return None
        placed = route if isinstance(route, Refusal) else self.versions.slot_for(route)
        if isinstance(placed, Refusal):
            log.error("trigger refused", loop=placed.loop, bundle=origin.bundle, version=origin.version,
                      trigger_id=workload.id, reason=placed.reason)
            self.outcomes.add_failure(workload.id, [placed.reason + "\n"])
            return None
        self.routes[workload.id] = placed
        log.debug("trigger routed", loop=placed, bundle=origin.bundle, version=origin.version, trigger_id=workload.id,
                  classpath=workload.classpath)
        self.slots[placed].add(workload)
        return placed

    def _db_done(self, done: Done, on_ok: Callable, on_error: Callable[[BaseException], None] | None = None) -> None:
        """A DB step ended: its result goes on, or the outage is handled (loops untouched)."""
        if done.error is None:
            self.db_health.ok()
            on_ok(done.value)
            return
        if on_error is not None:
            on_error(done.error)
        try:
            raise_if_unreachable(done.error)
        except DatabaseUnavailable as down:
            self.db_health.unreachable(str(down), queued=len(self.outcomes))
            return
        self.db_health.failed(done.error)

    def _on_finished(self, loop: str, trigger_id: int) -> None:
        self.routes.pop(trigger_id, None)
        if factory := self.store.logger_cache.get(trigger_id):  # closed after its queued lines
            self.slots[loop].relay.after(lambda: self._close_trigger_log(loop, trigger_id, factory))

    def _close_trigger_log(self, loop: str, trigger_id: int, factory: TriggerLoggingFactory) -> None:
        """Its last lines are written: upload (remote logging) and close it on the upload lane."""
        if self.store.logger_cache.get(trigger_id) is factory:
            del self.store.logger_cache[trigger_id]
        self.uploads.submit(f"upload {trigger_id}", lambda: _upload(factory), lambda done: _upload_done(done, loop, trigger_id))

    # -- shutdown (``supervisor.shutdown``) ----------------------------------------------------

    def shutdown(self) -> int:
        """Stop loops, persist, hand triggers back, exit (``supervisor.shutdown.shut_down``)."""
        return shut_down(self)

    def _drive_persist_only(self) -> None:
        """At shutdown: persist, and keep heartbeating until the triggers are handed back: loops
        with thousands of triggers take seconds to stop, and a member whose heartbeat lapsed
        meanwhile would see its triggers taken while its loops still run them."""
        if self.db_health.may_try:
            if self.persister.ready:
                self.persister.submit()
            self.heartbeat.offer(self.clock())


def _upload(factory) -> None:  # type: ignore[no-untyped-def]
    try:
        factory.upload_to_remote()
    finally:
        factory.close()


def _upload_done(done: Done, loop: str, trigger_id: int) -> None:
    if done.error is not None:
        log.error("failed to upload trigger logs", loop=loop, trigger_id=trigger_id, error=repr(done.error))


def _drain(sock) -> None:  # type: ignore[no-untyped-def]
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass
