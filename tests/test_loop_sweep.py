"""
The loop's finished-trigger sweep (``LoopRunner.cleanup_finished_triggers``, ``loop.sweep``) looks only
at the triggers whose task ended since the last one, so a check-in with thousands held does not walk
them all (start-up, a takeover, a burst). What it reports is stock's: compared here with a stock
``TriggerRunner`` given the same tasks. The triggers are real (Airflow's testing triggers,
created by the runner's own ``create_triggers`` from workloads); no supervisor is needed for the
sweep, so none runs, and the loop's ``print()`` capture (``attribute_output``) is left off: its
records would go to this process's stdout, i.e. back into it, where a loop's go to the supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import structlog

import pytest

from airflow.executors import workloads
from airflow.triggers.base import BaseTrigger, TriggerEvent
from airflow.jobs.triggerer_job_runner import TriggerRunner
from multitrigger.loop import runner as runner_module
from multitrigger.loop.runner import LoopRunner

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_output_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "attribute_output", lambda: None)

SUCCESS = "airflow.triggers.testing.SuccessTrigger"
FAILURE = "airflow.triggers.testing.FailureTrigger"


async def _forever() -> None:
    await asyncio.sleep(3600)


class EventThenRaise(BaseTrigger):
    """Fires once, then raises: a trigger that exited with an error after its event."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.EventThenRaise", {}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent({"fired": True})
        raise RuntimeError("after the event")


def _fresh(runner: Any) -> Any:
    runner.triggers, runner.failed_triggers = {}, type(runner.failed_triggers)(*(
        [runner._request_wake] if isinstance(runner, LoopRunner) else []))
    return runner


async def _sweeps(runner: Any) -> list[list[int]]:
    """Create a success, a failure (exits without an event) and a long sleeper; sweep before and
    after they end; return each sweep's finished ids."""
    runner.to_create.extend([workloads.RunTrigger(id=1, classpath=SUCCESS, encrypted_kwargs="{}"),
                             workloads.RunTrigger(id=2, classpath=FAILURE, encrypted_kwargs="{}"),
                             workloads.RunTrigger(id=4, classpath=f"{__name__}.EventThenRaise", encrypted_kwargs="{}")])
    await runner.create_triggers()
    runner.triggers[3] = {"task": asyncio.create_task(_forever()), "is_watcher": False, "name": "ID 3", "events": 0}
    if isinstance(runner, LoopRunner):
        runner._watch(3, runner.triggers[3]["task"])
    sweeps = [await runner.cleanup_finished_triggers()]  # before anything ran: nothing ended
    await asyncio.wait([runner.triggers[i]["task"] for i in (1, 2, 4)])
    await asyncio.sleep(0)  # done callbacks run
    sweeps.append(await runner.cleanup_finished_triggers())
    sweeps.append(await runner.cleanup_finished_triggers())
    runner.triggers[3]["task"].cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    sweeps.append(await runner.cleanup_finished_triggers())
    return sweeps


def _outcome(runner: Any) -> tuple[list[list[int]], list[tuple[int, Any]], list[int], list[tuple[Any, ...]]]:
    with structlog.testing.capture_logs() as records:
        sweeps = [sorted(ids) for ids in asyncio.run(_sweeps(_fresh(runner)))]
    swept = sorted((r.get("trigger_id"), r["event"], r["log_level"]) for r in records
                   if "exited" in r["event"] or "rather than yielding" in r["event"])
    return sweeps, sorted((tid, repr(err)) for tid, err in runner.failed_triggers), sorted(runner.triggers), swept


def test_the_sweep_reports_what_stocks_reports() -> None:
    loop, stock = _outcome(LoopRunner()), _outcome(TriggerRunner())
    assert loop == stock
    assert loop[0] == [[], [1, 2, 4], [], [3]]
    assert loop[1] == [(2, repr(ValueError("Deliberate trigger failure")))]  # no event: its task fails (stock)
    assert [(tid, level) for tid, _, level in loop[3]] == [(2, "error"), (2, "error"), (4, "error")]  # exited with error (2, 4), without an event (2)


class _Looked(dict):
    """The runner's trigger table, counting the entries a sweep looks at and its full walks."""

    def __init__(self) -> None:
        super().__init__()
        self.looked: list[int] = []
        self.walks = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.looked.append(key)
        return super().get(key, default)

    def items(self) -> Any:
        self.walks += 1
        return super().items()


def test_only_ended_triggers_are_looked_at() -> None:
    """100 held, nothing ended: no walk, nothing reported; one ended: that one is looked at and
    reported, and nothing else (stock would walk all 100, one loop iteration each)."""

    async def main() -> None:
        runner = _fresh(LoopRunner())
        runner.triggers = table = _Looked()
        for tid in range(100):
            table[tid] = {"task": asyncio.create_task(_forever()), "is_watcher": False, "name": f"ID {tid}", "events": 1}
            runner._watch(tid, table[tid]["task"])
        assert await runner.cleanup_finished_triggers() == []
        table[5]["task"].cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert await runner.cleanup_finished_triggers() == [5]
        assert (table.looked, table.walks, 5 in table, len(table)) == ([5], 0, False, 99)
        assert await runner.cleanup_finished_triggers() == []
        for details in table.values():
            details["task"].cancel()

    asyncio.run(main())
