"""Subprocess side of :mod:`multitrigger.demo.home`: the Airflow code a home is built with.

Run as ``python -m multitrigger.demo._worker <command> <request.json> <result.json>`` with the
environment of an :class:`~multitrigger.demo.home.AirflowHome` (``home.env()``).  Everything that
needs Airflow's own code (and therefore Airflow's process-global configuration) happens here, never
in the caller, so one process can build several homes.  Checked against Airflow 3.3.2 (the
``defer`` command writes what its execution API writes for a deferral).

Commands (each takes a JSON request and writes a JSON result):

* ``setup``      -- optionally reset/migrate the metadata DB, then parse + serialize all bundles.
* ``migrate``    -- reset (if asked) and migrate the metadata DB.
* ``serialize``  -- what ``airflow dags reserialize`` does, then verify the result.
* ``defer``      -- put task instances into DEFERRED the way the execution API does.

The test-support package (``mt_testsupport._worker``) adds its own commands on top of these.
Over 300 lines for one reason: ``defer`` mirrors the execution API's deferral step by step
(DagRun, TaskInstance, Trigger row, DEFERRED update), and reads best as one function.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_RUN_ID = "manual__sandbox"
Command = Callable[[dict[str, Any]], Any]

# ----------------------------------------------------------------------------------------- helpers
def _now():
    from airflow._shared.timezones import timezone

    return timezone.utcnow()


def _dialect() -> str:
    from airflow import settings

    return settings.get_engine().dialect.name


# ----------------------------------------------------------------------------------------- migrate
def cmd_migrate(req: dict[str, Any]) -> dict[str, Any]:
    from airflow.utils import db

    t0 = time.monotonic()
    if req.get("reset"):
        # Drops Airflow's tables (and only those) and re-creates the schema from the ORM.
        db.resetdb()
    else:
        db.upgradedb()
    return {"dialect": _dialect(), "seconds": time.monotonic() - t0}


# --------------------------------------------------------------------------------------- serialize
def cmd_serialize(req: dict[str, Any]) -> dict[str, Any]:
    from sqlalchemy import select

    from airflow.dag_processing.bundles.base import unpack_bundle_version
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.models.dag_version import DagVersion
    from airflow.models.errors import ParseImportError
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session

    t0 = time.monotonic()
    only = set(req.get("bundles") or [])
    # Same steps as ``airflow dags reserialize`` (airflow/cli/commands/dag_command.py).
    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    parsed: dict[str, list[str]] = {}
    for bundle in manager.get_all_dag_bundles():
        if only and bundle.name not in only:
            continue
        bundle.initialize()
        bag = BundleDagBag(bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        version, version_data = unpack_bundle_version(bundle.get_current_version(), bundle)
        with create_session() as session:
            sync_bag_to_db(bag, bundle.name, bundle_version=version, version_data=version_data, session=session)
        parsed[bundle.name] = sorted(bag.dags)

    # Verify what the triggerer will rely on.
    with create_session() as session:
        dags: dict[str, dict[str, Any]] = {}
        for dm in session.scalars(select(DagModel)):
            latest = DagVersion.get_latest_version(dm.dag_id, session=session)
            has_sdag = (
                latest is not None
                and session.scalar(
                    select(SerializedDagModel.id).where(SerializedDagModel.dag_version_id == latest.id)
                )
                is not None
            )
            dags[dm.dag_id] = {
                "bundle": dm.bundle_name,
                "dag_version_id": str(latest.id) if latest else None,
                "serialized": has_sdag,
                "fileloc": dm.fileloc,
                "is_stale": bool(dm.is_stale),
                "is_paused": bool(dm.is_paused),
            }
        import_errors = {
            f"{e.bundle_name}:{e.filename}": e.stacktrace for e in session.scalars(select(ParseImportError))
        }
    problems = [
        dag_id
        for dag_id, info in dags.items()
        if not info["is_stale"] and (not info["dag_version_id"] or not info["serialized"] or not info["bundle"])
    ]
    if problems:
        raise RuntimeError(f"DAGs not fully serialized: {problems}: {dags}")
    return {"parsed": parsed, "dags": dags, "import_errors": import_errors, "seconds": time.monotonic() - t0}


def cmd_setup(req: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if req.get("migrate"):
        out["migrate"] = cmd_migrate({"reset": req.get("reset", False)})
    out["serialize"] = cmd_serialize({"bundles": req.get("bundles")})
    return out


# ------------------------------------------------------------------------------------------- defer
def cmd_defer(req: dict[str, Any]) -> dict[str, Any]:
    """Mimic ``ti_update_state`` for ``TIDeferredStatePayload`` (execution API, Airflow 3.3).

    For every spec: get/create the DagRun (``SerializedDAG.create_dagrun``, manual, running),
    get/create the TaskInstance, move it through what scheduler + ``ti_run`` would have written
    (try_number, queued/start dates, hostname, dag_version_id) and then write exactly what the
    execution API writes for a deferral: a ``Trigger`` row plus DEFERRED/trigger_id/next_method/
    next_kwargs/trigger_timeout on the TI.
    """
    from sqlalchemy import select

    from airflow.configuration import conf
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.sdk.serde import serialize as serde_serialize
    from airflow._shared.module_loading import import_string
    from airflow.utils.net import get_hostname
    from airflow.utils.platform import getuser
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    try:
        from airflow.api_fastapi.execution_api.security import get_team_name_for_ti
    except Exception:  # pragma: no cover - moved in some future version
        get_team_name_for_ti = None  # type: ignore[assignment]

    t0 = time.monotonic()
    queues_enabled = conf.getboolean("triggerer", "queues_enabled", fallback=False)
    hostname = get_hostname()
    unixname = getuser()
    dagbag = DBDagBag()
    specs = req["specs"]
    with create_session() as session:
        now = _now()
        # -- phase 1: DagRuns and TaskInstances (created where missing; one flush for all) --
        dags: dict[str, Any] = {}
        runs: dict[tuple[str, str], Any] = {}
        tis: dict[tuple[str, str, str, int], Any] = {}
        resolved: list[tuple[dict[str, Any], Any, Any]] = []
        seen: set[tuple[str, str, str, int]] = set()
        for spec in specs:
            dag_id, task_id = spec["dag_id"], spec["task_id"]
            run_id = spec.get("run_id") or DEFAULT_RUN_ID
            map_index = int(spec.get("map_index", -1))
            ti_key = (dag_id, run_id, task_id, map_index)
            if ti_key in seen:
                raise ValueError(f"task instance {ti_key} appears twice in one defer batch")
            seen.add(ti_key)

            dag = dags.get(dag_id)
            if dag is None:
                dag = dagbag.get_latest_version_of_dag(dag_id, session=session)
                if dag is None:
                    raise LookupError(f"DAG {dag_id!r} is not serialized in this home")
                dags[dag_id] = dag

            dr = runs.get((dag_id, run_id))
            if dr is None:
                dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
                if dr is None:
                    dr = dag.create_dagrun(
                        run_id=run_id,
                        logical_date=None,
                        run_after=now,
                        run_type=DagRunType.MANUAL,
                        triggered_by=DagRunTriggeredByType.REST_API,
                        state=DagRunState.RUNNING,
                        start_date=now,
                        session=session,
                    )
                    session.flush()
                runs[(dag_id, run_id)] = dr
                for ti in session.scalars(
                    select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
                ):
                    tis[(dag_id, run_id, ti.task_id, ti.map_index)] = ti

            ti = tis.get(ti_key)
            if ti is None:
                task = dag.get_task(task_id)  # raises TaskNotFound for unknown tasks
                ti = TaskInstance(task, run_id=run_id, map_index=map_index, dag_version_id=dr.created_dag_version_id)
                session.add(ti)
                tis[ti_key] = ti
            elif ti.state == TaskInstanceState.DEFERRED and ti.trigger_id is not None:
                raise ValueError(f"{dag_id}/{run_id}/{task_id}[{map_index}] is already deferred")
            resolved.append((spec, dr, ti))
        session.flush()

        # -- phase 2: the worker side (task_runner._defer_task) + Trigger rows (one flush) --
        triggers = []
        for spec, _dr, ti in resolved:
            classpath = spec["classpath"]
            kwargs = spec.get("kwargs") or {}
            if spec.get("validate", True):
                trigger_obj = import_string(classpath)(**kwargs)
                classpath, kwargs = trigger_obj.serialize()
            queue = spec.get("queue")
            if queue is None and queues_enabled:
                queue = ti.queue
            team_name = get_team_name_for_ti(ti.id, session) if get_team_name_for_ti else None
            # --- API side (ti_update_state, TIDeferredStatePayload branch) ---
            if spec.get("encrypt_kwargs"):
                trigger_row = Trigger(classpath=classpath, kwargs=kwargs, queue=queue, team_name=team_name)
            else:
                trigger_row = Trigger(classpath=classpath, kwargs={}, queue=queue, team_name=team_name)
                trigger_row.encrypted_kwargs = json.dumps(serde_serialize(kwargs))
            triggers.append(trigger_row)
        session.add_all(triggers)
        session.flush()

        # -- phase 3: scheduler/ti_run bookkeeping, then the DEFERRED update itself --
        results: list[dict[str, Any]] = []
        for (spec, dr, ti), trigger_row in zip(resolved, triggers):
            # What the scheduler (SCHEDULED/QUEUED, try_number) and ti_run (RUNNING) would have written.
            ti.try_number = (ti.try_number or 0) + 1
            ti.scheduled_dttm = ti.queued_dttm = ti.start_date = ti.last_heartbeat_at = now
            ti.end_date = None
            ti.hostname = hostname
            ti.unixname = unixname
            ti.pid = None
            if ti.dag_version_id is None:
                ti.dag_version_id = dr.created_dag_version_id

            timeout = spec.get("timeout_seconds")
            ti.state = TaskInstanceState.DEFERRED
            ti.trigger_id = trigger_row.id
            ti.next_method = spec.get("next_method") or "execute_complete"
            ti.next_kwargs = serde_serialize(spec.get("next_kwargs") or {})
            ti.trigger_timeout = now + _dt.timedelta(seconds=float(timeout)) if timeout is not None else None
            results.append(
                {
                    "dag_id": ti.dag_id,
                    "run_id": ti.run_id,
                    "task_id": ti.task_id,
                    "map_index": ti.map_index,
                    "ti_id": str(ti.id),
                    "trigger_id": trigger_row.id,
                    "dag_version_id": str(ti.dag_version_id),
                }
            )
        session.flush()
    return {"refs": results, "seconds": time.monotonic() - t0}


COMMANDS: dict[str, Command] = {
    "setup": cmd_setup,
    "migrate": cmd_migrate,
    "serialize": cmd_serialize,
    "defer": cmd_defer,
}


def run(command: str, request_path: str, result_path: str, commands: Mapping[str, Command] = COMMANDS) -> int:
    """Run ``commands[command]`` on the request file and write ``{"ok", "result" | "error", ...}``."""
    with open(request_path) as fh:
        req = json.load(fh)
    try:
        result = {"ok": True, "result": commands[command](req)}
        rc = 0
    except BaseException as exc:  # report everything, including SystemExit from Airflow internals
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        rc = 1
    finally:
        # Close pooled connections so SQLite (Airflow puts it in WAL mode) checkpoints into the main
        # file -- a forked worker leaves through os._exit, which skips Airflow's atexit hooks.
        settings = sys.modules.get("airflow.settings")
        if settings is not None:
            try:
                settings.dispose_orm(do_log=False)
            except Exception:
                pass
    tmp = result_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, default=str)
    os.replace(tmp, result_path)
    return rc


def main(argv: list[str] | None = None, commands: Mapping[str, Command] = COMMANDS, prog: str = __name__) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] not in commands:
        print(f"usage: python -m {prog} {{{','.join(commands)}}} REQUEST RESULT", file=sys.stderr)
        return 2
    return run(*argv, commands=commands)


if __name__ == "__main__":
    sys.exit(main(prog="multitrigger.demo._worker"))
