"""Real Airflow 3.3 homes for tests and benchmarks: the demo's home (:mod:`multitrigger.demo.home`)
plus what only tests do with one -- stock ``airflow`` commands, re-serializing, clearing, seeding,
callbacks, asset watchers, waiting for states -- and two speed-ups a test session needs: a
migrated SQLite template DB copied per home (:mod:`mt_testsupport.databases`) and workers forked
from a warm fork server (:mod:`mt_testsupport.workers`).

Importing this module does not import Airflow.  Typical use::

    home = AirflowHome.create(tmp_path / "home", {"b1": deferring_bundle("d1")})
    ref = home.defer("d1", "t0", FIRE_AT, {"moment": iso_in(3)})
    proc = home.popen_airflow("triggerer", "--skip-serve-logs")
    home.wait_for(lambda: home.ti_states([ref])[ref].state == "scheduled", timeout=30)
    home.event(ref)  # -> {"fired_at": ..., "pid": ..., ...}
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from multitrigger.demo import home as demo_home
from multitrigger.demo.home import (
    DEFAULT_RUN_ID,
    LOCAL_BUNDLE_CLASSPATH,
    RAISE,
    DeferSpec,
    HomeError,
    TaskRef,
    TIState,
    decode_serde,
    deferring_bundle,
    deferring_dag_source,
    iso_in,
)
from mt_testsupport.dag_sources import asset_watcher_dag_source, broken_dag_source
from mt_testsupport.databases import (airflow_version, ensure_pg_database, ensure_template_db,
                                      recreate_pg_from_template, template_db_path)
from mt_testsupport.git_bundles import bundle_entries
from mt_testsupport.rows import StateReader, TriggerRow
from mt_testsupport.workers import prestart_zygote, run_worker

__all__ = [
    "AirflowHome",
    "DeferSpec",
    "HomeError",
    "TaskRef",
    "TIState",
    "TriggerRow",
    "FIRE_AT",
    "FIRE_AT_EVENT",
    "RAISE",
    "WAIT_FOREVER",
    "IMPORT_VERSION",
    "LOCAL_BUNDLE_CLASSPATH",
    "DEFAULT_RUN_ID",
    "airflow_version",
    "asset_watcher_dag_source",
    "broken_dag_source",
    "decode_serde",
    "deferring_bundle",
    "deferring_dag_source",
    "ensure_pg_database",
    "ensure_template_db",
    "iso_in",
    "prestart_zygote",
    "template_db_path",
]

FIRE_AT = "mt_testsupport.triggers.FireAtTrigger"  # the demo's FireAtTrigger plus ``record_path``
FIRE_AT_EVENT = "mt_testsupport.triggers.FireAtEventTrigger"
WAIT_FOREVER = "mt_testsupport.triggers.WaitForeverTrigger"
IMPORT_VERSION = "mt_testsupport.triggers.ImportVersionTrigger"


class AirflowHome(demo_home.AirflowHome, StateReader):
    """A demo home with the test-only operations; built from the template DB, run by forked workers."""

    @classmethod
    def create(cls, path: Path | str, bundles: Mapping[str, Mapping[str, str]], db_url: str | None = None,
               extra_config: Mapping[str, Mapping[str, Any]] | None = None, *,
               git_bundles: Mapping[str, Mapping[str, Any]] | None = None, **kwargs: Any) -> AirflowHome:
        """The demo's ``create``, plus ``git_bundles``: bundle name → ``GitDagBundle`` kwargs
        (``mt_testsupport.git_bundles.GitRepo.bundle_kwargs``), beside the local ``bundles``."""
        if git_bundles:
            path = Path(path).resolve()
            local = {name: path / "bundles" / name for name in bundles}  # where the demo's create puts them
            extra = {section: dict(values) for section, values in (extra_config or {}).items()}
            extra.setdefault("dag_processor", {})["dag_bundle_config_list"] = json.dumps(
                bundle_entries(path, local, git_bundles))
            extra_config = extra
        home = super().create(path, bundles, db_url, extra_config, **kwargs)
        if git_bundles and home.bundles != local:
            raise HomeError(f"local bundles moved: {home.bundles} != {local}")
        return home

    def _prepare_database(self, *, own_sqlite: bool, timeout: float) -> dict[str, bool]:
        """The home's own SQLite file starts as a copy of the migrated template (ms, not seconds);
        a PostgreSQL database is made anew from a migrated template database (a second, not 20)."""
        t0 = time.monotonic()
        if self.db_url.startswith("postgresql"):
            recreate_pg_from_template(self.db_url, python=self.python, timeout=timeout)
            self.timings["pg_template_copy"] = time.monotonic() - t0
            return {"migrate": False, "reset": False}
        if not own_sqlite:
            return super()._prepare_database(own_sqlite=own_sqlite, timeout=timeout)
        template = ensure_template_db(python=self.python, timeout=timeout)
        sqlite_file = self.path / "airflow.db"
        for stale in (sqlite_file, Path(f"{sqlite_file}-wal"), Path(f"{sqlite_file}-shm")):
            stale.unlink(missing_ok=True)  # a leftover WAL would be replayed into the fresh copy
        shutil.copyfile(template, sqlite_file)
        self.timings["template_copy"] = time.monotonic() - t0
        return {"migrate": False, "reset": False}

    def _run_worker(self, command: str, request: Mapping[str, Any], *, timeout: float = 600) -> Any:
        """Run one :mod:`mt_testsupport._worker` command (the demo's commands and the test ones)."""
        return run_worker(command, request, env=self.env(), python=self.python, workdir=self.path / ".sandbox",
                          timeout=timeout)

    # ------------------------------------------------------------------------------ stock airflow
    def airflow_cmd(self, *args: str) -> list[str]:
        return [self.python, "-m", "airflow", *args]

    def run_airflow(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run the stock ``airflow`` CLI against this home and return the completed process."""
        proc = subprocess.run(
            self.airflow_cmd(*args), env=self.env(), cwd=self.path, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise HomeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen_airflow(self, *args: str, log_name: str | None = None, **kwargs: Any) -> subprocess.Popen:
        """Start a long-running stock ``airflow`` command (e.g. ``triggerer``); output goes to ``logs/<log_name>``."""
        log_path = self.logs_dir / (log_name or f"{args[0] if args else 'airflow'}.out")
        log_fh = open(log_path, "ab")  # noqa: SIM115 - owned by the child; closed below
        try:
            return subprocess.Popen(
                self.airflow_cmd(*args),
                env=kwargs.pop("env", None) or self.env(),
                cwd=kwargs.pop("cwd", self.path),
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=kwargs.pop("start_new_session", False),
                **kwargs,
            )
        finally:
            log_fh.close()

    def serialize(self, bundles: Iterable[str] | None = None) -> dict[str, str]:
        """Re-parse and serialize bundles (after editing their files); returns dag_id -> bundle."""
        result = self._run_worker("serialize", {"bundles": list(bundles) if bundles else None})
        self.dags = {dag_id: info["bundle"] for dag_id, info in result["dags"].items()}
        self.import_errors = result["import_errors"]
        return self.dags

    def write_dag_file(self, bundle: str, filename: str, source: str, *, serialize: bool = True) -> Path:
        """Add/replace a file in a bundle (and re-serialize that bundle unless told not to)."""
        target = self.bundles[bundle] / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
        if serialize:
            self.serialize([bundle])
        return target

    def defer(
        self,
        dag_id: str,
        task_id: str,
        trigger_classpath: str,
        trigger_kwargs: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        map_index: int = -1,
        timeout_seconds: float | None = None,
        **extra: Any,
    ) -> TaskRef:
        """Defer one task instance (see :meth:`defer_many`; prefer that for more than a handful)."""
        spec = DeferSpec(
            dag_id=dag_id,
            task_id=task_id,
            classpath=trigger_classpath,
            kwargs=dict(trigger_kwargs or {}),
            run_id=run_id,
            map_index=map_index,
            timeout_seconds=timeout_seconds,
            **extra,
        )
        return self.defer_many([spec])[0]

    def clear_ti(self, ref: TaskRef, *, schedule: bool = True) -> dict[str, Any]:
        """What the UI "Clear" does to a (deferred) task: Airflow's ``clear_task_instances``.

        Stock 3.3.2 keeps ``trigger_id`` on the cleared (state NULL) TI and only orphans the trigger
        once the scheduler moves the TI to SCHEDULED; ``schedule=True`` (default) runs that scheduler
        step too (``task_instance_scheduling_decisions`` + ``schedule_tis``), so a running triggerer
        sees the trigger row disappear and must cancel it (``on_kill``).  Note: clearing gives the TI
        a new ``id`` (``prepare_db_for_next_try``); refs are keyed by dag/run/task/map_index.
        Returns ``{dag_id, run_id, task_id, map_index, ti_id, state, trigger_id}`` after the clear.
        """
        return self.clear_tis([ref], schedule=schedule)[0]

    def seed(self, connections: Sequence[Mapping[str, Any]] = (), variables: Mapping[str, str] | None = None,
             team_variables: Sequence[Mapping[str, str]] = ()) -> None:
        """Add connections (``Connection(**kwargs)``, e.g. ``conn_id``, ``conn_type``, ``host``,
        ``team_name``), global variables, and team variables (``key``, ``value``, ``team_name``)."""
        self._run_worker("seed", {"connections": [dict(c) for c in connections], "variables": dict(variables or {}),
                                  "team_variables": [dict(v) for v in team_variables]})

    def dag_run(self, dag_id: str, run_id: str, bundle_version: str | None) -> None:
        """A running DAG run pinned to ``bundle_version`` (not the bundle's latest); defer into it."""
        self._run_worker("dag_run", {"dag_id": dag_id, "run_id": run_id, "bundle_version": bundle_version})

    def clear_tis(self, refs: Iterable[TaskRef], *, schedule: bool = True) -> list[dict[str, Any]]:
        return self._run_worker("clear", {"refs": [r.key() for r in refs], "schedule": schedule})["cleared"]

    def check_trigger_timeouts(self) -> None:
        """What the scheduler does for expired deferrals: one ``SchedulerJobRunner.check_trigger_timeouts``."""
        self._run_worker("check_trigger_timeouts", {})

    def add_triggerer_callback(
        self, bundle_name: str, path: str = "asyncio.sleep", kwargs: Mapping[str, Any] | None = None,
        dag_id: str | None = None,
    ) -> dict[str, Any]:
        """A queued ``TriggererCallback`` with ``bundle_name`` and its trigger row (Airflow's models).

        Returns ``{callback_id, trigger_id, type}``."""
        return self._run_worker(
            "triggerer_callback", {"bundle_name": bundle_name, "path": path, "kwargs": dict(kwargs or {}), "dag_id": dag_id}
        )

    def add_asset_watcher(
        self,
        dag_id: str,
        asset_name: str,
        trigger_classpath: str,
        trigger_kwargs: Mapping[str, Any] | None = None,
        *,
        bundle: str | None = None,
    ) -> int:
        """Add a DAG scheduled on an asset with a watcher trigger (file ``<dag_id>.py`` in ``bundle``,
        default: the first bundle), serialize it, and return the watcher's trigger id.

        The rows are created by Airflow's own DAG-parsing code; the trigger class must be a
        ``BaseEventTrigger`` (see ``FIRE_AT_EVENT``)."""
        bundle = bundle or next(iter(self.bundles))
        self.write_dag_file(bundle, f"{dag_id}.py", asset_watcher_dag_source(dag_id, asset_name, trigger_classpath,
                                                                             trigger_kwargs))
        rows = self.sql(
            "SELECT aw.trigger_id FROM asset_watcher aw JOIN asset a ON a.id = aw.asset_id WHERE a.name = :name",
            {"name": asset_name},
        )
        if not rows:
            raise HomeError(f"no asset watcher trigger was created for asset {asset_name!r}: {self.import_errors}")
        return int(rows[0][0])
