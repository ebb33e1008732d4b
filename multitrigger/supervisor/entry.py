"""
``multitrigger run``: the same start-up as ``airflow triggerer`` with our job runner.

Mirrors ``airflow.cli.commands.triggerer_command.triggerer`` (Airflow 3.3.2): the same flag
checks and errors (``--queues`` needs ``[triggerer] queues_enabled``; ``--team-name`` needs
``[core] multi_team`` and an existing team), the same daemon handling (``-D``, ``--pid``,
``--stdout``, ``--stderr``, ``--log-file``) and the same trigger log server on
``[logging] trigger_log_server_port`` unless ``--skip-serve-logs`` — which here also skips importing
it: stock's ``_serve_logs`` imports the server (FastAPI, uvicorn: ~10 MB and ~0.7 s of CPU, measured)
even when it then starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import ContextManager

from airflow.cli.commands.daemon_utils import run_command_with_daemon_option
from airflow.configuration import conf
from airflow.exceptions import AirflowConfigException
from airflow.jobs.job import Job, run_job
from airflow.utils.providers_configuration_loader import providers_configuration_loaded
from multitrigger.config import Config


def _team_name(args: argparse.Namespace) -> str | None:
    team_name: str | None = getattr(args, "team_name", None)
    if team_name and not conf.getboolean("core", "multi_team"):
        raise AirflowConfigException("--team-name option may only be used when core.multi_team is enabled.")
    if team_name:
        from airflow.models.team import Team

        if Team.get_name_if_exists(team_name) is None:
            raise AirflowConfigException(f"Team {team_name!r} does not exist.")
    return team_name


def _log_server(skip: bool) -> ContextManager[None]:
    """Stock's trigger log server (a child process) around the run, unless ``skip``."""
    if skip:
        return contextlib.nullcontext()
    from airflow.cli.commands.triggerer_command import _serve_logs

    return _serve_logs(False)


@providers_configuration_loaded
def run_triggerer(args: argparse.Namespace, config: Config) -> int:
    from airflow.sdk._shared.secrets_masker import SecretsMasker

    from multitrigger.supervisor.job_runner import MultiTriggerJobRunner

    SecretsMasker.enable_log_masking()
    if args.queues and not conf.getboolean("triggerer", "queues_enabled", fallback=False):
        raise AirflowConfigException("--queues option may only be used when triggerer.queues_enabled is `True`.")
    team_name = _team_name(args)
    queues = set(args.queues) if args.queues else None
    result: list[int | None] = [0]

    def run() -> None:
        with _log_server(args.skip_serve_logs):
            job = Job(heartrate=conf.getfloat("triggerer", "JOB_HEARTBEAT_SEC"))
            runner = MultiTriggerJobRunner(job, config, capacity=args.capacity, queues=queues, team_name=team_name,
                                           bundles=getattr(args, "bundles", None))
            result[0] = run_job(job=runner.job, execute_callable=runner._execute)

    run_command_with_daemon_option(args=args, process_name="multitrigger", callback=run, should_setup_logging=True)
    return result[0] or 0
