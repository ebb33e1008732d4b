"""Triggers that misbehave on purpose, for crash-containment tests and benchmarks.

Each takes ``after`` (seconds to wait before misbehaving, default 0) so a test can start healthy
neighbours first. All are real ``BaseTrigger`` subclasses; what they do is real (a real
``os._exit``, a real SIGSEGV through ctypes, a really blocked event loop).
"""

from __future__ import annotations

import abc
import asyncio
import ctypes
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

_PREFIX = "mt_testsupport.crash_triggers"


class _Misbehaving(BaseTrigger):
    def __init__(self, after: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after = after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.{type(self).__name__}", {"after": self.after}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.after:
            await asyncio.sleep(self.after)
        self.misbehave()
        await asyncio.Event().wait()
        yield TriggerEvent(None)  # pragma: no cover

    @abc.abstractmethod
    def misbehave(self) -> None:
        """What each subclass does wrong."""


class ExitTrigger(_Misbehaving):
    """``os._exit(1)``: the whole loop process ends, no cleanup."""

    def misbehave(self) -> None:
        os._exit(1)


class KillLoopTrigger(_Misbehaving):
    """SIGKILL to its own loop process (what the OOM killer does)."""

    def misbehave(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class SegfaultTrigger(_Misbehaving):
    """A real segmentation fault: read address 0 through ctypes."""

    def misbehave(self) -> None:
        ctypes.string_at(0)


class SleepForeverTrigger(_Misbehaving):
    """``time.sleep`` inside ``async run()``: the event loop is blocked for good."""

    def misbehave(self) -> None:
        while True:
            time.sleep(3600)


class BusyLoopTrigger(_Misbehaving):
    """An endless CPU loop inside ``async run()``."""

    def misbehave(self) -> None:
        n = 0
        while True:
            n += 1


class BadInitTrigger(BaseTrigger):
    """A constructor that raises ``ValueError`` (Airflow #72758 crash-loops the stock triggerer)."""

    def __init__(self, after: float = 0.0, **kwargs: Any) -> None:
        raise ValueError("BadInitTrigger refuses to be constructed")

    def serialize(self) -> tuple[str, dict[str, Any]]:  # pragma: no cover - never constructed
        return f"{_PREFIX}.BadInitTrigger", {}

    async def run(self) -> AsyncIterator[TriggerEvent]:  # pragma: no cover
        yield TriggerEvent(None)


class PrintTrigger(_Misbehaving):
    """``print()`` from a trigger, then fire normally: output must not break the loop."""

    def misbehave(self) -> None:
        print("hello from PrintTrigger", flush=True)
        print("x" * 100_000, flush=True)  # one very long line

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.after:
            await asyncio.sleep(self.after)
        self.misbehave()
        yield TriggerEvent({"printed": True, "pid": os.getpid()})


class HugeIntTrigger(_Misbehaving):
    """Fires an event whose payload holds an int beyond 64 bits: JSON has it, the frame encoder
    (msgspec) raises ``OverflowError``. It must fail this trigger alone, not end its loop."""

    def misbehave(self) -> None:
        pass

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.after:
            await asyncio.sleep(self.after)
        yield TriggerEvent({"n": 2**70})


class BigEventTrigger(_Misbehaving):
    """Fires one event of 65 MiB: past the supervisor's frame limit (64 MiB). It must fail this
    trigger alone, not end its loop."""

    def misbehave(self) -> None:
        pass

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.after:
            await asyncio.sleep(self.after)
        yield TriggerEvent({"blob": "x" * (65 << 20)})


class GarbageTrigger(_Misbehaving):
    """Writes bytes that are not a frame onto the loop's request socket (fd 0), then blocks."""

    def misbehave(self) -> None:
        os.write(0, b"\xff\xff\xff\xf0 this is not a frame")
        time.sleep(3600)


class MemoryHogTrigger(_Misbehaving):
    """Allocates (and touches) memory until the kernel's OOM killer ends its loop.

    It raises its own ``oom_score_adj`` so that, in a memory-limited cgroup, the OOM killer picks
    its loop rather than a neighbour.
    """

    def misbehave(self) -> None:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
        hoard = []
        while True:
            hoard.append(b"\x01" * (32 * 1024 * 1024))


class SlowCleanupTrigger(BaseTrigger):
    """Waits forever; its ``cleanup()`` takes ``cleanup_seconds`` — it holds up a graceful stop.

    Writes ``running`` to ``marker_path`` once it runs, and appends ``cleanup`` when its cleanup starts.
    """

    def __init__(self, marker_path: str, cleanup_seconds: float = 120.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker_path, self.cleanup_seconds = marker_path, cleanup_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.SlowCleanupTrigger", {"marker_path": self.marker_path, "cleanup_seconds": self.cleanup_seconds}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        with open(self.marker_path, "w") as fh:
            fh.write("running\n")
        await asyncio.Event().wait()
        yield TriggerEvent(None)  # pragma: no cover

    async def cleanup(self) -> None:
        with open(self.marker_path, "a") as fh:
            fh.write("cleanup\n")
        await asyncio.sleep(self.cleanup_seconds)


class FloodTrigger(BaseTrigger):
    """Floods its loop's output, then fires: ``lines`` log lines of ``line_bytes`` each (a huge API
    response logged whole), one stdout line of ``stdout_line_bytes``, then ``stdout_bytes`` of
    1000-byte stdout lines. What the supervisor keeps of it must be bounded, and the trigger must
    still complete: its event carries ``flooded`` and its loop's pid. With ``record_path`` it
    appends ``start <epoch>`` / ``done <epoch>`` lines around the flood.
    """

    def __init__(self, after: float = 0.0, lines: int = 2, line_bytes: int = 256 << 20,
                 stdout_line_bytes: int = 32 << 20, stdout_bytes: int = 64 << 20, record_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after, self.lines, self.line_bytes = after, lines, line_bytes
        self.stdout_line_bytes, self.stdout_bytes, self.record_path = stdout_line_bytes, stdout_bytes, record_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.FloodTrigger", {
            "after": self.after, "lines": self.lines, "line_bytes": self.line_bytes,
            "stdout_line_bytes": self.stdout_line_bytes, "stdout_bytes": self.stdout_bytes,
            "record_path": self.record_path}

    def _record(self, word: str) -> None:
        if self.record_path:
            with open(self.record_path, "a") as fh:
                fh.write(f"{word} {time.time():.6f}\n")

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.after:
            await asyncio.sleep(self.after)
        self._record("start")
        started = time.monotonic()
        for i in range(self.lines):
            self.log.info("flood line %d: %s", i, "r" * self.line_bytes)
            await asyncio.sleep(0)
        print("S" * self.stdout_line_bytes, flush=True)
        line = "o" * 999
        for n in range(self.stdout_bytes // 1000):
            print(line)
            if n % 1000 == 0:
                await asyncio.sleep(0)
        sys.stdout.flush()
        self.log.info("flood done")
        self._record("done")
        yield TriggerEvent({"flooded": True, "pid": os.getpid(), "flood_s": round(time.monotonic() - started, 2)})


class BlockOnceTrigger(_Misbehaving):
    """Blocks its event loop once for ``seconds`` (a ``time.sleep`` in async code), then waits.

    Short enough that the loop is never killed for hanging: a blocked episode to be named, with
    its trigger, in the loop's health report.
    """

    def __init__(self, after: float = 0.0, seconds: float = 1.0, **kwargs: Any) -> None:
        super().__init__(after=after, **kwargs)
        self.seconds = seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.BlockOnceTrigger", {"after": self.after, "seconds": self.seconds}

    def misbehave(self) -> None:
        time.sleep(self.seconds)


class SlowInitTrigger(_Misbehaving):
    """Its constructor blocks the event loop for ``seconds`` (creation is user code too), then it
    waits: the blocked episode must name it although no coroutine step of it has run yet."""

    def __init__(self, after: float = 0.0, seconds: float = 1.0, **kwargs: Any) -> None:
        super().__init__(after=after, **kwargs)
        self.seconds = seconds
        time.sleep(seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.SlowInitTrigger", {"after": self.after, "seconds": self.seconds}

    def misbehave(self) -> None:
        pass


class PrintAndWaitTrigger(_Misbehaving):
    """``print()`` to stdout and to stderr (one partial line too), then waits: its output belongs
    in its own log file."""

    def misbehave(self) -> None:
        print("hello from PrintAndWaitTrigger on stdout")
        sys.stdout.write("a partial ")
        sys.stdout.write("line, completed\n")
        print("hello from PrintAndWaitTrigger on stderr", file=sys.stderr)
