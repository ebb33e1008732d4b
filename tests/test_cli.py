"""The command line as an operator uses it: real processes, real Airflow home, real venvs."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil
import pytest

from mt_testsupport.home import AirflowHome, deferring_bundle
from tests.conftest import MULTITRIGGER

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    return AirflowHome.create(tmp_path_factory.mktemp("cli") / "home", {"team_a": deferring_bundle("dag_a")})


def mt(home: AirflowHome, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([MULTITRIGGER, *args], env=home.env(), capture_output=True, text=True, timeout=timeout, cwd=home.path)


def test_venv_create_then_config_check_hand_shakes_with_the_venv(home, tmp_path):
    venv = tmp_path / "venvs" / "team_a"
    created = mt(home, "venv", "create", str(venv))
    assert created.returncode == 0, created.stderr
    config = tmp_path / "multitrigger.toml"
    config.write_text(f'[loops.team_a]\nbundles = ["team_a"]\nvenv = "{venv}"\n')
    checked = mt(home, "config", "check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"loop team_a: venv, python {venv}/bin/python, bundles team_a" in checked.stdout
    # Where the loop finds trigger code: the home's plugins folder, config dir and its bundle's root.
    for line in (f"trigger code: plugins_folder: {home.path / 'plugins'}",
                 f"trigger code: AIRFLOW_HOME/config: {home.path / 'config'}",
                 f"trigger code: bundle team_a: {home.bundles['team_a']}"):
        assert line in checked.stdout, checked.stdout


def test_bad_config_stops_start_up_naming_file_key_and_fix(home, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[loops.a]\nbundles = ["x"]\n[loops.b]\nbundles = ["x"]\nvenv = "/nonexistent/venv"\ncolour = "red"\n')
    for command in (["config", "check"], ["run", "--skip-serve-logs"]):
        result = mt(home, *command, "--config", str(config))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{config}: loops.b.bundles: bundle 'x' is in both loops 'a' and 'b'" in result.stderr
        assert f"{config}: loops.b.venv:" in result.stderr
        assert f"{config}: loops.b.colour: unknown key — remove it or use one of:" in result.stderr
    missing = mt(home, "run", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


def test_stock_flag_rules_are_kept(home):
    queues = mt(home, "run", "--skip-serve-logs", "--queues", "q1")
    assert queues.returncode != 0
    assert "--queues option may only be used when triggerer.queues_enabled is `True`." in queues.stderr
    team = mt(home, "run", "--skip-serve-logs", "--team-name", "t1")
    assert team.returncode != 0
    assert "--team-name option may only be used when core.multi_team is enabled." in team.stderr


def test_daemon_mode_registers_a_triggerer_job_that_airflow_sees(home, tmp_path):
    pid_file, log_file = tmp_path / "mt.pid", tmp_path / "mt.log"
    started = mt(home, "run", "-D", "--skip-serve-logs", "--pid", str(pid_file), "--log-file", str(log_file),
                 "--stdout", str(tmp_path / "out"), "--stderr", str(tmp_path / "err"))
    assert started.returncode == 0, started.stderr
    pid = int(home.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60))
    try:
        home.wait_for(lambda: home.sql("SELECT count(*) FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")[0][0], timeout=60)
        check = home.run_airflow("jobs", "check", "--job-type", "TriggererJob", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "Found one alive job." in check.stdout
    finally:
        os.kill(pid, signal.SIGTERM)
    home.wait_for(lambda: not psutil.pid_exists(pid), timeout=60)
