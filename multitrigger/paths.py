"""
Where multitrigger's files live under ``AIRFLOW_HOME``: the default config file, the state directory.

Why a module of its own: ``cli`` (the default ``--config``), ``supervisor.prestart`` (which runs
before anything imports Airflow, so it cannot ask Airflow for its home) and the job runner all need
these, and ``prestart`` must not import ``cli`` (``cli`` imports ``prestart``). No Airflow import.

``airflow_home`` resolves the home as Airflow 3.3.2's ``airflow.configuration.get_airflow_home``
does: ``$AIRFLOW_HOME`` (default ``~/airflow``) with variables and ``~`` expanded until stable.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "multitrigger.toml"
STATE_DIR = "multitrigger"


def airflow_home() -> Path:
    """``$AIRFLOW_HOME``, expanded like Airflow's ``expand_env_var``; ``~/airflow`` when unset."""
    value = os.environ.get("AIRFLOW_HOME", "~/airflow")
    while (expanded := os.path.expanduser(os.path.expandvars(value))) != value:
        value = expanded
    return Path(value)


def default_config_path() -> Path:
    """``$AIRFLOW_HOME/multitrigger.toml``: the config read when ``--config`` is not given."""
    return airflow_home() / CONFIG_FILE


def state_dir() -> Path:
    """``$AIRFLOW_HOME/multitrigger``: per-loop homes, blame files, zygote homes."""
    return airflow_home() / STATE_DIR
