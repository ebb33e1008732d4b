"""A REAL, isolated Airflow 3.3 environment (AIRFLOW_HOME + metadata DB): what ``multitrigger demo``
runs on, and the base of the test support's homes (``mt_testsupport.home``).

Nothing here is mocked: the metadata DB is migrated by Airflow, DAG bundles are parsed and
serialized by Airflow (``airflow dags reserialize`` steps), DagRuns/TaskInstances/Triggers are
created with Airflow's models the way the scheduler + execution API (3.3.2) would.

The calling process never imports Airflow through this module: everything that needs Airflow's
(process-global) configuration runs in a subprocess with :meth:`AirflowHome.env`
(:mod:`multitrigger.demo._worker`), and state is read back with plain SQL through SQLAlchemy Core
on the home's DB URL.  One process can therefore juggle several homes.

Typical use::

    home = AirflowHome.create(root / "home", {"b1": deferring_bundle("d1")})
    refs = home.defer_many([DeferSpec("d1", "t0", FIRE_AT, {"moment": iso_in(3)})])
    home.ti_states(refs)[refs[0]].event  # -> {"fired_at": ..., "pid": ..., ...} once it fired
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from multitrigger.demo.dag_sources import deferring_bundle, deferring_dag_source
from multitrigger.demo.rows import DbReader, TaskRef, TIState, decode_serde
from multitrigger.demo.workers import PACKAGE_ROOT, HomeError, run_worker

__all__ = [
    "AirflowHome",
    "DeferSpec",
    "HomeError",
    "TaskRef",
    "TIState",
    "FIRE_AT",
    "RAISE",
    "LOCAL_BUNDLE_CLASSPATH",
    "DEFAULT_RUN_ID",
    "decode_serde",
    "deferring_bundle",
    "deferring_dag_source",
    "iso_in",
]

FIRE_AT = "multitrigger.demo.triggers.FireAtTrigger"
RAISE = "multitrigger.demo.triggers.RaiseTrigger"
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
        SQLite file in the home (migrated by Airflow); a PostgreSQL URL is
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

        setup = home._prepare_database(own_sqlite=db_url is None, timeout=timeout)
        t0 = time.monotonic()
        result = home._run_worker("setup", setup, timeout=timeout)
        home.timings["setup_subprocess"] = time.monotonic() - t0
        home.dags = {dag_id: info["bundle"] for dag_id, info in result["serialize"]["dags"].items()}
        home.import_errors = result["serialize"]["import_errors"]
        home.timings["create"] = time.monotonic() - t_start
        return home

    def _prepare_database(self, *, own_sqlite: bool, timeout: float) -> dict[str, bool]:
        """The ``setup`` worker's DB step: migrate, resetting any DB that is not the home's own file."""
        return {"migrate": True, "reset": not self.db_url.startswith("sqlite")}

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
        lines = ["# Written by multitrigger.demo.home.AirflowHome -- do not edit by hand.", ""]
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
        env["PYTHONPATH"] = str(PACKAGE_ROOT) + (os.pathsep + pp if pp else "")
        if extra:
            env.update(extra)
        return env

    # ------------------------------------------------------------------------- subprocess worker
    def _run_worker(self, command: str, request: Mapping[str, Any], *, timeout: float = 600) -> Any:
        """Run one :mod:`multitrigger.demo._worker` command with this home's environment."""
        return run_worker(command, request, env=self.env(), python=self.python, workdir=self.path / ".sandbox",
                          timeout=timeout)

    # ------------------------------------------------------------------------------------ deferral
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
