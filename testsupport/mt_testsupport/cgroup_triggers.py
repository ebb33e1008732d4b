"""Triggers that press on their loop's cgroup limits (tests/test_cgroups_v1.py, benchmarks).

Each does the real thing: forks until the kernel refuses, burns CPU in child processes, starts a
``sleep`` in a new session. Each writes what happened to ``record_path`` (JSON lines) so the test
can check it even when the loop dies.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

_PREFIX = "mt_testsupport.cgroup_triggers"


def _append(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _lines(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


class ForkBombTrigger(BaseTrigger):
    """Forks (children just sleep) until ``fork`` fails or ``bound`` children exist; records the
    count and the errno, kills its children and fires with the same."""

    def __init__(self, record_path: str, bound: int = 400, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_path, self.bound = record_path, bound

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.ForkBombTrigger", {"record_path": self.record_path, "bound": self.bound}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        children: list[int] = []
        error: str | None = None
        while len(children) < self.bound:
            try:
                pid = os.fork()
            except OSError as err:
                error = os.strerror(err.errno) if err.errno else str(err)
                error = f"{err.errno}:{error}"
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
        record = {"forked": len(children), "error": error}
        _append(self.record_path, record)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)
        yield TriggerEvent(record)


class CpuBurnTrigger(BaseTrigger):
    """Runs ``processes`` busy-looping children for ``seconds``, then fires. The event loop itself
    stays free (the children burn), so only the cgroup's CPU quota holds the loop back."""

    def __init__(self, seconds: float = 6.0, processes: int = 2, record_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds, self.processes, self.record_path = seconds, processes, record_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.CpuBurnTrigger", {"seconds": self.seconds, "processes": self.processes,
                                             "record_path": self.record_path}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.processes)]
        if self.record_path:
            _append(self.record_path, {"burning": [p.pid for p in burners], "at": time.time()})
        try:
            await asyncio.sleep(self.seconds)
        finally:
            for p in burners:
                p.kill()
                p.wait()
        yield TriggerEvent({"burned": self.seconds})


class SessionSleeperTrigger(BaseTrigger):
    """Starts ``sleep 600`` in a new session (as a CLI a trigger shells out to might) and records
    its pid. On its first run it then SIGKILLs its own loop (the loop restarts and gets the trigger
    back); on later runs it waits forever. Either way the sleep is nobody's child any more."""

    def __init__(self, record_path: str, kill_after: float = 3.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_path, self.kill_after = record_path, kill_after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.SessionSleeperTrigger", {"record_path": self.record_path, "kill_after": self.kill_after}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        first = not _lines(self.record_path)
        sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
        _append(self.record_path, {"sleep_pid": sleeper.pid, "loop_pid": os.getpid()})
        if first:
            await asyncio.sleep(self.kill_after)  # > leftovers.NOTE_EVERY: a loop without a cgroup saw it
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.Event().wait()
        yield TriggerEvent({})  # pragma: no cover


class MemoryGrowTrigger(BaseTrigger):
    """Grows to ``target_mib`` (touched pages, ``step_mib`` every ``step_s``), holds it for
    ``hold_s``, then fires. Bounded, so an unlimited triggerer (stock) grows by ``target_mib`` and
    survives; a loop limited below it is OOM-killed on the way. Appends ``start <t>`` and, if it
    got there, ``full <t>`` to ``record_path``."""

    def __init__(self, record_path: str, target_mib: int = 1024, step_mib: int = 32, step_s: float = 0.1,
                 hold_s: float = 5.0, after: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_path, self.target_mib, self.step_mib = record_path, target_mib, step_mib
        self.step_s, self.hold_s, self.after = step_s, hold_s, after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{_PREFIX}.MemoryGrowTrigger", {"record_path": self.record_path, "target_mib": self.target_mib,
                                                "step_mib": self.step_mib, "step_s": self.step_s,
                                                "hold_s": self.hold_s, "after": self.after}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(self.after)
        with open(self.record_path, "a") as fh:
            fh.write(f"start {time.time()}\n")
        hoard: list[bytes] = []
        while len(hoard) * self.step_mib < self.target_mib:
            hoard.append(b"\x01" * (self.step_mib << 20))
            await asyncio.sleep(self.step_s)
        with open(self.record_path, "a") as fh:
            fh.write(f"full {time.time()}\n")
        await asyncio.sleep(self.hold_s)
        yield TriggerEvent({"held_mib": len(hoard) * self.step_mib})
