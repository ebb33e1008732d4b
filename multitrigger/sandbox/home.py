"""A REAL, isolated Airflow 3.3 environment (AIRFLOW_HOME + metadata DB) for tests, demos, benchmarks.

Nothing here is mocked: the metadata DB is migrated by Airflow, DAG bundles are parsed and
serialized by Airflow (``airflow dags reserialize`` steps), DagRuns/TaskInstances/Triggers are
created with Airflow's models the way the scheduler + execution API would.

The calling process never imports Airflow through this module: everything that needs Airflow's
(process-global) configuration runs in a subprocess with :meth:`AirflowHome.env`
(``python -m multitrigger.sandbox._worker``), and state is read back with plain SQL through
SQLAlchemy Core on the home's DB URL.  One pytest process can therefore juggle several homes.

Typical use::

    home = AirflowHome.create(tmp_path / "home", {"b1": deferring_bundle("d1")})
    ref = home.defer("d1", "t0", FIRE_AT, {"moment": iso_in(3)})
    proc = home.popen_airflow("triggerer", "--skip-serve-logs")
    home.wait_for(lambda: home.ti_states([ref])[ref].state == "scheduled", timeout=30)
    home.event(ref)  # -> {"fired_at": ..., "pid": ..., ...}
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from multitrigger.sandbox.databases import (
    airflow_version,
    ensure_pg_database,
    ensure_template_db,
    template_db_path,
)
from multitrigger.sandbox.rows import DbReader, TaskRef, TIState, TriggerRow, decode_serde
from multitrigger.sandbox.workers import _PACKAGE_ROOT, SandboxError, prestart_zygote, run_worker
from multitrigger.sandbox.dag_sources import (
    asset_watcher_dag_source,
    broken_dag_source,
    deferring_bundle,
    deferring_dag_source,
)

__all__ = [
    "AirflowHome",
    "DeferSpec",
    "SandboxError",
    "TaskRef",
    "TIState",
    "TriggerRow",
    "FIRE_AT",
    "RAISE",
    "WAIT_FOREVER",
    "IMPORT_VERSION",
    "LOCAL_BUNDLE_CLASSPATH",
    "DEFAULT_RUN_ID",
    "airflow_version",
    "ensure_pg_database",
    "ensure_template_db",
    "prestart_zygote",
    "template_db_path",
    "decode_serde",
    "iso_in",
    "asset_watcher_dag_source",
    "broken_dag_source",
    "FIRE_AT_EVENT",
    "deferring_bundle",
    "deferring_dag_source",
]

FIRE_AT = "multitrigger.sandbox.triggers.FireAtTrigger"
FIRE_AT_EVENT = "multitrigger.sandbox.triggers.FireAtEventTrigger"
RAISE = "multitrigger.sandbox.triggers.RaiseTrigger"
WAIT_FOREVER = "multitrigger.sandbox.triggers.WaitForeverTrigger"
IMPORT_VERSION = "multitrigger.sandbox.triggers.ImportVersionTrigger"
LOCAL_BUNDLE_CLASSPATH = "airflow.dag_processing.bundles.local.LocalDagBundle"
DEFAULT_RUN_ID = "manual__sandbox"  # keep in sync with _worker.DEFAULT_RUN_ID


# --------------------------------------------------------------------------------------- small API
def iso_in(seconds: float) -> str:
    """ISO timestamp (UTC) ``seconds`` from now -- handy for ``FireAtTrigger(moment=...)``."""
    return (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=seconds)).isoformat()


@dataclasses.dataclass(frozen=True)
class DeferSpec:
    """One deferral for :meth:`AirflowHome.defer_many` (plain dicts with the same keys work too)."""

    dag_id: str
    task_id: str
    classpath: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    run_id: str | None = None
    map_index: int = -1
    timeout_seconds: float | None = None
    next_method: str = "execute_complete"
    next_kwargs: Mapping[str, Any] | None = None
    queue: str | None = None
    encrypt_kwargs: bool = False
    validate: bool = True


# ------------------------------------------------------------------------------------- AirflowHome
@dataclasses.dataclass
class AirflowHome(DbReader):
    path: Path
    db_url: str
    bundles: dict[str, Path]
    python: str = sys.executable
    dags: dict[str, str] = dataclasses.field(default_factory=dict)  # dag_id -> bundle name
    import_errors: dict[str, str] = dataclasses.field(default_factory=dict)  # "bundle:file" -> traceback
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    _engine: Any = dataclasses.field(default=None, repr=False, compare=False)

    # ---------------------------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        path: Path | str,
        bundles: Mapping[str, Mapping[str, str]],
        db_url: str | None = None,
        extra_config: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        python: str | None = None,
        timeout: float = 600,
    ) -> AirflowHome:
        """Build a home at ``path`` with one ``LocalDagBundle`` per entry of ``bundles``.

        ``bundles`` maps bundle name -> {relative file name: python source}.  ``db_url`` defaults to a
        SQLite file in the home (copied from a cached, migrated template); a PostgreSQL URL is
        RESET (Airflow's own tables in it are dropped -- ``airflow db reset`` -- and re-created).
        ``extra_config`` is merged into the generated ``airflow.cfg`` (``{section: {key: value}}``).
        All DAGs are parsed and serialized (with Airflow's code, in a subprocess) before this
        returns; ``home.dags`` maps dag_id -> bundle, ``home.import_errors`` lists broken files.
        ``python`` is the interpreter for the subprocesses (default: ``sys.executable``).
        """
        t_start = time.monotonic()
        path = Path(path).resolve()
        path.mkdir(parents=True, exist_ok=True)
        for sub in ("dags", "logs", "plugins", "bundle-storage", ".sandbox"):
            (path / sub).mkdir(exist_ok=True)
        bundle_paths: dict[str, Path] = {}
        for name, files in bundles.items():
            bdir = path / "bundles" / name
            bdir.mkdir(parents=True, exist_ok=True)
            for rel, source in files.items():
                target = bdir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(source)
            bundle_paths[name] = bdir

        sqlite_file = path / "airflow.db"
        url = db_url or f"sqlite:///{sqlite_file}"
        home = cls(path=path, db_url=url, bundles=bundle_paths, python=python or sys.executable)
        home._write_config(extra_config or {})

        is_sqlite = url.startswith("sqlite")
        if db_url is None:
            t0 = time.monotonic()
            template = ensure_template_db(python=home.python, timeout=timeout)
            for stale in (sqlite_file, Path(f"{sqlite_file}-wal"), Path(f"{sqlite_file}-shm")):
                stale.unlink(missing_ok=True)  # a leftover WAL would be replayed into the fresh copy
            shutil.copyfile(template, sqlite_file)
            home.timings["template_copy"] = time.monotonic() - t0
        t0 = time.monotonic()
        result = home._run_worker(
            "setup",
            {"migrate": not (db_url is None), "reset": not is_sqlite},
            timeout=timeout,
        )
        home.timings["setup_subprocess"] = time.monotonic() - t0
        home.dags = {dag_id: info["bundle"] for dag_id, info in result["serialize"]["dags"].items()}
        home.import_errors = result["serialize"]["import_errors"]
        home.timings["create"] = time.monotonic() - t_start
        return home

    @property
    def config_path(self) -> Path:
        return self.path / "airflow.cfg"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def bundle_path(self, name: str) -> Path:
        return self.bundles[name]

    def _write_config(self, extra_config: Mapping[str, Mapping[str, Any]]) -> None:
        fernet_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
        bundle_list = [
            {"name": name, "classpath": LOCAL_BUNDLE_CLASSPATH, "kwargs": {"path": str(bpath)}}
            for name, bpath in self.bundles.items()
        ]
        sections: dict[str, dict[str, Any]] = {
            "core": {
                "load_examples": "False",
                "dags_folder": str(self.path / "dags"),
                "plugins_folder": str(self.path / "plugins"),
                "executor": "LocalExecutor",
                "fernet_key": fernet_key,
                "dags_are_paused_at_creation": "False",
                "unit_test_mode": "False",
            },
            "database": {"sql_alchemy_conn": self.db_url},
            "dag_processor": {
                "dag_bundle_config_list": json.dumps(bundle_list),
                "dag_bundle_storage_path": str(self.path / "bundle-storage"),
            },
            "logging": {"base_log_folder": str(self.logs_dir), "remote_logging": "False"},
            "triggerer": {"capacity": "1000"},
            "api_auth": {"jwt_secret": secrets.token_urlsafe(32)},
            "api": {"secret_key": secrets.token_urlsafe(32)},
        }
        for section, values in extra_config.items():
            sections.setdefault(section, {}).update({k: v for k, v in values.items()})
        lines = ["# Written by multitrigger.sandbox.home.AirflowHome -- do not edit by hand.", ""]
        for section, values in sections.items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                if isinstance(value, bool):
                    value = "True" if value else "False"
                # AirflowConfigParser uses BasicInterpolation: escape '%'; keep one physical line.
                text = str(value).replace("%", "%%").replace("\n", " ")
                lines.append(f"{key} = {text}")
            lines.append("")
        self.config_path.write_text("\n".join(lines))

    # -------------------------------------------------------------------------------- environment
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for running Airflow against this home.

        ``os.environ`` minus every ``AIRFLOW*`` / ``_AIRFLOW*`` variable, plus ``AIRFLOW_HOME``,
        ``AIRFLOW_CONFIG`` and ``PYTHONPATH`` prefixed with the directory of the ``multitrigger``
        package the caller imported (so subprocesses run the same code).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        env["AIRFLOW_HOME"] = str(self.path)
        env["AIRFLOW_CONFIG"] = str(self.config_path)
        pp = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(_PACKAGE_ROOT) + (os.pathsep + pp if pp else "")
        if extra:
            env.update(extra)
        return env

    def airflow_cmd(self, *args: str) -> list[str]:
        return [self.python, "-m", "airflow", *args]

    def run_airflow(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run the stock ``airflow`` CLI against this home and return the completed process."""
        proc = subprocess.run(
            self.airflow_cmd(*args), env=self.env(), cwd=self.path, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise SandboxError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
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

    # ------------------------------------------------------------------------- subprocess worker
    def _run_worker(self, command: str, request: Mapping[str, Any], *, timeout: float = 600) -> Any:
        return run_worker(command, request, env=self.env(), python=self.python, workdir=self.path / ".sandbox",
                          timeout=timeout)

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

    # ------------------------------------------------------------------------------------ deferral
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

    def defer_many(self, specs: Sequence[DeferSpec | Mapping[str, Any]], *, timeout: float = 600) -> list[TaskRef]:
        """Put many task instances into DEFERRED in ONE subprocess / DB transaction.

        Per spec: get/create DagRun ``run_id`` (default ``manual__sandbox``; manual, running, with the
        latest dag_version), get/create the TI (``map_index`` >= 0 creates extra TIs for the task),
        then write what Airflow 3.3's execution API writes for ``TIDeferredStatePayload``.  Trigger
        kwargs are stored like the execution API does (serde JSON, not encrypted) unless
        ``encrypt_kwargs`` (then ``Trigger(classpath, kwargs)`` Fernet-encrypts them).  With
        ``validate`` (default) the trigger class is imported, instantiated and ``serialize()``-d.
        """
        payload = []
        for spec in specs:
            d = dataclasses.asdict(spec) if isinstance(spec, DeferSpec) else dict(spec)
            if "trigger_classpath" in d:
                d["classpath"] = d.pop("trigger_classpath")
            if "trigger_kwargs" in d:
                d["kwargs"] = d.pop("trigger_kwargs")
            d["kwargs"] = dict(d.get("kwargs") or {})
            if d.get("next_kwargs") is not None:
                d["next_kwargs"] = dict(d["next_kwargs"])
            payload.append(d)
        if not payload:
            return []
        result = self._run_worker("defer", {"specs": payload}, timeout=timeout)
        self.timings["last_defer_worker"] = result["seconds"]
        return [
            TaskRef(
                dag_id=r["dag_id"],
                run_id=r["run_id"],
                task_id=r["task_id"],
                map_index=r["map_index"],
                ti_id=r["ti_id"],
                trigger_id=r["trigger_id"],
            )
            for r in result["refs"]
        ]

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

    def seed(self, connections: Sequence[Mapping[str, Any]] = (), variables: Mapping[str, str] | None = None) -> None:
        """Add connections (``Connection(**kwargs)``, e.g. ``conn_id``, ``conn_type``, ``host``) and variables."""
        self._run_worker("seed", {"connections": [dict(c) for c in connections], "variables": dict(variables or {})})

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
            raise SandboxError(f"no asset watcher trigger was created for asset {asset_name!r}: {self.import_errors}")
        return int(rows[0][0])
