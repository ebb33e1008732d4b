"""A loop run as another Unix user (``user = ...``; the supervisor runs as root).

Real users (created with ``useradd`` if missing), one exec'd loop in its own venv and one forked
loop, each as its own user: the trigger runs with that uid, cannot read the supervisor's
``airflow.cfg`` (0600, as an operator keeps it) nor the other loops' homes (0700), writes into its
own home, and its trigger log file is written. Skipped unless the tests run as root (only root may
switch users).

The exec'd loop's venv is built by the ``world_venv`` fixture on Debian's ``/usr/bin/python3.11``
(``mt_testsupport.shared_venv``): the project venv's interpreter lives under ``/root`` (0700), which
another user cannot exec.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mt_testsupport.home import AirflowHome, DeferSpec, deferring_bundle
from mt_testsupport.shared_venv import SYSTEM_PYTHON, shared_venv

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(os.geteuid() != 0, reason="running a loop as another user needs root")]

WHOAMI = "mt_testsupport.triggers.WhoAmITrigger"
USERS = {"team_a": "mt_loop_a", "team_b": "mt_loop_b"}


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if not shutil.which("useradd"):
            pytest.skip("useradd is not available to create the loop users")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def world_venv() -> Path:
    """A venv any user can run, with this environment's Airflow and multitrigger (cached; ~2 s to build)."""
    from multitrigger.interpreter_probe import source_root
    from multitrigger.loop.privileges import first_barrier

    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} (a CPython outside /root) is needed for an exec'd loop as another user")
    if barrier := first_barrier(source_root() / "multitrigger", _user(USERS["team_a"]).pw_name, os.R_OK | os.X_OK):
        pytest.skip(f"this checkout is closed to other users at {barrier}: an exec'd loop run as one cannot import it")
    return shared_venv().parent.parent


def test_loops_run_as_their_users_and_cannot_read_the_supervisors_config(tmp_path, start_triggerer, world_venv):
    users = {bundle: _user(name) for bundle, name in USERS.items()}
    # pytest makes its temporary directories 0700: let the loop users traverse to their homes, as
    # they traverse to $AIRFLOW_HOME/multitrigger/loops on a real host (x only, no listing).
    for parent in [tmp_path, *tmp_path.parents][:-2]:
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    port = _free_port()  # the trigger log server's ([logging] trigger_log_server_port), as stock serves it
    home = AirflowHome.create(tmp_path / "home", {b: deferring_bundle(f"dag_{b[-1]}") for b in USERS},
                              extra_config={"logging": {"trigger_log_server_port": str(port)}})
    cfg = home.path / "airflow.cfg"
    os.chmod(cfg, 0o600)
    loops = home.path / "multitrigger" / "loops"
    config = f"""
        [loops.team_a]
        bundles = ["team_a"]
        venv = "{world_venv}"
        start_method = "exec"
        user = "{USERS['team_a']}"
        [loops.team_b]
        bundles = ["team_b"]
        user = "{USERS['team_b']}"
        """
    paths = {b: [str(cfg), str(loops / ("team_b" if b == "team_a" else "team_a")), str(loops / "default")] for b in USERS}
    refs = home.defer_many([DeferSpec(f"dag_{b[-1]}", "t0", WHOAMI, {"paths": paths[b]}) for b in USERS])
    mt = start_triggerer(home, "--health-port", "0", config=config)
    states = home.wait_for_states(refs, "scheduled", timeout=150)
    for ref in refs:
        bundle = f"team_{ref.dag_id[-1]}"
        event, user = states[ref].event, users[bundle]
        assert event is not None, (states[ref], mt.text()[-3000:])
        assert event["loop"] == bundle, event
        if bundle == "team_a":  # exec'd: its venv's interpreter, not forked from a root zygote
            assert event["executable"] == str(world_venv / "bin" / "python"), event
        assert (event["uid"], event["gid"]) == (user.pw_uid, user.pw_gid), event
        assert 0 not in event["groups"], event
        assert event["opened"] == {p: "PermissionError" for p in paths[bundle]}, event
        wrote = os.stat(event["wrote"])
        assert wrote.st_uid == user.pw_uid and event["wrote"].startswith(str(loops / bundle))
        assert (os.stat(loops / bundle).st_mode & 0o777) == 0o700
    logs = {p.relative_to(home.logs_dir).as_posix(): p.read_text() for p in home.logs_dir.rglob("*.trigger.*.log")}
    for bundle, user in users.items():
        assert any(f"whoami uid={user.pw_uid}" in text for text in logs.values()), logs
    # Served to the UI: fetched over HTTP as the API server fetches a triggerer's log (Airflow's own
    # _fetch_logs_from_service: a JWT signed with [api] secret_key, audience task-instance-logs).
    [hostname] = [row[0] for row in home.sql("SELECT hostname FROM job WHERE job_type = 'TriggererJob'")]
    served = _fetch_served_logs(home, f"http://{hostname}:{port}/log/", sorted(logs))
    for rel, text in logs.items():  # the file as it was then (a line may have been added since)
        status, body = served[rel]
        assert status == 200 and body.startswith(text) and "whoami uid=" in body, (rel, served[rel], mt.text()[-3000:])
    with pytest.raises(urllib.error.HTTPError) as refused:  # and only with a token
        urllib.request.urlopen(f"http://127.0.0.1:{port}/log/{next(iter(logs))}", timeout=10)
    assert refused.value.code == 403


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


_FETCH = """
import json, sys, time
from airflow.utils.log.file_task_handler import _fetch_logs_from_service  # what FileTaskHandler reads with (3.3.2)
url, rels, out = sys.argv[1], json.loads(sys.argv[2]), {}
for rel in rels:
    for attempt in range(100):  # the log server is a subprocess of the triggerer: it may still be starting
        try:
            response = _fetch_logs_from_service(url + rel, rel)
            break
        except OSError:
            time.sleep(0.2)
    out[rel] = [response.status_code, response.text]
print(json.dumps(out))
"""


def _fetch_served_logs(home: AirflowHome, url: str, rels: list[str]) -> dict[str, list]:
    proc = subprocess.run([sys.executable, "-c", _FETCH, url, json.dumps(rels)], env=home.env(),
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def test_an_exec_loop_whose_user_cannot_reach_its_interpreter_is_a_config_error(tmp_path):
    """An exec'd loop drops to its user before its first import: an interpreter behind a directory
    closed to that user (here: pyenv under root's 0700 home, as on this machine) would crash-loop
    it with no output, so the config names the barrier and the fix. A forked loop is fine."""
    from multitrigger.config import ConfigError, load_config

    user = _user(USERS["team_b"])
    for parent in [tmp_path, *tmp_path.parents][:-2]:  # pytest's 0700 temp dirs: open them, as above
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    python = closed / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    cfg = tmp_path / "multitrigger.toml"
    body = f'[loops.team_b]\nbundles = ["team_b"]\npython = "{python}"\nuser = "{user.pw_name}"\n'
    cfg.write_text(body + 'start_method = "exec"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(cfg)
    text = str(refused.value)
    assert str(cfg) in text and "loops.team_b.user" in text, text
    assert f"cannot reach {python} ({closed} is closed to it)" in text and 'start_method = "fork"' in text, text
    cfg.write_text(body)  # forked from its zygote, which imports as root
    assert load_config(cfg).loops["team_b"].user == user.pw_name


def test_a_loop_user_that_cannot_reach_its_home_or_bundle_code_is_a_config_error(tmp_path):
    """The supervisor checks, before it starts any loop, that each loop's user reaches its home's
    parents and the trigger-code directories the config gives it (``Supervisor._check_users_reach``):
    a loop that cannot would die on every start with nothing in its log."""
    from multitrigger.loop.sys_path import PathEntry
    from multitrigger.supervisor.launch import user_reach_problems

    user = _user(USERS["team_b"])
    closed = tmp_path / "closed"  # pytest's temp dirs are 0700: closed to the loop user as they are
    (loops := closed / "state" / "loops").mkdir(parents=True)
    (bundle := closed / "bundles" / "team_b").mkdir(parents=True, mode=0o700)
    (lib := closed / "lib").mkdir(mode=0o700)
    (closed / "plugins").mkdir(mode=0o700)  # inherited from the host: not the loop config's to fix
    entries = (PathEntry(str(bundle), "bundle team_b", "back"), PathEntry(str(lib), "python_path", "front"),
               PathEntry(str(closed / "plugins"), "plugins_folder", "back"))
    problems = {p.key: p for p in user_reach_problems("team_b", user.pw_name, loops / "team_b", entries)}
    assert sorted(problems) == ["loops.team_b.bundle_code", "loops.team_b.python_path", "loops.team_b.user"], problems
    barrier = next(p for p in reversed(loops.parents) if not os.stat(p).st_mode & 0o001)  # root's, not its group
    assert problems["loops.team_b.user"].problem == (
        f"user {user.pw_name!r} cannot reach its loop home {loops / 'team_b'} ({barrier} is closed to it)")
    assert "set bundle_code = false" in problems["loops.team_b.bundle_code"].fix
    for parent in [tmp_path, *tmp_path.parents][:-2]:
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    closed.chmod(0o711)  # traversable, not listable: the home is reachable, the code directories are not
    assert [p.key for p in user_reach_problems("team_b", user.pw_name, loops / "team_b", entries)] == [
        "loops.team_b.bundle_code", "loops.team_b.python_path"]
    bundle.chmod(0o755)
    lib.chmod(0o755)
    assert user_reach_problems("team_b", user.pw_name, loops / "team_b", entries) == []
