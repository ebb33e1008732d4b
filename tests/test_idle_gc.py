"""
A loop's garbage collections wait for the loop to be idle (``multitrigger.loop.idle_gc``).

On real asyncio event loops: a burst of tasks (each holding new objects while it runs, each
leaving a reference cycle behind) is not collected while tasks are still in flight, and its
cycles are collected once the loop waits; a loop that never waits still collects past
``busy_count``. The first test runs the same burst with stock automatic collection so that the
second can fail. A trigger inside a real ``multitrigger run`` loop sees collection off and the
wrapped selector; a process forked from a loop collects as stock does.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator

import pytest

from mt_testsupport.home import AirflowHome, DeferSpec, deferring_dag_source
from multitrigger.loop import idle_gc

pytestmark = pytest.mark.timeout(120)

BURST = 2000


@pytest.fixture(autouse=True)
def _collection_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


class _Node:
    """Part of a reference cycle: freed only by a collection."""

    def __init__(self) -> None:
        self.me = self


class _Burst:
    """``BURST`` tasks released at once; counts collections while any of them is in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.during = 0
        self.freed = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start" and self.in_flight:
            self.during += 1

    def _note_freed(self) -> None:
        self.freed += 1

    async def _task(self, go: asyncio.Event) -> None:
        await go.wait()
        held = [{"i": i} for i in range(10)]  # alive while the task runs (~40,000 in all: under busy_count)
        cycle = _Node()
        weakref.finalize(cycle, self._note_freed)
        del cycle
        await asyncio.sleep(0)
        del held
        self.in_flight -= 1

    async def run(self) -> None:
        go = asyncio.Event()
        tasks = [asyncio.create_task(self._task(go)) for _ in range(BURST)]
        await asyncio.sleep(0)  # all of them waiting
        self.in_flight = BURST
        go.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.05)  # the loop waits: nothing ready

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)


def _burst(install: bool) -> _Burst:
    gc.enable()
    gc.collect()
    loop = asyncio.new_event_loop()
    try:
        if install:
            assert idle_gc.install(loop) is not None
        burst = _Burst()
        loop.run_until_complete(burst.run())
        burst.close()
        return burst
    finally:
        loop.close()


def test_stock_collects_in_the_middle_of_a_burst() -> None:
    burst = _burst(install=False)
    assert burst.during > 0


def test_a_burst_is_collected_once_the_loop_waits_not_while_its_tasks_run() -> None:
    burst = _burst(install=True)
    assert burst.during == 0
    assert burst.freed > BURST // 2  # the burst's cycles: collected at the idle select, not leaked
    assert not gc.isenabled()


def test_a_loop_that_never_waits_still_collects() -> None:
    gc.enable()
    gc.collect()
    freed: list[int] = []
    loop = asyncio.new_event_loop()

    async def spin() -> None:
        for _ in range(3000):  # always ready: every select has timeout 0
            for _ in range(10):
                cycle = _Node()
                weakref.finalize(cycle, freed.append, 1)
                del cycle
            await asyncio.sleep(0)

    try:
        collector = idle_gc.install(loop)
        assert collector is not None
        collector.busy_count = 2000
        loop.run_until_complete(spin())
    finally:
        loop.close()
    assert len(freed) > 20_000  # 30,000 cycles made; those left are at most busy_count's worth


def test_collection_turned_on_again_is_left_alone() -> None:
    gc.disable()
    gc.enable()
    calls: list[int] = []
    hook = lambda phase, info: calls.append(1)  # noqa: E731
    gc.callbacks.append(hook)
    try:
        idle_gc.collect_if_due()  # on: nothing to do here (CPython collects by itself)
    finally:
        gc.callbacks.remove(hook)
    assert gc.isenabled() and calls == []


GC_TRIGGER = textwrap.dedent('''\
    import asyncio
    import gc

    from airflow.triggers.base import BaseTrigger, TriggerEvent


    class GcTrigger(BaseTrigger):
        def serialize(self):
            return "gctrig.GcTrigger", {}

        async def run(self):
            loop = asyncio.get_running_loop()
            yield TriggerEvent({"gc_enabled": gc.isenabled(), "selector": type(loop._selector).__name__})
    ''')


def test_a_real_loop_collects_when_idle(tmp_path, start_triggerer) -> None:
    home = AirflowHome.create(tmp_path / "home", {"team_a": {"dag_a.py": deferring_dag_source("dag_a", 1),
                                                             "gctrig.py": GC_TRIGGER}})
    (ref,) = home.defer_many([DeferSpec("dag_a", "t0", "gctrig.GcTrigger", {}, validate=False)])
    start_triggerer(home, "--skip-serve-logs", config='[loops.team_a]\nbundles = ["team_a"]\n')
    state = home.wait_for_states([ref], "scheduled", timeout=90)[ref]
    assert state.next_method == "execute_complete", state.next_kwargs
    assert state.event == {"gc_enabled": False, "selector": "IdleCollector"}


FORKED = textwrap.dedent('''\
    import asyncio, gc, os, sys
    from multitrigger.loop import idle_gc

    loop = asyncio.new_event_loop()
    assert idle_gc.install(loop) is not None and not gc.isenabled()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"1" if gc.isenabled() else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    print("child", os.read(read, 1).decode(), "parent", int(gc.isenabled()))
    ''')


def test_a_process_forked_from_a_loop_collects_as_stock() -> None:
    out = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["child", "1", "parent", "0"], out.stdout + out.stderr


def test_an_interpreter_where_the_poke_does_not_collect_keeps_stock_collection(monkeypatch) -> None:
    """Only CPython 3.11 is on this machine; an interpreter whose due collection does not run at the
    poke (another version's venv loop) is stood in for by a poke that allocates nothing."""
    assert idle_gc.poke_collects()  # this interpreter: it does
    gc.enable()
    monkeypatch.setattr(idle_gc, "_Poke", lambda: None)
    assert not idle_gc.poke_collects()
    loop = asyncio.new_event_loop()
    try:
        assert idle_gc.install(loop) is None
        assert gc.isenabled() and not isinstance(loop._selector, idle_gc.IdleCollector)
    finally:
        loop.close()
