"""
A stopping loop cancels its triggers a batch at a time and reports each batch finished once its
tasks are done (``LoopRunner._stop_triggers``), so the supervisor can hand those rows back while the
rest still cancel (``multitrigger.supervisor.shutdown``; the end-to-end exactly-once check is
``tests/test_handback_postgres.py``).

The runner here is ``_stop_triggers`` on a stand-in that has only what it reads: the triggers'
table and the supervisor connection, whose push is recorded (the real one is a socket to a
supervisor process). The triggers are real asyncio tasks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from multitrigger.loop import runner
from multitrigger.loop.runner import LoopRunner

pytestmark = pytest.mark.timeout(30)


class _Stopping:
    """What ``_stop_triggers`` uses of a ``LoopRunner``: ``triggers``, the reader, the push."""

    _stop_triggers = LoopRunner._stop_triggers
    _reader_gone = LoopRunner._reader_gone

    def __init__(self, tasks: dict[int, asyncio.Task]) -> None:
        self.triggers: dict[int, dict[str, Any]] = {tid: {"task": task} for tid, task in tasks.items()}
        self.comms_decoder = type("Comms", (), {"_reader_task": asyncio.get_running_loop().create_future()})()
        self.pushes: list[tuple[list[int], list[int]]] = []  # (finished ids, ids whose task was not done then)
        self.tasks = tasks

    async def sync_state_to_supervisor(self, finished_ids: list[int]) -> None:
        self.pushes.append((finished_ids, [tid for tid in finished_ids if not self.tasks[tid].done()]))


async def _sleeps() -> None:
    await asyncio.sleep(3600)


async def _raises_on_cancel() -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise RuntimeError("cleanup went wrong") from None


async def _slow_to_stop(release: asyncio.Event) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await release.wait()  # ignores its cancellation until the test lets it go
        raise


def test_triggers_are_cancelled_and_reported_a_batch_at_a_time(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runner, "STOP_BATCH", 4)
    monkeypatch.setattr(runner, "STOP_BATCH_WAIT", 0.05)
    errors: list[dict[str, Any]] = []

    async def main() -> tuple[_Stopping, list[int]]:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        release = asyncio.Event()
        tasks = {tid: asyncio.create_task(_sleeps()) for tid in range(1, 11)}
        tasks[11] = asyncio.create_task(_raises_on_cancel())
        tasks[12] = asyncio.create_task(_slow_to_stop(release))  # in the first batch
        tasks = {tid: tasks[tid] for tid in (12, *range(1, 12))}
        await asyncio.sleep(0)
        stopping = _Stopping(tasks)
        stop = asyncio.create_task(stopping._stop_triggers())
        while sum(len(ids) for ids, _ in stopping.pushes) < 11:  # all but the straggler, without it
            await asyncio.sleep(0.01)
        reported_before_straggler = [tid for ids, _ in stopping.pushes for tid in ids]
        release.set()
        await stop
        return stopping, reported_before_straggler

    stopping, before = asyncio.run(main())
    reported = [tid for ids, _ in stopping.pushes for tid in ids]
    assert sorted(reported) == list(range(1, 13)) and len(reported) == 12  # each once
    assert all(len(ids) <= 4 for ids, _ in stopping.pushes) and len(stopping.pushes) >= 3
    assert all(not undone for _, undone in stopping.pushes)  # reported only once its task ended
    assert 12 not in before  # the one that ignored its cancellation held back only itself
    assert stopping.triggers == {}
    assert all(task.done() for task in stopping.tasks.values())
    # asyncio.run's report of a task that raised while being cancelled at exit (stock's shutdown)
    assert [(e["message"], str(e["exception"])) for e in errors] == [
        ("unhandled exception during asyncio.run() shutdown", "cleanup went wrong")]


def test_nothing_is_pushed_once_the_supervisor_connection_is_gone():
    async def main() -> _Stopping:
        stopping = _Stopping({1: asyncio.create_task(_sleeps())})
        stopping.comms_decoder._reader_task.set_result(None)
        await stopping._stop_triggers()
        return stopping

    stopping = asyncio.run(main())
    assert stopping.pushes == [] and stopping.tasks[1].cancelled()
