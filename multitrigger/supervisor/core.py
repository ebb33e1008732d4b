"""
The supervisor's main loop: one selector serves every loop; each pass reconciles.

Like gunicorn's arbiter, each pass of ``run`` is a handful of verbs: service the sockets of every
loop, persist what they reported, answer held polls, reap and restart dead loops, kill hung ones,
and once per claim interval claim/route/cancel triggers and heartbeat. Signal handlers only record
the signal; the loop acts on it. No thread per loop.
"""

from __future__ import annotations

import gc
import math
import selectors
import signal
import socket
import time
from collections.abc import Callable

import structlog

from airflow.jobs.triggerer_job_runner import TriggerEventEntry, TriggerLoggingFactory
from multitrigger.config import DEFAULT_LOOP, Config, LoopConfig
from multitrigger.restart import RestartPolicy
from multitrigger.interpreter_probe import loop_bootstrap_args
from multitrigger.supervisor.launch import loop_env
from multitrigger.supervisor.loop_process import read_order
from multitrigger.supervisor.output import OutputLimits
from multitrigger.supervisor.slot import LoopSlot, SlotSinks
from multitrigger.supervisor import prestart
from multitrigger.supervisor.zygote_pool import ZygotePool
from multitrigger.supervisor.settings import RunSettings
from multitrigger.supervisor.store import DatabaseUnavailable, TriggerStore, raise_if_unreachable

log = structlog.get_logger(__name__)

#: While new triggers keep arriving, claim again after this instead of a full claim interval.
BACKLOG_CLAIM_DELAY = 0.05
#: Each pass delivers loops' queued output lines for at most this long (then serves sockets again).
OUTPUT_SLICE = 0.01


class Supervisor:
    """Runs one loop per configured loop and routes every claimed trigger to its bundle's loop."""

    def __init__(self, config: Config, settings: RunSettings, store: TriggerStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.settings = settings
        self.store = store
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self._events: list[tuple[str, TriggerEventEntry]] = []
        self._failures: list[tuple[int, list[str] | None]] = []
        self._log_sink = store.log_line_consumer()
        self._signals: list[int] = []
        self._next_tick = 0.0
        self._db_down_since: float | None = None
        self._db_failures = 0
        self._exit_code = 0
        self.zygotes = ZygotePool(config, settings.state_dir, self.selector, clock=clock)
        self.slots = {name: self._make_slot(loop) for name, loop in config.loops.items()}
        self.routes: dict[int, str] = {}  # trigger id → loop name, decided once
        self._output_turn = 0

    # -- set-up -------------------------------------------------------------------------------

    def _make_slot(self, loop: LoopConfig) -> LoopSlot:
        home = self.settings.state_dir / "loops" / loop.name
        home.mkdir(parents=True, exist_ok=True)
        r = loop.restart
        return LoopSlot(
            name=loop.name,
            argv=loop_bootstrap_args(loop.python),
            env=loop_env(home),
            cwd=home,
            policy=RestartPolicy(r, clock=self.clock),
            sinks=SlotSinks(
                on_event=lambda name, entry: self._events.append((name, entry)),
                on_failure=lambda name, tid, tb: self._failures.append((tid, tb)),
                on_finished=self._on_finished,
                on_output=lambda name, pid, line: log.info(line, loop=name, pid=pid, source="loop output"),
                on_log_line=self._log_sink.send,
            ),
            hang_threshold=self.settings.runner_health_check_threshold,
            blame_file=home / "blame",
            poison_threshold=r.poison_threshold,
            limits=OutputLimits.of(self.settings),
            clock=self.clock,
        )

    def _install_signals(self) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = (wake_r, wake_w)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, _f: self._signals.append(s))

    # -- zygotes (multitrigger.loop.zygote): forked loops start in ~20 ms and share memory --------

    def _wanted(self, name: str, slot: LoopSlot) -> bool:
        """Should this loop run now? The default loop of a config where every bundle has its own
        loop often never gets a trigger: it starts with its first one (a fork: ~20 ms), not before,
        and saves a process (~30 MB PSS) until then. An "exec" default loop starts up front."""
        lazy = name == DEFAULT_LOOP and len(self.slots) > 1 and self.config.loops[name].start_method == "fork"
        return not lazy or bool(slot.assigned)

    def _waiting_for_zygote(self, slot: LoopSlot, now: float) -> bool:
        """A loop's first start waits (bounded) for its zygote: N exec'd loops cost N x 120 MB."""
        return self.zygotes.waiting(self.config.loops[slot.name], slot.stats.restarts == 0, now)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self.zygotes.start(prestart.take_prestarted())
        # Everything imported so far lives as long as the process: out of the collector's sight, a
        # full collection no longer walks Airflow's ~1600 modules (~0.25 s here, paid by whichever
        # event burst triggered it: measured on a 200-event batch, 0.29 s → 0.015 s).
        gc.collect()
        gc.freeze()
        log.info("multitrigger supervisor starting", loops=sorted(self.slots), job_id=self.store.job.id)
        while not self._signals and not self._exit_code:
            self._service(self._next_wakeup())
            self._reconcile()
        return self.shutdown()

    def _next_wakeup(self) -> float:
        now = self.clock()
        deadlines = [self._next_tick] + [s.poll_deadline() for s in self.slots.values()]
        deadlines += [s.relay.next_due() for s in self.slots.values()]
        for name, s in self.slots.items():  # a waiting loop's deadline is the pool's
            if s.process is None and self._wanted(name, s) and not self._waiting_for_zygote(s, now):
                deadlines.append(s.start_at)
        deadlines.append(self.zygotes.next_deadline(now))
        return max(0.0, min(deadlines) - now)

    def _service(self, timeout: float) -> None:
        # Requests and check-ins of every loop first; output and logs are read after them and
        # delivered last, within each loop's budget (a flood of log lines delays no one's events).
        for key, mask in sorted(self.selector.select(min(timeout, 1.0)), key=read_order):
            if key.data is None:  # the signal wake-up socket
                _drain(key.fileobj)
                continue
            proc, sock, reader = key.data
            if mask & selectors.EVENT_WRITE:
                proc.flush(self.selector)
            if mask & selectors.EVENT_READ:
                proc.service(self.selector, sock, reader)
        if (self._events or self._failures) and (self._db_down_since is None or self.clock() >= self._next_tick):
            self._with_db(self._persist_outcomes)
        self._deliver_output()

    def _deliver_output(self) -> None:
        """Deliver queued output lines for at most ``OUTPUT_SLICE``, each pass starting with the
        next loop, so no loop's lines always wait behind another's backlog."""
        slots = list(self.slots.values())
        self._output_turn = (self._output_turn + 1) % len(slots)
        deadline = self.clock() + OUTPUT_SLICE
        for slot in slots[self._output_turn:] + slots[: self._output_turn]:
            slot.relay.pump(deadline)

    def _reconcile(self) -> None:
        now = self.clock()
        self.zygotes.tend(now)
        for name, slot in self.slots.items():
            slot.answer_poll(self.selector, now)
            slot.reap(self.selector, now)
            slot.check_hang(now)
            if (slot.process is None and now >= slot.start_at and self._wanted(name, slot)
                    and not self._waiting_for_zygote(slot, now)):
                slot.zygote = self.zygotes.for_loop(self.config.loops[name])
                slot.start(self.selector)
        if now >= self._next_tick:
            self._next_tick = now + self.settings.claim_interval
            self._with_db(self._tick)

    def _tick(self) -> None:
        """Once per claim interval: clean, claim, route new triggers, cancel dropped ones, heartbeat."""
        self.store.clean_unused()
        held = self.store.claim()
        tracked = set(self.routes)
        for trigger_id in tracked - held:
            self.slots[self.routes[trigger_id]].cancel(trigger_id)
        if new := held - tracked:
            built = self.store.build(new)
            for workload, bundle in built:
                self._route(workload, bundle)
            if built and self.store.alone():
                # A backlog is claimed max_trigger_to_select_per_loop at a time: come back for the
                # rest at once, not a claim interval later (nothing built: no hurry, no spinning).
                # Only with no other live triggerer: that setting exists to spread triggers over
                # HA triggerers, and claiming again every 50 ms would take them all.
                self._next_tick = min(self._next_tick, self.clock() + BACKLOG_CLAIM_DELAY)
        self.store.heartbeat()

    def _route(self, workload, bundle: str | None) -> None:
        loop = self.config.loop_for_bundle(bundle)
        slot_config = self.config.loops[loop]
        if not slot_config.allows(workload.classpath):
            reason = f"trigger {workload.classpath} is not in loop {loop!r}'s allowed_triggers (bundle {bundle!r})"
            log.error("trigger refused", loop=loop, bundle=bundle, trigger_id=workload.id, reason=reason)
            self.store.submit_failures([(workload.id, [reason + "\n"])])
            return
        self.routes[workload.id] = loop
        log.info("trigger routed", loop=loop, bundle=bundle, trigger_id=workload.id, classpath=workload.classpath)
        self.slots[loop].add(workload)

    # -- outcomes -----------------------------------------------------------------------------

    def _persist_outcomes(self) -> None:
        """Persist events, then failures. On a DB outage they stay queued for the next try."""
        if self._events:
            persisted = set(self.store.submit_events([(e.trigger_id, e.event) for _, e in self._events]))
            events, self._events = self._events, []
            for loop, entry in events:
                if entry.persist_seq is not None and entry.trigger_id in persisted:
                    self.slots[loop].persisted(entry.persist_seq)
        if self._failures:
            self.store.submit_failures(self._failures)
            self._failures = []

    def _with_db(self, step: Callable[[], None]) -> None:
        """Run a DB step; on an outage retry with backoff, loops untouched, and give up past the limit.

        Giving up exits 1 so a service manager restarts the supervisor and, meanwhile, other
        triggerers take its triggers over (Airflow's HA).
        """
        now = self.clock()
        try:
            step()
        except Exception as err:
            try:
                raise_if_unreachable(err)
                raise
            except DatabaseUnavailable as down:
                self._db_down_since = self._db_down_since or now
                self._db_failures += 1
                self._next_tick = now + min(10.0, 0.5 * 2 ** min(self._db_failures, 5))
                outage = now - self._db_down_since
                log.error("metadata DB unreachable; retrying", error=str(down), outage=round(outage, 1),
                          queued_events=len(self._events), queued_failures=len(self._failures))
                if outage > self.settings.db_retry_limit:
                    log.critical("metadata DB unreachable for too long; exiting", limit=self.settings.db_retry_limit)
                    self._exit_code = 1
                return
        if self._db_down_since is not None:
            log.info("metadata DB reachable again", outage=round(now - self._db_down_since, 1))
        self._db_down_since, self._db_failures = None, 0

    def _on_finished(self, loop: str, trigger_id: int) -> None:
        self.routes.pop(trigger_id, None)
        if factory := self.store.logger_cache.get(trigger_id):  # closed after its queued lines
            self.slots[loop].relay.after(lambda: self._close_trigger_log(loop, trigger_id, factory))

    def _close_trigger_log(self, loop: str, trigger_id: int, factory: TriggerLoggingFactory) -> None:
        if self.store.logger_cache.get(trigger_id) is factory:
            del self.store.logger_cache[trigger_id]
        try:
            factory.upload_to_remote()
        except Exception:
            log.exception("failed to upload trigger logs", loop=loop, trigger_id=trigger_id)
        finally:
            factory.close()

    # -- shutdown -----------------------------------------------------------------------------

    def shutdown(self) -> int:
        """Stop loops (triggers cancelled without ``on_kill``), hand triggers back, exit.

        A second signal during the grace period kills every loop at once.
        """
        log.info("shutting down", signal=self._signals[0] if self._signals else None)
        first = len(self._signals)
        for slot in self.slots.values():
            if slot.process is not None:
                slot.process.signal(signal.SIGTERM)
        deadline = self.clock() + self.settings.shutdown_grace
        while any(s.process for s in self.slots.values()):
            forced = len(self._signals) > first or self.clock() > deadline
            for slot in self.slots.values():
                if forced and slot.process is not None:
                    slot.process.signal(signal.SIGKILL)
                if slot.reap(self.selector, self.clock()) is not None:
                    slot.start_at = math.inf
            self._service(0.05)
        self.zygotes.close()
        for slot in self.slots.values():
            slot.relay.flush()
        try:
            self.store.release(self.routes)
        except Exception:
            log.exception("could not hand triggers back; other triggerers take them after the health threshold")
        return self._exit_code


def _drain(sock) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass
