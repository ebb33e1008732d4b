"""
``SurvivorFreezer``: what survives a full collection is frozen, and a cycle that became garbage
among frozen objects is still collected at the next refreeze. The real collector, an injected clock.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from multitrigger.supervisor.gc_freeze import SurvivorFreezer


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def freezer():
    now = [0.0]
    freezer = SurvivorFreezer(clock=lambda: now[0], every=60.0)
    freezer.install()
    yield freezer, now
    freezer.uninstall()
    gc.unfreeze()


def test_survivors_of_a_full_collection_are_frozen(freezer) -> None:
    freezer, _ = freezer
    kept = [_Node() for _ in range(100)]
    before = gc.get_freeze_count()
    freezer.tend(idle=False)
    assert freezer.freezes == 0  # no full collection yet: nothing to do
    gc.collect()
    freezer.tend(idle=False)
    assert freezer.freezes == 1 and gc.get_freeze_count() >= before + len(kept)
    assert all(gc.is_tracked(node) for node in kept)


def test_a_frozen_cycle_that_became_garbage_is_collected_at_the_refreeze(freezer) -> None:
    freezer, now = freezer
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    gc.collect()
    freezer.tend(idle=True)  # frozen with the cycle still reachable
    del a, b
    gc.collect()
    assert gone() is not None  # frozen: not walked
    now[0] = 61.0
    freezer.tend(idle=False)  # busy: the refreeze waits
    assert gone() is not None and freezer.refreezes == 0
    freezer.tend(idle=True)
    assert gone() is None and freezer.refreezes == 1


def test_a_supervisor_never_idle_refreezes_all_the_same(freezer) -> None:
    freezer, now = freezer
    now[0] = 61.0
    freezer.tend(idle=False)
    assert freezer.refreezes == 0
    now[0] = 121.0  # due for one more period: busy or not
    freezer.tend(idle=False)
    assert freezer.refreezes == 1
