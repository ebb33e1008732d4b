"""
Stock's task-instance workloads built from plain rows: one query per build, no ORM entities.

Checked against Airflow 3.3.2 (``TriggerRunnerSupervisor.build_trigger_workloads`` and
``_create_workload``, ``DBDagBag._version_from_dag_run``, ``TaskInstanceDTO``).

Stock loads every new trigger as an ORM entity with its task instance (selectin), that task
instance's trigger and triggerer job again (joined) and its DAG run (joined), then asks each task
instance for its DAG run (``get_dagrun``). That is ~75 objects per trigger, tied in reference cycles
(trigger <-> task instance <-> DAG run) that only a full collection frees: building 2000 triggers
left ~150,000 objects for the collector, and full collections took ~40 % of the supervisor's CPU
while 8000 triggers started (measured here, with gc callbacks).

Here the common case, a task instance whose task does not start from the trigger, is built from
one row per trigger (trigger, task instance, DAG run columns): the same ``TaskInstanceDTO``, log
path, ``TriggerLoggingFactory`` and ``RunTrigger`` as stock's code makes. Every other trigger goes
back to the caller for stock's per-trigger code, unchanged: no task instance (asset watchers,
callbacks, a trigger that vanished), several task instances, no DAG version, a task that starts
from the trigger or is not in its DAG version, a log filename template that reads more than the row
holds (``ti.logical_date``, ``ti.dag_run``: ``NeedsOrm``), or any error in the row's build.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jinja2
import structlog
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from airflow.exceptions import TaskNotFound
from airflow.executors import workloads
from airflow.executors.workloads.task import TaskInstanceDTO
from airflow.jobs.triggerer_job_runner import TriggerLoggingFactory
from airflow.models.dagbag import DBDagBag
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import Trigger

log = structlog.get_logger(__name__)

#: What the row holds of a task instance: every ``TaskInstanceDTO`` field (each a TaskInstance
#: column in 3.3.2), and what ``_create_workload`` reads besides.
_TI_NAMES = (*TaskInstanceDTO.model_fields, "dag_version_id", "trigger_timeout")
TI_COLUMNS: dict[str, Any] = {name: getattr(TaskInstance, name) for name in _TI_NAMES
                              if name in TaskInstance.__table__.c}
#: Off if the DTO has a field that is not a column (another Airflow version): stock builds all.
USABLE = len(TI_COLUMNS) == len(set(_TI_NAMES))


class NeedsOrm(Exception):
    """The log filename template read a task-instance attribute the row does not hold."""


class RowTI:
    """A task instance's columns from the row, read by attribute like the ORM entity.

    An attribute that is not a column here raises ``NeedsOrm`` (not ``AttributeError``, which
    Jinja would render as an empty string), so that trigger is built by stock's code instead."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            if name.startswith("__"):
                raise AttributeError(name) from None
            raise NeedsOrm(name) from None


def log_path_renderer(render: Callable[..., str]) -> Callable[[Any], str]:
    """``log_filename_template_renderer()``'s ``render(ti=...)``, the same string, cheaper per call.

    For a Jinja template (jinja2 3.1.6) ``Template.render`` builds each call's context as
    ``dict(template.globals, **vars)`` from a ``ChainMap``: ~half of its ~80 us here. The same dict,
    made once, is copied per call instead, then ``root_render_func`` runs as ``render`` runs it
    (errors surface unrewritten: only ``NeedsOrm`` is expected, and it sends the trigger to
    stock). Anything else (the ``str.format`` spelling, an async environment) is called as is."""
    template = getattr(render, "__self__", None)
    if not isinstance(template, jinja2.Template) or template.environment.is_async:
        return lambda ti: render(ti=ti)
    base, concat, root = dict(template.globals), template.environment.concat, template.root_render_func

    def fast(ti: Any) -> str:
        return concat(root(template.new_context({**base, "ti": ti}, shared=True)))  # type: ignore[no-any-return]

    return fast


class RunKey(NamedTuple):
    """What ``DBDagBag._version_from_dag_run`` reads of a DAG run (3.3.2), and nothing else."""

    dag_id: str
    created_dag_version_id: Any
    bundle_version: str | None


class RowBuild:
    """One build pass over rows; ``build`` returns the workloads and the ids left for stock."""

    def __init__(self, dag_bag: DBDagBag, render_log_fname: Callable[..., str], log_id: Any,
                 logger_cache: dict[int, TriggerLoggingFactory]) -> None:
        self.dag_bag = dag_bag
        self.render_log_path = log_path_renderer(render_log_fname)
        self.log_id = log_id
        self.logger_cache = logger_cache
        self._tasks: dict[tuple[int, str], bool | None] = {}  # (id(model), task_id) -> start_from_trigger

    def build(self, trigger_ids: Iterable[int], session: Session) -> tuple[list[workloads.RunTrigger], set[int]]:
        ids = set(trigger_ids)
        if not USABLE or not ids:
            return [], ids
        rows: dict[int, list[Any]] = {}
        for row in session.execute(_query(ids)):
            rows.setdefault(row.trigger_id, []).append(row)
        built: list[workloads.RunTrigger] = []
        rest = ids - rows.keys()  # no task instance, or vanished: stock's code says which
        for trigger_id, found in rows.items():
            workload = self._one(found[0], session) if len(found) == 1 else None
            if workload is None:
                rest.add(trigger_id)
            else:
                built.append(workload)
        return built, rest

    def _one(self, row: Any, session: Session) -> workloads.RunTrigger | None:
        """Stock ``_create_workload``'s plain task-instance workload, or None: stock builds it."""
        try:
            ti = RowTI(dict(zip(TI_COLUMNS, row[_TI_AT:])))
            if not ti.dag_version_id or self._starts_from_trigger(row, ti, session) is not False:
                return None
            log_path = self.render_log_path(ti)
            ser_ti = TaskInstanceDTO.model_validate(ti, from_attributes=True)
        except NeedsOrm:
            return None
        except Exception:
            log.debug("row build failed; stock's build takes this trigger", trigger_id=row.trigger_id, exc_info=True)
            return None
        self.logger_cache[row.trigger_id] = TriggerLoggingFactory(
            log_path=f"{log_path}.trigger.{self.log_id}.log", ti=ser_ti)  # type: ignore[arg-type]
        return workloads.RunTrigger(id=row.trigger_id, classpath=row.classpath, encrypted_kwargs=row.encrypted_kwargs,
                                    ti=ser_ti, timeout_after=ti.trigger_timeout)

    def _starts_from_trigger(self, row: Any, ti: RowTI, session: Session) -> bool | None:
        """The task's ``start_from_trigger``; False also when the DAG version is not found (stock
        builds a plain workload then); None when the task is not in it (stock warns per trigger)."""
        run = RunKey(ti.dag_id, row.run_created_dag_version_id, row.run_bundle_version)
        # The build pass's DAG bag memoizes both look-ups (and a DAG that does not deserialize).
        model = (self.dag_bag.get_serialized_dag_model_for_run(run, session=session)  # type: ignore[arg-type]
                 or self.dag_bag.get_serialized_dag_model(version_id=ti.dag_version_id, session=session))
        if not model:
            return False
        task_key = (id(model), ti.task_id)
        if task_key not in self._tasks:
            try:
                self._tasks[task_key] = bool(model.dag.get_task(ti.task_id).start_from_trigger)
            except TaskNotFound:
                self._tasks[task_key] = None
        return self._tasks[task_key]


_TI_AT = 5  # the task instance's columns follow the first five of ``_query``'s row


def _query(ids: set[int]):  # type: ignore[no-untyped-def]
    return (
        select(Trigger.id.label("trigger_id"), Trigger.classpath, Trigger.encrypted_kwargs,
               DagRun.created_dag_version_id.label("run_created_dag_version_id"),
               DagRun.bundle_version.label("run_bundle_version"),
               *TI_COLUMNS.values())
        .join(TaskInstance, TaskInstance.trigger_id == Trigger.id)
        .join(DagRun, and_(DagRun.dag_id == TaskInstance.dag_id, DagRun.run_id == TaskInstance.run_id))
        .where(Trigger.id.in_(ids))
    )
