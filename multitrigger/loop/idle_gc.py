"""
A loop's garbage collections, run when its event loop has nothing ready instead of mid-burst.

Checked against CPython 3.11 (``Modules/gcmodule.c``: ``_PyObject_GC_Link``, ``gc_collect_main``)
and asyncio's ``BaseSelectorEventLoop._run_once`` (it calls ``self._selector.select(timeout)``
once per iteration, with ``timeout == 0`` while handles are ready).

Why: CPython starts a young collection when the tracked objects allocated since the last one,
minus those freed, pass 700 (``gc.get_threshold()[0]``), and it counts a freed *old* object too.
When 5000 triggers of a loop fire in one iteration, each frees old objects (its timer, its
future) while its task goes on with new ones (coroutines, cells, context tokens, a handle: ~18 a
trigger), so the count stays low while ~90,000 live young objects pile up; the next allocation
burst (building the push of those events) starts a young collection that walks all of them, finds
nothing to free and promotes them, and a second one walks them again. Measured in a 20,000-trigger
burst (``benchmarks.burst_probe -n 20000``, four loops, a ``gc.callbacks`` probe, issue 13): in
each loop one generation-0 collection of ~90,000 objects (46-108 ms of CPU) and one generation-1
(41-57 ms), in the step that builds the push: 11 % of the loops' py-spy samples. An iteration
later those tasks have finished and their objects are freed by their reference counts.

So a loop turns automatic collection off and ``IdleCollector`` wraps its event loop's selector:
when the loop is about to wait (``timeout`` not 0: nothing ready), it turns collection on for one
tracked allocation, so CPython itself decides whether a collection is due and of which generation
(its rule for full collections, which Python cannot see, included), and off again. A loop that
never waits (handles always ready) still collects once the count passes ``BUSY_COUNT``, at the
next iteration's select. What this changes: cyclic garbage made during a burst lives until the
loop is next idle; garbage made by other threads (a trigger's executor) is collected at the loop's
selects too, which come at least every 0.1 s while the loop runs (the lag probe's sleep,
``loop.health``). The same burst after the change: each loop's collections over its whole life
(start-up included) took ~40 ms of CPU instead of ~370, and the four loops' CPU in the burst was
2.88-2.96 s against 3.12-3.64 (three alternating pairs).

Anything that turns automatic collection back on (``gc.enable()`` in a trigger or a library) is
left alone: the loop collects as stock does from then on. A process forked from a loop (a trigger's
``multiprocessing`` or ``ProcessPoolExecutor`` with the fork start method) has no idle select to
collect at: it starts with automatic collection on again (``os.register_at_fork``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import selectors
from typing import Any

#: Collect even while busy once the net count of new tracked objects passes this (CPython's
#: default young threshold is 700): garbage made by a loop that never waits stays bounded.
BUSY_COUNT = 100_000

_fork_hook_registered = False


class _Poke:
    """A tracked object, allocated to let CPython run the collection it has due."""


class IdleCollector:
    """The selector of a loop's event loop, with the loop's due collections run before it waits."""

    def __init__(self, selector: selectors.BaseSelector, busy_count: int = BUSY_COUNT) -> None:
        self._selector, self.busy_count = selector, busy_count

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout != 0 or gc.get_count()[0] > self.busy_count:
            collect_if_due()
        return self._selector.select(timeout)

    def __getattr__(self, name: str) -> Any:  # register, unregister, modify, get_key, get_map, close
        return getattr(self._selector, name)


def collect_if_due() -> None:
    """Run the collection CPython would run now, if one is due; nothing if collection is on."""
    if gc.isenabled():
        return
    gc.enable()
    try:
        _Poke()
    finally:
        gc.disable()


def _collections() -> int:
    return sum(generation["collections"] for generation in gc.get_stats())


def _then() -> None:
    """A Python-level call: where an interpreter that only schedules a collection runs it."""


def poke_collects() -> bool:
    """Whether, in this interpreter, turning collection on for one allocation runs the collection
    that is due. CPython 3.11 runs it inside the allocation; a venv loop's interpreter may be
    another version, and one that checked again, when the collection runs, whether collection is on
    would never collect here: such a loop keeps stock collection."""
    was = gc.isenabled()
    gc.disable()
    try:
        before = _collections()
        held = [_Poke() for _ in range(2 * gc.get_threshold()[0] + 1)]  # past the young threshold
        collect_if_due()
        _then()
        del held
        return _collections() > before
    finally:
        if was:
            gc.enable()


def install(loop: asyncio.AbstractEventLoop) -> IdleCollector | None:
    """Collect in ``loop``'s idle moments from now on; None (nothing changed) for a loop without a
    selector (not asyncio's selector loop: a proactor, uvloop) or an interpreter where collections
    cannot be let run this way (``poke_collects``)."""
    selector = getattr(loop, "_selector", None)
    if selector is None or not hasattr(selector, "select") or not poke_collects():
        return None
    collector = IdleCollector(selector)
    loop._selector = collector  # type: ignore[attr-defined]
    global _fork_hook_registered
    if not _fork_hook_registered:  # a process a trigger forks (a fork-started pool) has no idle select
        os.register_at_fork(after_in_child=gc.enable)
        _fork_hook_registered = True
    gc.disable()
    return collector
