"""
Which trigger's code is running right now — readable after the loop process is dead.

A loop that dies (``os._exit``, SIGSEGV, OOM kill) or is killed for hanging (a trigger blocking
the event loop) cannot say why. So the loop keeps the id of the trigger whose code is executing
(a coroutine step, or its constructor) in 8 bytes of a small file it maps shared; the kernel keeps
that page even when the process is SIGKILLed, and the supervisor reads it after the exit to blame
the right trigger. ``0`` means the runner's own code (idle, or between steps): nobody to blame.

The slot also times each step (``enter``/``leave``): a step longer than ``long_step`` seconds
blocked the event loop, and ``on_long_step`` gets the culprit's id and the step's duration (see
``multitrigger.loop.health``). That is how a blocked-loop warning names its trigger.

A step's time does not count the garbage collector's pauses within it (a ``gc.callbacks`` hook
adds them up). A full collection walks every object of the loop, i.e. every trigger it holds: with
5,000 held, 0.2-0.3 s (issue 13, a 20,000-trigger start-up: four of its eight "blocked by trigger"
warnings had exactly a full collection's duration, and none was left without them). It runs in
whichever step allocated last, so it named a healthy trigger as the one that blocked. The lag
probe still sees the pause, as the runner's own (``health``: a lag no trigger's step explains).

Cost: two 8-byte writes and two ``perf_counter`` reads per coroutine step of a trigger; two reads
per collection.
"""

from __future__ import annotations

import collections.abc
import gc
import math
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_FORMAT = "<q"
_SIZE = struct.calcsize(_FORMAT)


class BlameSlot:
    """The writer side, in the loop process."""

    def __init__(self, path: Path, long_step: float = math.inf,
                 on_long_step: Callable[[int, float], None] | None = None) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self.long_step, self.on_long_step = long_step, on_long_step
        self._id, self._since = 0, 0.0
        self._collecting_since = 0.0
        self.collected_s = 0.0  # the garbage collector's pauses so far (wall seconds)
        self._gc_at_enter = 0.0
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        """Stop counting the collector's pauses (the mapping stays until the process exits)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._collecting_since = time.perf_counter()
        else:
            self.collected_s += time.perf_counter() - self._collecting_since

    def enter(self, trigger_id: int) -> None:
        """``trigger_id``'s code starts running (one step, or its constructor)."""
        struct.pack_into(_FORMAT, self._map, 0, trigger_id)
        self._id, self._since, self._gc_at_enter = trigger_id, time.perf_counter(), self.collected_s

    def leave(self) -> None:
        """The step ended; if its own code (the collector's pauses not counted) held the event loop
        past ``long_step``, report its trigger."""
        struct.pack_into(_FORMAT, self._map, 0, 0)
        took = time.perf_counter() - self._since - (self.collected_s - self._gc_at_enter)
        if took > self.long_step and self.on_long_step is not None and self._id:
            self.on_long_step(self._id, took)
        self._id = 0


def read_blame(path: Path) -> int:
    """The supervisor side: the trigger id last recorded in ``path`` (0 if none)."""
    try:
        data = path.read_bytes()[:_SIZE]
    except OSError:
        return 0
    return struct.unpack(_FORMAT, data)[0] if len(data) == _SIZE else 0


def reset_blame(path: Path) -> None:
    path.write_bytes(b"\0" * _SIZE)


class BlamedCoroutine(collections.abc.Coroutine):
    """Wraps a trigger's coroutine so every step records its trigger id in the blame slot."""

    __slots__ = ("_coro", "_id", "_slot")

    def __init__(self, coro: collections.abc.Coroutine, trigger_id: int, slot: BlameSlot) -> None:
        self._coro, self._id, self._slot = coro, trigger_id, slot

    def send(self, value: Any) -> Any:
        self._slot.enter(self._id)
        try:
            return self._coro.send(value)
        finally:
            self._slot.leave()

    def throw(self, *args: Any) -> Any:
        self._slot.enter(self._id)
        try:
            return self._coro.throw(*args)
        finally:
            self._slot.leave()

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:
        return self  # ``await`` drives it through ``send``/``throw`` too, so each step is blamed

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.send(None)
