"""
The loop's finished-trigger sweep (``LoopRunner.cleanup_finished_triggers``) runs stock's sweep only
once a trigger task has ended since the last one, so a check-in with thousands held and nothing
ended does not walk them all (start-up, a takeover). What it reports is stock's: compared here with
a stock ``TriggerRunner`` given the same tasks. The triggers are real (Airflow's testing triggers,
created by the runner's own ``create_triggers`` from workloads); no supervisor is needed for the
sweep, so none runs, and the loop's ``print()`` capture (``attribute_output``) is left off: its
records would go to this process's stdout, i.e. back into it, where a loop's go to the supervisor.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow.executors import workloads
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


def _fresh(runner: Any) -> Any:
    runner.triggers, runner.failed_triggers = {}, type(runner.failed_triggers)(*(
        [runner._request_wake] if isinstance(runner, LoopRunner) else []))
    return runner


async def _sweeps(runner: Any) -> list[list[int]]:
    """Create a success, a failure (exits without an event) and a long sleeper; sweep before and
    after they end; return each sweep's finished ids."""
    runner.to_create.extend([workloads.RunTrigger(id=1, classpath=SUCCESS, encrypted_kwargs="{}"),
                             workloads.RunTrigger(id=2, classpath=FAILURE, encrypted_kwargs="{}")])
    await runner.create_triggers()
    runner.triggers[3] = {"task": asyncio.create_task(_forever()), "is_watcher": False, "name": "ID 3", "events": 0}
    if isinstance(runner, LoopRunner):
        runner._watch(runner.triggers[3]["task"])
    sweeps = [await runner.cleanup_finished_triggers()]  # before anything ran: nothing ended
    await asyncio.wait([runner.triggers[i]["task"] for i in (1, 2)])
    await asyncio.sleep(0)  # done callbacks run
    sweeps.append(await runner.cleanup_finished_triggers())
    sweeps.append(await runner.cleanup_finished_triggers())
    runner.triggers[3]["task"].cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    sweeps.append(await runner.cleanup_finished_triggers())
    return sweeps


def _outcome(runner: Any) -> tuple[list[list[int]], list[tuple[int, Any]], list[int]]:
    sweeps = asyncio.run(_sweeps(_fresh(runner)))
    return sweeps, [(tid, repr(err)) for tid, err in runner.failed_triggers], sorted(runner.triggers)


def test_the_sweep_reports_what_stocks_reports() -> None:
    loop, stock = _outcome(LoopRunner()), _outcome(TriggerRunner())
    assert loop == stock
    assert loop[0] == [[], [1, 2], [], [3]]
    assert loop[1] == [(2, repr(ValueError("Deliberate trigger failure")))]  # no event: its task fails (stock)


def test_nothing_ended_no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    walks: list[int] = []

    async def stock_sweep(self: TriggerRunner) -> list[int]:
        walks.append(len(self.triggers))
        return []

    monkeypatch.setattr(TriggerRunner, "cleanup_finished_triggers", stock_sweep)

    async def main() -> None:
        runner = _fresh(LoopRunner())
        for tid in range(100):
            runner.triggers[tid] = {"task": asyncio.create_task(_forever()), "is_watcher": False,
                                    "name": f"ID {tid}", "events": 0}
            runner._watch(runner.triggers[tid]["task"])
        assert await runner.cleanup_finished_triggers() == []
        assert walks == []
        runner.triggers[5]["task"].cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await runner.cleanup_finished_triggers()
        assert walks == [100]
        for details in runner.triggers.values():
            details["task"].cancel()

    asyncio.run(main())
