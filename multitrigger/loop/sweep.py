"""
The loop's finished-trigger sweep: stock's, over the triggers whose task has ended.

Stock ``TriggerRunner.cleanup_finished_triggers`` (Airflow 3.3.2) walks *every* trigger the loop
holds, with an ``asyncio.sleep(0)`` after each, every time it runs. With 5,000 held by a loop, one
trigger ending cost 5,000 loop iterations before the loop reported it; in a burst, the loop's next
push of events waited for the walk too (``benchmarks/README.md``, "a loop's sweep"). The runner
knows which tasks ended (each task's done callback says so), so only those are looked at here.

What is done with each is stock's body, copied (it is inline in stock's method, with no hook to
call it per trigger): the same finished ids, the same failure for a trigger that exited without an
event, the same log records. ``tests/test_loop_sweep.py`` runs both on the same real triggers and
compares what they report. Re-check this against stock's method on an Airflow upgrade.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from airflow.triggers.base import TriggerEvent


async def sweep(runner: Any, ended: Iterable[int]) -> list[int]:
    """Stock's ``cleanup_finished_triggers`` for the trigger ids in ``ended`` (a task that ended;
    one replaced or already swept is skipped); returns the finished ids, as stock does."""
    finished_ids: list[int] = []
    for trigger_id in ended:
        details = runner.triggers.get(trigger_id)
        if details is None or not details["task"].done():
            continue
        finished_ids.append(trigger_id)
        # From here to the end of the loop: stock's, unchanged (Airflow 3.3.2).
        saved_exc = None
        try:
            result = details["task"].result()
        except (asyncio.CancelledError, SystemExit, KeyboardInterrupt):
            del runner.triggers[trigger_id]
            continue
        except BaseException as e:
            runner.log.exception("Trigger %s exited with error %s", details["name"], e, trigger_id=trigger_id)
            saved_exc = e
        else:
            if isinstance(result, TriggerEvent):
                runner.log.error("Trigger returned a TriggerEvent rather than yielding it",
                                 trigger=details["name"], trigger_id=trigger_id)
        if details["events"] == 0:
            runner.log.error("Trigger exited without sending an event. Dependent tasks will be failed.",
                             name=details["name"], trigger_id=trigger_id)
            runner.failed_triggers.append((trigger_id, saved_exc))
        del runner.triggers[trigger_id]
        await asyncio.sleep(0)
    return finished_ids
