"""Every supervisor-wide setting in one resolved, immutable object, read from one place.

A setting comes from one of three sources, and :func:`resolve_run_settings` is the only code that
reads them for the supervisor, once, at start-up:

- multitrigger's own keys, the ``[supervisor]`` table of ``multitrigger.toml`` (validated, with
  their defaults, by ``multitrigger.config.schema.SupervisorSettings``: the defaults below are
  taken from there, not restated);
- Airflow's stock ``[triggerer]`` keys that mean the same thing for multitrigger, read with
  Airflow's ``conf`` (so ``AIRFLOW__TRIGGERER__*`` variables and ``airflow.cfg`` apply as for
  ``airflow triggerer``). Checked against Airflow 3.3.2, whose defaults are given here as
  field defaults: ``runner_health_check_threshold`` 30, ``triggerer_health_check_threshold`` 30;
- where multitrigger keeps its state under ``AIRFLOW_HOME`` (``multitrigger.paths``).

Not here, deliberately: ``[triggerer] capacity`` (the ``--capacity`` flag overrides it; the job
runner resolves the pair), ``job_heartbeat_sec`` (the ``Job``'s ``heartrate``, set where the job is
created, as the stock ``airflow triggerer`` command does), and the keys only loops read
(``blocked_main_thread_warning_threshold``, ``on_kill_timeout``: passed to them in their
environment by ``launch``) or only Airflow's claim query reads (``max_trigger_to_select_per_loop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airflow.configuration import conf
from multitrigger.config import Config, SupervisorSettings
from multitrigger.paths import state_dir

__all__ = ["RunSettings", "resolve_run_settings"]

_FILE = SupervisorSettings()  # the [supervisor] defaults


@dataclass(frozen=True)
class RunSettings:
    """What the supervisor runs with. Build it with :func:`resolve_run_settings`; tests may build
    one directly (every field but ``state_dir`` has the production default)."""

    state_dir: Path
    #: [triggerer]: a loop silent for this long is killed and restarted (s).
    runner_health_check_threshold: float = 30.0
    #: [triggerer]: a triggerer whose heartbeat is older than this is dead; its triggers are taken over (s).
    triggerer_health_check_threshold: float = 30.0
    #: How often the supervisor claims, routes and heartbeats (s); stock triggerer's loop period.
    claim_interval: float = 1.0
    #: SIGTERM: how long loops get to cancel their triggers before they are killed (s).
    shutdown_grace: float = 10.0
    # [supervisor] (multitrigger.toml); meanings in SupervisorSettings and the README.
    db_retry_limit: float = _FILE.db_retry_limit
    db_timeout: float = _FILE.db_timeout
    request_timeout: float = _FILE.request_timeout
    max_log_line_bytes: int = _FILE.max_log_line_bytes
    log_bytes_per_second: int = _FILE.log_bytes_per_second
    log_buffer_bytes: int = _FILE.log_buffer_bytes
    max_open_log_files: int | None = _FILE.max_open_log_files  # None: log_files.default_max_open()
    #: [supervisor] bundles: serve only these (``--bundles`` wins; the job runner's ``Scope`` decides).
    bundles: list[str] | None = _FILE.bundles
    cgroup_root: str = _FILE.cgroup_root  # where loops' cgroups are made (multitrigger.cgroups)


def resolve_run_settings(config: Config) -> RunSettings:
    """The settings for *config* on this host: ``[supervisor]`` from the file, ``[triggerer]`` from
    Airflow's configuration, the state directory under ``AIRFLOW_HOME``."""
    return RunSettings(
        state_dir=state_dir(),
        runner_health_check_threshold=conf.getfloat("triggerer", "runner_health_check_threshold"),
        triggerer_health_check_threshold=conf.getfloat("triggerer", "triggerer_health_check_threshold"),
        **config.supervisor.model_dump(),
    )
