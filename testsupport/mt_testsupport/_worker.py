"""Test-only commands of the home worker, on top of the demo's (:mod:`multitrigger.demo._worker`).

Run as ``python -m mt_testsupport._worker <command> <request.json> <result.json>`` (or forked from
the fork server, :mod:`mt_testsupport._zygote`) with a home's environment.  Checked against
Airflow 3.3.2.

* ``clear``      -- clear task instances with Airflow's ``clear_task_instances`` (the UI "Clear").
* ``seed``       -- connections and variables.
* ``check_trigger_timeouts`` -- one scheduler pass over expired deferrals.
* ``triggerer_callback``     -- a queued ``TriggererCallback`` and its trigger row.
* ``dag_run``    -- a DAG run pinned to a given bundle version (``defer`` then reuses it).
"""

from __future__ import annotations

import sys
from typing import Any

from multitrigger.demo import _worker as demo_worker

# ------------------------------------------------------------------------------------------- clear
def cmd_clear(req: dict[str, Any]) -> dict[str, Any]:
    """The UI/REST "Clear task instance": ``clear_task_instances(tis, session, DagRunState.QUEUED)``.

    Stock Airflow 3.3 leaves the cleared TI with state NULL and its ``trigger_id`` still set;
    ``Trigger.clean_unused`` (run by the triggerer) only detaches triggers of TIs whose state is
    ``!= 'deferred'`` -- which is NULL for a NULL state -- so the trigger keeps running until the
    scheduler moves the TI to SCHEDULED.  With ``schedule`` (default) we also run that scheduler
    step (``DagRun.task_instance_scheduling_decisions`` + ``schedule_tis``) for the cleared TIs, so
    the triggerer sees the trigger orphaned without a scheduler running.
    """
    from sqlalchemy import select

    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance, clear_task_instances
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    out = []
    with create_session() as session:
        tis = []
        for ref in req["refs"]:
            ti = session.scalar(
                select(TaskInstance).where(
                    TaskInstance.dag_id == ref["dag_id"],
                    TaskInstance.run_id == ref["run_id"],
                    TaskInstance.task_id == ref["task_id"],
                    TaskInstance.map_index == int(ref.get("map_index", -1)),
                )
            )
            if ti is None:
                raise LookupError(f"no task instance {ref}")
            tis.append(ti)
        clear_task_instances(tis, session, DagRunState.QUEUED)
        session.flush()
        if req.get("schedule", True):
            keys = {(ti.dag_id, ti.run_id, ti.task_id, ti.map_index) for ti in tis}
            dagbag = DBDagBag()
            for dag_id, run_id in sorted({(ti.dag_id, ti.run_id) for ti in tis}):
                dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
                dr.dag = dagbag.get_dag_for_run(dag_run=dr, session=session)
                decision = dr.task_instance_scheduling_decisions(session=session)
                mine = [
                    ti
                    for ti in decision.schedulable_tis
                    if (ti.dag_id, ti.run_id, ti.task_id, ti.map_index) in keys
                ]
                dr.schedule_tis(mine, session=session)
            session.flush()
        for ti in tis:
            session.refresh(ti)
            out.append(
                {
                    "dag_id": ti.dag_id,
                    "run_id": ti.run_id,
                    "task_id": ti.task_id,
                    "map_index": ti.map_index,
                    "ti_id": str(ti.id),
                    "state": ti.state,
                    "trigger_id": ti.trigger_id,
                }
            )
    return {"cleared": out}


def cmd_seed(req: dict[str, Any]) -> dict[str, Any]:
    """Connections and variables, written with Airflow's own models (what the CLI/UI would do)."""
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        for conn in req.get("connections", []):
            session.add(Connection(**conn))
    for key, value in req.get("variables", {}).items():
        Variable.set(key, value)
    for var in req.get("team_variables", []):  # {"key", "value", "team_name"}
        Variable.set(var["key"], var["value"], team_name=var["team_name"])
    return {"connections": len(req.get("connections", [])), "variables": len(req.get("variables", {}))}


def cmd_check_trigger_timeouts(req: dict[str, Any]) -> dict[str, Any]:
    """One scheduler pass of ``SchedulerJobRunner.check_trigger_timeouts`` -- Airflow's own code.

    The method only uses ``self.log`` (and its own ``@provide_session`` session), so it is called
    unbound on a minimal object instead of building a whole scheduler job.
    """
    import logging
    import types

    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    runner = types.SimpleNamespace(log=logging.getLogger("airflow.jobs.scheduler_job_runner"))
    SchedulerJobRunner.check_trigger_timeouts(runner)
    return {}


def cmd_triggerer_callback(req: dict[str, Any]) -> dict[str, Any]:
    """A triggerer callback the way a missed deadline creates one (``Deadline.__init__`` +
    ``handle_miss`` → ``callback.queue``): ``TriggererCallback(AsyncCallback(path, kwargs))`` with
    ``bundle_name``, queued so ``TriggererCallback.queue`` creates its ``CallbackTrigger`` row."""
    from airflow.models.callback import TriggererCallback
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.utils.session import create_session

    with create_session() as session:
        callback = TriggererCallback(
            AsyncCallback(req.get("path", "asyncio.sleep"), kwargs=req.get("kwargs") or {}),
            dag_id=req.get("dag_id"),
        )
        callback.bundle_name = req["bundle_name"]
        session.add(callback)
        callback.queue(session=session)
        session.flush()
        return {"callback_id": str(callback.id), "trigger_id": callback.trigger_id, "type": callback.type}


def cmd_dag_run(req: dict[str, Any]) -> dict[str, Any]:
    """A manual, running DagRun (``SerializedDAG.create_dagrun``, as ``defer`` makes one) pinned to
    ``bundle_version`` instead of the bundle's latest: a run started on a version since gone."""
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    with create_session() as session:
        dag = DBDagBag().get_latest_version_of_dag(req["dag_id"], session=session)
        if dag is None:
            raise LookupError(f"DAG {req['dag_id']!r} is not serialized in this home")
        now = demo_worker._now()
        run = dag.create_dagrun(run_id=req["run_id"], logical_date=None, run_after=now, run_type=DagRunType.MANUAL,
                                triggered_by=DagRunTriggeredByType.REST_API, state=DagRunState.RUNNING,
                                start_date=now, session=session)
        run.bundle_version = req["bundle_version"]
        session.flush()
        return {"run_id": run.run_id, "bundle_version": run.bundle_version}


COMMANDS: dict[str, demo_worker.Command] = {
    **demo_worker.COMMANDS,
    "seed": cmd_seed,
    "clear": cmd_clear,
    "check_trigger_timeouts": cmd_check_trigger_timeouts,
    "triggerer_callback": cmd_triggerer_callback,
    "dag_run": cmd_dag_run,
}


def main(argv: list[str] | None = None) -> int:
    rc = demo_worker.main(argv, COMMANDS, prog="mt_testsupport._worker")
    if rc == 0:
        from mt_testsupport._zygote import record_modules

        record_modules()  # what the fork server pre-imports next time
    return rc


if __name__ == "__main__":
    sys.exit(main())
