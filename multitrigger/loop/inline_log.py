"""
The runner's ``await self.log.ainfo(...)`` records, made in the calling thread instead of a thread pool.

Checked against Airflow 3.3.2 (``TriggerRunner.run_trigger``) and structlog 26.1.0 (``_native.py``).

Stock ``run_trigger`` logs two records per trigger with structlog's async methods: "Trigger fired
event" (before it queues the event) and "trigger completed". Each ``ainfo`` hands the record to the
default thread pool (``run_in_executor``) and awaits it: a future, a pool thread taking the GIL
from the event loop, a thread-safe wake-up back. In a burst of a thousand firing triggers that hop
was ~17 % of the loop's CPU (py-spy, issue 13), and every event waited for it before it was queued.

``InlineLogger`` wraps the runner's logger; its ``a<level>`` methods make the same record in the
event loop's thread, exactly as structlog's async method would in the pool thread: the
message interpolated the same way, the call site (``filename``/``lineno``) taken from the awaiting
frame (``_ASYNC_CALLING_STACK``, as structlog sets it), the same contextvars (the caller's: structlog
copies them for the pool), the same thread. The record's bytes are the same but for its timestamp.
A record without positional arguments is made by ``multitrigger.loop.fused_log`` (stock's chain
with three steps whose inputs are known here done directly). A call with ``exc_info`` still goes
through the pool (from the same call site): there stock's ``sys.exc_info()`` is the pool thread's
(empty, no traceback rendered), and so it stays.

Every record still yields to the event loop once (``asyncio.sleep(0)``), as stock's await on the
pool does: a trigger that yields events without awaiting lets the others run between them. The turn
comes first and the record is made when the caller resumes, as stock's is made in the pool while
its caller waits. In a burst that is where the main loop's push runs: the events queued so far go
to the supervisor before every firing trigger's "trigger completed" record is made, not after
(issue 13). A cancel (or a close) during the turn still writes the record, then goes on, as
stock's pool job runs once started; an error of the record's own is then dropped, as stock drops
the pool's (the cancel must reach ``run_trigger``'s ``except CancelledError``: ``on_kill``). Stock
loses the record of a cancelled await whose pool job had not started yet; here it is never lost. A
structlog without those private names (a bundle venv's own) gets stock's logger unwrapped.

The trade: the record is written to the log socket by the event loop's thread. If the supervisor
did not read that socket for long enough to fill it, the loop waits for it (as it already does for
every synchronous ``log.info`` of the runner and of triggers); the supervisor reads every loop's log
socket on each pass, whatever its delivery budget (``supervisor.relay``).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from contextlib import suppress
from typing import Any

try:  # structlog's private names (26.1.0); a bundle venv's other structlog may lack them: stock's pool then
    from structlog.contextvars import _ASYNC_CALLING_STACK, _ASYNC_CALLING_THREAD
except ImportError:  # pragma: no cover - depends on the venv's structlog
    _ASYNC_CALLING_STACK = _ASYNC_CALLING_THREAD = None
try:  # private names of structlog and Airflow's logging (checked versions in its docstring)
    from multitrigger.loop import fused_log
    _emit = fused_log.emit
except (ImportError, AttributeError):  # pragma: no cover - depends on the venv's structlog / Airflow
    _emit = None


def inline(logger: Any) -> Any:
    """``InlineLogger(logger)``, or *logger* itself where this structlog has not the names it needs."""
    return logger if _ASYNC_CALLING_STACK is None else InlineLogger(logger)


class InlineLogger:
    """A structlog logger whose async level methods log synchronously (see the module docstring)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def _log(self, level: str, event: str, args: tuple, kw: dict[str, Any]) -> None:
        # The frame awaiting a<level>() (0: this one, 1: a<level>), where structlog's async method
        # takes the call site from; and the calling thread, as it records it.
        caller = sys._getframe(2)
        stack = _ASYNC_CALLING_STACK.set(caller)
        thread = _ASYNC_CALLING_THREAD.set((threading.get_ident(), threading.current_thread().name))
        try:
            if "exc_info" not in kw:
                # Stock's await on the pool always gives the loop a turn (other triggers, the poll,
                # a cancel land here): a trigger yielding events without awaiting must not hold the
                # loop for its whole run because its records no longer hop. The turn first, the
                # record after it (the main loop's push goes first; see the module docstring).
                try:
                    await asyncio.sleep(0)
                except BaseException:  # cancelled, or closed: stock's pool job still runs, its error is dropped
                    with suppress(Exception):
                        self._record(level, event, args, kw, caller)
                    raise
                self._record(level, event, args, kw, caller)
                return
            method = getattr(self._inner, level)
            ctx = contextvars.copy_context()  # stock's pool hop, where sys.exc_info() is empty
            await asyncio.get_running_loop().run_in_executor(None, lambda: ctx.run(lambda: method(event, *args, **kw)))
        finally:
            _ASYNC_CALLING_THREAD.reset(thread)
            _ASYNC_CALLING_STACK.reset(stack)

    def _record(self, level: str, event: str, args: tuple, kw: dict[str, Any], caller: Any) -> None:
        if args or _emit is None or not _emit(self._inner, level, event, kw, caller):
            getattr(self._inner, level)(event, *args, **kw)

    async def adebug(self, event: str, *args: Any, **kw: Any) -> None:
        await self._log("debug", event, args, kw)

    async def ainfo(self, event: str, *args: Any, **kw: Any) -> None:
        await self._log("info", event, args, kw)

    async def awarning(self, event: str, *args: Any, **kw: Any) -> None:
        await self._log("warning", event, args, kw)

    async def aerror(self, event: str, *args: Any, **kw: Any) -> None:
        await self._log("error", event, args, kw)
