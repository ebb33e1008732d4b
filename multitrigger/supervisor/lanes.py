"""
Work the selector thread must never wait for, each kind on a thread of its own (a "lane").

Why: the supervisor's one selector serves every team's loop. If it waited on the metadata DB (a
claim, a persist, a heartbeat, a loop's GetConnection) or on remote log storage, a slow or
black-holed database would freeze every loop's check-ins, and the supervisor's own stall would
look like every loop hanging. So the selector thread only *submits* steps to a lane and later runs
their completions; a lane runs its steps one at a time, in order, on its own thread.

A completed step wakes the selector through ``wake`` (a byte on the supervisor's wake-up socket)
and its ``on_done`` callback runs on the selector thread (``run_completions``), so supervisor state
is only ever touched by that one thread. A lane also says how long its current step has been
running (``busy_for``): a step that never returns is noticed even if no bound fires.

``concurrent.futures.ThreadPoolExecutor`` is close, but its completions run on the worker thread
and it cannot say which step is stuck for how long; this is ~60 lines of standard library.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass
class Done(Generic[T]):
    """What a step returned, or the exception it raised."""

    value: T | None = None
    error: BaseException | None = None


@dataclass
class _Step:
    name: str
    fn: Callable[[], Any]
    on_done: Callable[[Done[Any]], None]
    result: Done[Any] | None = None


class Lane:
    """One worker thread running submitted steps in order."""

    def __init__(self, name: str, wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._wake = wake
        self._clock = clock
        self._todo: queue.SimpleQueue[_Step | None] = queue.SimpleQueue()
        self._done: deque[_Step] = deque()
        self._pending = 0  # submitted, completion not yet run (selector thread only)
        self._current: tuple[str, float] | None = None
        self._thread = threading.Thread(target=self._work, name=f"multitrigger-{name}", daemon=True)
        self._thread.start()

    def submit(self, name: str, fn: Callable[[], T], on_done: Callable[[Done[T]], None]) -> None:
        self._pending += 1
        self._todo.put(_Step(name, fn, on_done))

    @property
    def idle(self) -> bool:
        """Nothing submitted is still waiting for its completion."""
        return self._pending == 0

    def busy_for(self) -> tuple[str, float] | None:
        """The step running now and for how many seconds, if any."""
        current = self._current
        return (current[0], self._clock() - current[1]) if current else None

    def run_completions(self) -> None:
        """Run the ``on_done`` of every finished step, on the calling (selector) thread."""
        while self._done:
            step = self._done.popleft()
            self._pending -= 1
            assert step.result is not None
            try:
                step.on_done(step.result)
            except Exception:
                log.exception("completion failed", lane=self.name, step=step.name)

    def close(self) -> None:
        """Stop after the queued steps (the thread is a daemon: a step stuck forever is abandoned)."""
        self._todo.put(None)

    def _work(self) -> None:
        while (step := self._todo.get()) is not None:
            self._current = (step.name, self._clock())
            try:
                step.result = Done(value=step.fn())
            except BaseException as err:  # noqa: BLE001 - handed to on_done on the selector thread
                step.result = Done(error=err)
            self._current = None
            self._done.append(step)
            self._wake()
