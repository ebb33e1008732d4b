"""
A trigger's ``print()`` and stderr land in that trigger's own log (the one the UI shows).

In a loop, stdout and stderr are a socket the supervisor reads as the loop's output and writes to
its own log with the loop's name. A trigger's output belongs to the trigger, so ``sys.stdout`` and
``sys.stderr`` are replaced by ``AttributedStream``: a write made while a trigger's code runs (the
``trigger_id`` that the stock ``run_trigger`` binds into structlog's context variables, which also
follow the trigger into ``asyncio.to_thread`` and greenback's sync calls) becomes a log record of
that trigger, line by line, which the supervisor files under the trigger's log like any other
(stock ``_process_log_messages_from_subprocess`` routes by ``trigger_id``). A write with no
trigger running goes to the real stream, so to the supervisor's log, tagged with the loop.

Checked against Airflow 3.3.2 (``TriggerRunner.run_trigger``'s ``bind_log_contextvars``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Coroutine
from typing import Any, TextIO

import structlog
from structlog.contextvars import bound_contextvars, get_contextvars

#: A partial line longer than this is written out without waiting for its newline.
MAX_PENDING_CHARS = 64 * 1024


class AttributedStream:
    """A text stream that sends the running trigger's lines to its log, the rest to ``raw``."""

    def __init__(self, raw: TextIO, name: str) -> None:
        self._raw, self._name = raw, name
        self._pending: dict[int, str] = {}
        self._lock = threading.Lock()
        self._inside = threading.local()
        self._log = structlog.get_logger(f"airflow.triggers.{name}")

    def write(self, text: str) -> int:
        trigger_id = get_contextvars().get("trigger_id")
        if not trigger_id or getattr(self._inside, "active", False):
            return self._raw.write(text)
        written = len(text)
        with self._lock:
            text = self._pending.pop(trigger_id, "") + text
            *lines, rest = text.split("\n")
            if len(rest) > MAX_PENDING_CHARS:
                lines, rest = [*lines, rest], ""
            if rest:
                self._pending[trigger_id] = rest
        for line in lines:
            self._emit(trigger_id, line)
        return written

    def _emit(self, trigger_id: int, line: str) -> None:
        self._inside.active = True  # a logging error that prints goes to the real stream
        try:
            self._log.info(line, stream=self._name, printed_by_trigger=trigger_id)
        finally:
            self._inside.active = False

    def flush(self) -> None:
        trigger_id = get_contextvars().get("trigger_id")
        if trigger_id:
            with self._lock:
                rest = self._pending.pop(trigger_id, "")
            if rest:
                self._emit(trigger_id, rest)
        self._raw.flush()

    def finish(self, trigger_id: int) -> None:
        """The trigger ended: what it wrote after its last newline is a line of its log too."""
        with self._lock:
            rest = self._pending.pop(trigger_id, "")
        if rest:
            with bound_contextvars(trigger_id=trigger_id):
                self._emit(trigger_id, rest)

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, isatty, buffer...
        return getattr(self._raw, name)


async def finishing_output(coro: Coroutine, trigger_id: int) -> Any:
    """Run a trigger's coroutine; when it ends (event, failure, cancel), emit its partial lines."""
    try:
        return await coro
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, AttributedStream):
                stream.finish(trigger_id)


def attribute_output() -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` (once, in the loop child)."""
    if not isinstance(sys.stdout, AttributedStream):
        sys.stdout = AttributedStream(sys.stdout, "stdout")  # type: ignore[assignment]
    if not isinstance(sys.stderr, AttributedStream):
        sys.stderr = AttributedStream(sys.stderr, "stderr")  # type: ignore[assignment]
