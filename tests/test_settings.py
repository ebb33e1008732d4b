"""The supervisor's one settings object, resolved from the config file and Airflow's real ``conf``."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from multitrigger.config import SupervisorSettings, default_config, load_config
from multitrigger.supervisor.settings import RunSettings, resolve_run_settings


def test_file_and_airflow_settings_land_in_one_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW__TRIGGERER__RUNNER_HEALTH_CHECK_THRESHOLD", "7.5")
    monkeypatch.setenv("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "12")
    path = tmp_path / "multitrigger.toml"
    path.write_text(textwrap.dedent("""
        [supervisor]
        db_retry_limit = 5
        db_timeout = 2
        request_timeout = 3.5
        max_log_line_bytes = 2048
        log_bytes_per_second = 4096
        log_buffer_bytes = 8192
        """))
    s = resolve_run_settings(load_config(path))
    assert s.state_dir == tmp_path / "home" / "multitrigger"
    assert (s.runner_health_check_threshold, s.triggerer_health_check_threshold) == (7.5, 12.0)
    assert (s.db_retry_limit, s.db_timeout, s.request_timeout) == (5.0, 2.0, 3.5)
    assert (s.max_log_line_bytes, s.log_bytes_per_second, s.log_buffer_bytes) == (2048, 4096, 8192)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.db_timeout = 1.0  # type: ignore[misc]


def test_defaults_are_airflows_and_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow 3.3.2's [triggerer] defaults (unset here), the [supervisor] schema's defaults."""
    for key in ("RUNNER_HEALTH_CHECK_THRESHOLD", "TRIGGERER_HEALTH_CHECK_THRESHOLD"):
        monkeypatch.delenv(f"AIRFLOW__TRIGGERER__{key}", raising=False)
    resolved = resolve_run_settings(default_config())
    assert dataclasses.replace(resolved, state_dir=tmp_path) == RunSettings(state_dir=tmp_path)
    file_defaults = SupervisorSettings()
    assert {k: getattr(resolved, k) for k in SupervisorSettings.model_fields} == file_defaults.model_dump()
    assert (resolved.runner_health_check_threshold, resolved.triggerer_health_check_threshold) == (30.0, 30.0)


def test_every_supervisor_key_is_a_run_setting() -> None:
    """A new [supervisor] key must reach the supervisor (resolve passes the table through)."""
    run_fields = {f.name: f for f in dataclasses.fields(RunSettings)}
    for name, info in SupervisorSettings.model_fields.items():
        assert name in run_fields, name
        assert run_fields[name].default == info.default, name
