"""
Per-trigger log files, served the way the Airflow UI reads them while a task is deferred.

The fetch is Airflow's own ``_fetch_logs_from_service`` (what ``FileTaskHandler`` calls for a
deferred task: a JWT-signed GET to the triggerer's ``[logging] trigger_log_server_port``), run in
a subprocess against the home's configuration.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from mt_testsupport.home import WAIT_FOREVER, AirflowHome, DeferSpec, deferring_bundle

pytestmark = pytest.mark.timeout(180)

FETCH = """
import sys
from airflow.utils.log.file_task_handler import _fetch_logs_from_service
port, rel = sys.argv[1], sys.argv[2]
resp = _fetch_logs_from_service(f"http://127.0.0.1:{port}/log/{rel}", rel)
print("STATUS", resp.status_code)
print("BODY", resp.text)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trigger_log_file_is_written_and_served_to_the_ui(tmp_path, start_triggerer):
    port = free_port()
    home = AirflowHome.create(
        tmp_path / "home", {"team_a": deferring_bundle("dag_a")},
        extra_config={"logging": {"trigger_log_server_port": str(port)}},
    )
    (ref,) = home.defer_many([DeferSpec("dag_a", "t0", WAIT_FOREVER, {"marker_path": str(tmp_path / "m")})])
    mt = start_triggerer(home, config='[loops.team_a]\nbundles = ["team_a"]\n')

    def trigger_log():
        found = list(home.logs_dir.rglob("*.trigger.*.log"))
        return found if found and "starting" in found[0].read_text() else None

    (path,) = home.wait_for(trigger_log, timeout=90)
    text = path.read_text()
    assert "trigger dag_a/" in text and "starting" in text
    ((job_id,),) = home.sql("SELECT id FROM job WHERE job_type = 'TriggererJob'")
    assert path.name.endswith(f".trigger.{job_id}.log")  # the name FileTaskHandler.add_triggerer_suffix expects

    rel = str(path.relative_to(home.logs_dir))
    fetch = subprocess.run([sys.executable, "-c", FETCH, str(port), rel], env=home.env(),
                           capture_output=True, text=True, timeout=60)
    assert "STATUS 200" in fetch.stdout, fetch.stdout + fetch.stderr
    body = fetch.stdout.partition("BODY ")[2]
    assert "starting" in body
    assert "multitrigger supervisor starting" in mt.text()
