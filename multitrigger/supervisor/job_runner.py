"""
The Airflow job that a multitrigger supervisor runs as: a ``TriggererJob``.

Checked against Airflow 3.3.2. Registering with ``job_type = "TriggererJob"`` is what makes
``airflow jobs check --job-type TriggererJob``, the UI's triggerer health and
``Trigger.assign_unassigned``'s liveness test see multitrigger exactly like a stock triggerer.
"""

from __future__ import annotations

import os

import structlog

from airflow._shared.observability.metrics import stats
from airflow.configuration import conf
from airflow.jobs.base_job_runner import BaseJobRunner
from airflow.jobs.job import Job
from airflow.observability.metrics import stats_utils
from multitrigger.config import Config
from multitrigger.scope import Scope, served_config
from multitrigger.supervisor.core import Supervisor
from multitrigger.supervisor.db_bounds import bound_airflow_engines
from multitrigger.supervisor.settings import resolve_run_settings
from multitrigger.supervisor.claims import Claim
from multitrigger.supervisor.log_files import LogFiles, default_max_open
from multitrigger.supervisor.store import TriggerStore

log = structlog.get_logger(__name__)


class MultiTriggerJobRunner(BaseJobRunner):
    """Runs the multitrigger supervisor under a ``TriggererJob`` row."""

    job_type = "TriggererJob"

    def __init__(self, job: Job, config: Config, capacity: int | None = None, queues: set[str] | None = None,
                 team_name: str | None = None, bundles: list[str] | None = None) -> None:
        super().__init__(job)
        self.config = config
        self.scope = Scope.of(config, bundles)
        self.capacity = capacity if capacity is not None else conf.getint("triggerer", "capacity")
        if self.capacity <= 0:
            raise ValueError(f"Capacity number {self.capacity!r} is invalid")
        self.queues = queues
        self.team_name = team_name

    def _execute(self) -> int | None:
        # Server context: GetConnection requests are answered from the metastore (as stock does).
        os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "server"
        stats.initialize(
            factory=stats_utils.get_stats_factory(),
            export_legacy_names=conf.getboolean("metrics", "legacy_names_on"),
        )
        settings = resolve_run_settings(self.config)
        claim = Claim(
            capacity=self.capacity,
            queues=self.queues,
            team_name=self.team_name,
            health_check_threshold=settings.triggerer_health_check_threshold,
        )
        bound_airflow_engines(settings.db_timeout)
        _warn_if_config_readable(self.config)
        log.info("serving", bundles=self.scope.served.describe(), loops=list(self.scope.loops),
                 shares={g.loop: g.capacity for g in self.scope.groups if g.loop}, capacity=self.capacity)
        log_files = LogFiles(settings.max_open_log_files or default_max_open())
        store = TriggerStore(self.job, claim, self.scope, log_files=log_files)
        return Supervisor(served_config(self.config, self.scope), settings, store).run()


def _warn_if_config_readable(config: Config) -> None:
    """Loops run as other users must not read the supervisor's ``airflow.cfg`` (DB URL, Fernet key)."""
    from airflow.configuration import AIRFLOW_CONFIG

    users = sorted({lp.user for lp in config.loops.values() if lp.user})
    if users and os.path.exists(AIRFLOW_CONFIG) and os.stat(AIRFLOW_CONFIG).st_mode & 0o044:
        log.warning("airflow.cfg is readable by other users, including loops run as other users; chmod 600 it",
                    path=AIRFLOW_CONFIG, loop_users=users)
