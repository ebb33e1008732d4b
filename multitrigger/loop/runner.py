"""
The loop child's trigger runner: Airflow's stock ``TriggerRunner`` with a faster check-in.

Checked against Airflow 3.3.2 (``airflow.jobs.triggerer_job_runner.TriggerRunner``).

Everything that gives triggers their semantics is inherited unchanged: ``create_triggers`` (class
import, kwargs decoding, templated fields for ``start_from_trigger``), ``run_trigger`` (timeouts,
``on_kill`` on user action, ``cleanup``, greenback portal for sync SDK calls), ``cancel_triggers``,
``cleanup_finished_triggers`` (stock's, over the triggers whose task ended: below) and the comms decoder.

The stock blocked-loop watchdog (``block_watchdog``) is replaced by ``multitrigger.loop.health``'s
lag probe, which also names the trigger that blocked; polls carry its report. ``print()`` from a
trigger goes to that trigger's log (``multitrigger.loop.output``). The runner's async log records
("Trigger fired event", "trigger completed") are made in the loop's thread, not a thread pool
(``multitrigger.loop.inline_log``): the same records, without a thread hop per record; and the
chain that makes them has a cheaper ``redact_jwt`` (``multitrigger.log_processors``).

``cleanup_finished_triggers`` is stock's sweep over the triggers whose task ended since the last one
(each task's done callback says which; ``multitrigger.loop.sweep``): stock walks every trigger with
an ``asyncio.sleep(0)`` each on every check-in, thousands of loop iterations per trigger ended.

Each trigger's span is stock's; with tracing off, the no-op span is made current without stock's
three generator context managers (``multitrigger.loop.trace_span``).

The garbage collector runs when the event loop has nothing ready, not in the middle of a burst
(``multitrigger.loop.idle_gc``).

``process_trigger_events`` builds the usual push of fired events without pydantic's validation
and dump (``multitrigger.loop.state_sync``, the same frame).

``get_trigger_by_classpath`` only adds, to an import error, where the loop looked
(``multitrigger.loop.sys_path.where_looked``). ``init_comms`` is stock's but hands the comms decoder
its three decoders (two pydantic ``TypeAdapter``s, one msgspec decoder) built once, when this module
is imported (in a zygote: before the fork, so every forked loop shares them): stock builds them per
``TriggerCommsDecoder``, i.e. in each loop after the fork, where they cost ~5 MB of private memory
per loop (measured, Airflow 3.3.2).
Only the main loop (``arun``) is replaced, because the stock one checks in once a second:

* a **poll task** keeps one empty ``TriggerStateChanges`` outstanding; the supervisor answers it
  when it has work for this loop (see ``multitrigger.protocol``), so new triggers and cancels arrive
  in milliseconds;
* the **main loop** sleeps on a wake-up event that is set when a trigger fires, fails or finishes,
  or when the poll brings work, one loop iteration later (``_woken``); it pushes the events, then
  sweeps the triggers that ended and pushes what the sweep found.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from pathlib import Path
from typing import Any

import msgspec
from pydantic import TypeAdapter

from airflow.jobs.triggerer_job_runner import ToTriggerRunner, TriggerCommsDecoder, TriggerRunner, _new_encoder, messages
from airflow.sdk.execution_time.comms import ToTask, _ResponseFrame
from multitrigger import log_processors
from multitrigger.loop import frame_bound, idle_gc, state_sync, sweep, sys_path, trace_span
from multitrigger.loop.blame import BlamedCoroutine, BlameSlot
from multitrigger.loop.health import LoopHealth
from multitrigger.loop.inline_log import inline
from multitrigger.loop.output import attribute_output, finishing_output
from multitrigger.protocol import ENV_BLAME_FILE, HEALTH_KEY

#: Even with nothing to do, the main loop runs this often (finished-task sweep, status logs).
IDLE_SECONDS = 1.0
#: What the frame encoder (msgspec) raises for a value JSON has but it cannot encode.
UNENCODABLE = (OverflowError, UnicodeEncodeError)


#: ``TriggerCommsDecoder``'s decoders, as its attrs factories build them (its ``err_decoder`` is
#: ``TypeAdapter(ToTask)`` in stock too). One each per process, as stock has one each per comms
#: decoder, which every thread of the loop uses. The msgpack frame decoder costs ~1 MB when it is
#: the process's first for ``_ResponseFrame`` (msgspec's per-type state), ~0.2 MB after.
_BODY_DECODER: TypeAdapter = TypeAdapter(ToTriggerRunner)
_ERR_DECODER: TypeAdapter = TypeAdapter(ToTask)
_RESP_DECODER: msgspec.msgpack.Decoder = msgspec.msgpack.Decoder(_ResponseFrame)


class _WakingDeque(deque):
    """A deque that calls ``on_append`` whenever something is appended to it."""

    def __init__(self, on_append: Callable[[], None]) -> None:
        super().__init__()
        self._on_append = on_append

    def append(self, item: Any) -> None:
        super().append(item)
        self._on_append()


def _any_unencodable(entries: Any) -> bool:
    """What stock's ``sanitize_trigger_events`` tests: does some event not encode on its own?"""
    encoder = _new_encoder()
    for entry in entries:
        try:
            encoder.encode(entry.event)
        except Exception:  # noqa: BLE001 - stock's test, stock's breadth
            return True
    return False


def _encodable(tb: list[str] | None) -> list[str] | None:
    """A failure's traceback lines as stock sends them, a lone surrogate escaped (``\\udcff``)."""
    if tb is None:
        return None
    return [line.encode("utf-8", "backslashreplace").decode("utf-8") for line in tb]


class _Poll(messages.TriggerStateChanges):
    """A poll with the loop's health report under ``HEALTH_KEY`` (see ``multitrigger.protocol``)."""

    multitrigger_health: dict[str, Any] | None = None


assert HEALTH_KEY in _Poll.model_fields


class LoopRunner(TriggerRunner):
    """Stock ``TriggerRunner`` semantics; events leave the loop as soon as they fire."""

    def __init__(self) -> None:
        super().__init__()
        self.log = inline(self.log)  # type: ignore[assignment]  # stock's ainfo records, without the pool
        log_processors.use_in_structlog()  # the same records, a cheaper redact_jwt
        trace_span.install()  # the same span; a no-op one without its three context managers
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.events = _WakingDeque(self._request_wake)
        self.failed_triggers = _WakingDeque(self._request_wake)
        # The poll task parks new work here; only the main loop moves it into to_create/to_cancel,
        # so creation (below) sees one workload at a time and blames the right one.
        self._inbox: list[messages.TriggerStateSync] = []
        # Trigger ids whose task ended (each task's done callback), in that order: what the sweep
        # looks at (``cleanup_finished_triggers``).
        self._ended: dict[int, None] = {}
        self.health = LoopHealth(self.blocked_main_thread_warning_threshold)
        blame_path = os.environ.get(ENV_BLAME_FILE)
        self.blame = (BlameSlot(Path(blame_path), self.blocked_main_thread_warning_threshold, self.health.long_step)
                      if blame_path else None)
        attribute_output()

    def _request_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _handle_signal(self, signum: int, frame: Any) -> None:
        super()._handle_signal(signum, frame)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._request_wake)

    async def init_comms(self) -> None:
        """Stock ``TriggerRunner.init_comms`` (Airflow 3.3.2) with the shared decoders, and a writer
        that refuses a frame the supervisor would take for a broken loop (``frame_bound``)."""
        from airflow.sdk.execution_time import task_runner

        reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=0))
        writer = frame_bound.BoundedWriter(writer)  # a frame the supervisor would refuse is never sent
        self.comms_decoder = TriggerCommsDecoder(async_writer=writer, async_reader=reader, resp_decoder=_RESP_DECODER,
                                                 body_decoder=_BODY_DECODER, err_decoder=_ERR_DECODER)
        task_runner.SUPERVISOR_COMMS = self.comms_decoder
        msg = self.comms_decoder._from_frame(await self.comms_decoder._aread_frame())
        if not isinstance(msg, messages.StartTriggerer):
            raise RuntimeError(f"Required first message to be a messages.StartTriggerer, it was {msg}")
        await self.comms_decoder.start_reader()

    async def arun(self) -> None:
        """Run triggers until told to stop; see the module docstring for the check-in scheme."""
        await self.init_comms()
        self._loop = asyncio.get_running_loop()
        idle_gc.install(self._loop)  # collections wait for the loop's idle moments (loop.idle_gc)
        self._wake = asyncio.Event()
        watchdog = asyncio.create_task(self.block_watchdog(), name="block-watchdog")
        poller = asyncio.create_task(self._poll_forever(), name="supervisor-poll")
        last_status = time.monotonic()
        try:
            while not self.stop:
                self._raise_if_dead(watchdog, poller)
                await self._sync_once()
                await self._woken(IDLE_SECONDS)
                self._wake.clear()
                if (now := time.monotonic()) - last_status >= 60:
                    self.log.info("%i triggers currently running", len(self.triggers))
                    last_status = now
                    # A task no done callback reported (none known; a safety net): swept next pass.
                    self._ended.update((tid, None) for tid, d in self.triggers.items() if d["task"].done())
        finally:
            # Stopping: what is alive now lives until the process exits. Out of the collector's
            # sight, the cancellation of every trigger below (stock's, in asyncio.run) no longer pays
            # for full collections over all of them: a loop with ~1666 triggers stopped in ~0.55 s
            # instead of ~0.8 s (the SIGTERM hand-over, issue 13). New garbage is still collected.
            gc.freeze()
            await self._stop_comms(poller)
            await self._shared_streams.stop_all()
        await watchdog

    async def _stop_comms(self, poller: asyncio.Task) -> None:
        """Stop the poll task and the comms reader, both cancelled before either is awaited.

        Cancelling and awaiting the poll first (as this did) let the reader run once more in
        between: an answer to that poll already read (the supervisor answers a held poll after
        ``POLL_HOLD_SECONDS``; a loop blocked when told to stop has it waiting) found its request
        given up and was logged as a warning, "Got response for unknown request frame", at every
        such stop. Cancelled first, the reader reads nothing more."""
        tasks = [t for t in (self.comms_decoder._reader_task, poller) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task

    async def _woken(self, timeout: float) -> None:
        """Until something wakes the main loop, or ``timeout``: one loop iteration after the wake-up.

        Not ``asyncio.wait_for(event.wait(), timeout)``: that wraps the wait in a task of its own,
        so a wake-up reaches the main loop three loop iterations later; each is a step of every
        trigger that is ready, so in a burst the first events waited for the last trigger to finish."""
        assert self._wake is not None and self._loop is not None
        timer = self._loop.call_later(timeout, self._request_wake)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    def _raise_if_dead(self, *tasks: asyncio.Task) -> None:
        for task in tasks:
            if task.done():
                task.result()
                raise RuntimeError(f"{task.get_name()} task exited")
        if self.comms_decoder._reader_task.done():
            self.comms_decoder._reader_task.result()
            raise RuntimeError("Supervisor connection lost")

    async def _sync_once(self) -> None:
        for resp in self._inbox:
            self.to_create.extend(resp.to_create)
            self.to_cancel.extend(resp.to_cancel)
        self._inbox.clear()
        if self.events or self.failed_triggers:  # events first: the sweep yields once per trigger ended
            await self.sync_state_to_supervisor([])
        finished = await self.cleanup_finished_triggers()
        if finished or self.events or self.failed_triggers:
            # Stock code path: builds TriggerStateChanges, sanitises unserialisable events.
            await self.sync_state_to_supervisor(finished)
        await self.create_triggers()
        await self.cancel_triggers()

    def process_trigger_events(self, finished_ids: list[int]) -> messages.TriggerStateChanges:
        """Stock's message; fired events with plain payloads and no failures built without
        validation (``multitrigger.loop.state_sync``: the same frame)."""
        if not self.failed_triggers:
            events = list(self.events)
            if (msg := state_sync.changes(events, finished_ids)) is not None:
                for _ in events:  # nothing else runs in between: no await (stock pops one by one too)
                    self.events.popleft()
                return msg
        msg = super().process_trigger_events(finished_ids)
        if msg.failures:  # a traceback holding a lone surrogate (a path, an env value) would not encode
            msg.failures = [(tid, _encodable(tb)) for tid, tb in msg.failures]
        return msg

    async def asend(self, msg: messages.TriggerStateChanges) -> messages.TriggerStateSync | None:
        """Stock's; a push holding an event whose payload the frame encoder cannot encode (an int
        beyond 64 bits: ``OverflowError``; a lone surrogate: ``UnicodeEncodeError``) is sent again
        through stock's ``sanitize_trigger_events``, as stock's ``sync_state_to_supervisor`` does for
        the errors it catches: that event is dropped and its trigger failed alone. Stock lets these
        two escape, which ends the runner: here the loop, so every trigger of its bundle. Only when
        an event fails stock's own test (``_new_encoder``, Airflow 3.3.2); anything else is raised
        as it was (failures' tracebacks are made encodable in ``process_trigger_events``)."""
        try:
            return await super().asend(msg)
        except UNENCODABLE:
            if isinstance(msg, _Poll) or not _any_unencodable(msg.events or ()):
                raise
            sanitized = self.sanitize_trigger_events(msg)
            if not (sanitized.events or sanitized.failures or sanitized.finished):
                return None  # nothing left: an empty push would be taken for a poll; the failure goes next
            return await self.asend(sanitized)
        except frame_bound.FrameTooLarge as err:  # split, or fail the one event (``frame_bound``)
            if isinstance(msg, _Poll) or not msg.events:
                raise
            if len(msg.events) == 1:
                self.log.error("Trigger returned an event too large to send. Cancelling trigger.",
                               trigger_id=msg.events[0].trigger_id, error=str(err))
                return await self.asend(frame_bound.too_large(msg, err))
            first, rest = frame_bound.halves(msg)
            self._take(await self.asend(first))
            return await self.asend(rest)

    def _take(self, resp: messages.TriggerStateSync | None) -> None:
        """What stock's ``sync_state_to_supervisor`` does with its answer, for a split push's first part."""
        if resp:
            self.to_create.extend(resp.to_create)
            self.to_cancel.extend(resp.to_cancel)
            if resp.events_persisted:
                self._shared_streams.confirm_persisted(resp.events_persisted)

    async def create_triggers(self) -> None:
        """Create triggers one workload at a time, under blame, each failure its own.

        Stock ``create_triggers`` catches only ``TypeError`` from a trigger's constructor; any other
        exception escapes and kills the whole runner (Airflow #72758). Here it fails that trigger.
        """
        while self.to_create:
            workload = self.to_create.popleft()
            queue, self.to_create = self.to_create, deque([workload])
            known = self.triggers.get(workload.id)
            try:
                creating = super().create_triggers()
                # Each step of stock's creation (class import, constructor) is timed and blamed on
                # this workload; its ``asyncio.sleep(0)`` between them lets other triggers run.
                await (BlamedCoroutine(creating, workload.id, self.blame) if self.blame else creating)
                if (made := self.triggers.get(workload.id)) is not None and made is not known:
                    self._watch(workload.id, made["task"])
            except Exception as err:
                self.log.error("Trigger failed to inflate", error=err, trigger_id=workload.id)
                self.failed_triggers.append((workload.id, err))
            finally:
                self.to_create = queue

    def get_trigger_by_classpath(self, classpath: str) -> Any:
        """Stock import (and cache); a class that does not import fails its trigger (stock), with
        the places this loop looked appended to the error its task gets."""
        try:
            return super().get_trigger_by_classpath(classpath)
        except ImportError as err:
            raise ImportError(f"cannot import trigger class {classpath!r}: {err}\n{sys_path.where_looked()}",
                              name=err.name, path=err.path) from err

    def run_trigger(self, trigger_id: int, *args: Any, **kwargs: Any) -> Coroutine:  # type: ignore[override]
        coro = finishing_output(super().run_trigger(trigger_id, *args, **kwargs), trigger_id)
        return BlamedCoroutine(coro, trigger_id, self.blame) if self.blame else coro

    async def block_watchdog(self) -> None:
        """Stock's watchdog, replaced: the lag probe (``multitrigger.loop.health``)."""
        await self.health.probe(lambda: self.stop)

    def _watch(self, trigger_id: int, task: asyncio.Task) -> None:
        """Note this trigger when its task ends, and wake the main loop, so 'finished' is reported at once."""
        task.add_done_callback(lambda _task: self._task_ended(trigger_id))

    def _task_ended(self, trigger_id: int) -> None:
        self._ended[trigger_id] = None
        self._request_wake()

    async def cleanup_finished_triggers(self) -> list[int]:
        """Stock's sweep over the triggers whose task ended since the last one (``loop.sweep``).

        Stock walks every trigger on every check-in, with an ``asyncio.sleep(0)`` per trigger: with
        thousands held, each push and each batch of new triggers cost thousands of loop iterations
        (start-up, a takeover, a burst) though few or none had ended. What it reports for those that
        ended is stock's. The set is taken before the sweep, so a task that ends during it is swept
        next time (its callback wakes the loop), as stock would find it at its next check-in."""
        if not self._ended:
            return []
        ended, self._ended = list(self._ended), {}
        return await sweep.sweep(self, ended)

    async def _poll_forever(self) -> None:
        while not self.stop:
            report = self.health.report()
            resp = await self.asend(_Poll(multitrigger_health=report.to_body() if report else None))
            if resp is None:
                return
            self._inbox.append(resp)
            if resp.events_persisted:
                self._shared_streams.confirm_persisted(resp.events_persisted)
            if resp.to_create or resp.to_cancel:
                self._request_wake()

