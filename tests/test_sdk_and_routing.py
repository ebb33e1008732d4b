"""What trigger code can ask for (connections, variables, DAG-run state — sync and async), and
routing of asset-watcher triggers to the bundle of the DAG that declares the watcher."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mt_testsupport.home import AirflowHome, DeferSpec, deferring_bundle, iso_in
from mt_testsupport.routed import routed

pytestmark = pytest.mark.timeout(180)
SDK = "mt_testsupport.triggers.SdkCallsTrigger"
FIRE_AT_EVENT = "mt_testsupport.triggers.FireAtEventTrigger"


def test_sdk_calls_are_answered_by_the_supervisor_and_asset_watchers_run_in_their_bundle(tmp_path, start_triggerer):
    home = AirflowHome.create(tmp_path / "home", {"team_a": deferring_bundle("dag_a", n_tasks=2), "team_b": deferring_bundle("dag_b")})
    home.seed(connections=[{"conn_id": "sdk_conn", "conn_type": "http", "host": "api.example.internal"}],
              variables={"sdk_var": "from-the-metastore"})
    watcher_trigger = home.add_asset_watcher("watching_b", "asset_b", FIRE_AT_EVENT, {"moment": iso_in(12)}, bundle="team_b")
    ref, env_ref = home.defer_many([
        DeferSpec("dag_a", "t0", SDK, {"conn_id": "sdk_conn", "variable": "sdk_var", "dag_id": "dag_a",
                                        "run_id": "manual__sandbox"}, encrypt_kwargs=True),
        DeferSpec("dag_a", "t1", SDK, {"conn_id": "env_conn", "variable": "env_var", "dag_id": "dag_a",
                                        "run_id": "manual__sandbox"}, encrypt_kwargs=True),
    ])
    # The environment secrets backend of the supervisor: other teams' secrets, never in a loop's env.
    secrets = {"AIRFLOW_CONN_ENV_CONN": "http://user:pw@env-host.internal", "AIRFLOW_VAR_ENV_VAR": "from-the-env"}
    mt = start_triggerer(home, "--skip-serve-logs", env=secrets,
                         config='[loops.team_a]\nbundles = ["team_a"]\n[loops.team_b]\nbundles = ["team_b"]\n')

    states = home.wait_for_states([ref, env_ref], "scheduled", timeout=90)
    event = states[ref].event
    assert event["sync_host"] == event["async_host"] == "api.example.internal"
    assert event["variable"] == "from-the-metastore"
    assert event["dag_run_state"] == "running"
    assert event["loop"] == "team_a"
    # Env-defined connections and variables still reach trigger code, through the supervisor.
    env_event = states[env_ref].event
    assert env_event["sync_host"] == env_event["async_host"] == "env-host.internal"
    assert env_event["variable"] == "from-the-env"
    assert event["env_secret_names"] == env_event["env_secret_names"] == []
    # Every bundle has its own loop and no trigger went to the default loop: it was never started.
    assert re.search(r"loop started .*loop=team_a", mt.text()) and re.search(r"loop started .*loop=team_b", mt.text())
    assert not re.search(r"loop started .*loop=default", mt.text())

    # The watcher lives in a DAG of bundle team_b: its trigger is routed to team_b's loop,
    # and its event becomes an asset event.
    home.wait_for(lambda: routed(mt.text()).get(watcher_trigger) == "team_b", timeout=60)
    rows = home.wait_for(lambda: home.sql("SELECT extra FROM asset_event"), timeout=60)
    assert "team_b" in str(rows[0][0])


_BUILD = """
import json, sys
from pathlib import Path
from airflow.jobs.job import Job
from airflow.utils.session import create_session
from multitrigger.config import load_config
from multitrigger.scope import Scope
from multitrigger.supervisor.claims import Claim
from multitrigger.supervisor.store import TriggerStore
config, ids = load_config(Path(sys.argv[1])), json.loads(sys.argv[2])
with create_session() as session:  # a live job holding both triggers, as if it had claimed them
    job = Job(heartrate=1)
    job.job_type = "TriggererJob"
    session.add(job)
    session.flush()
    session.execute(__import__("sqlalchemy").text("UPDATE trigger SET triggerer_id = :j"), {"j": job.id})
built, failures = TriggerStore(job, Claim(100, None, None, 30.0), Scope.of(config)).build(set(ids))
print(json.dumps({"built": [[w.id, o.bundle] for w, o in built], "failures": failures}))
"""


def _build(home: AirflowHome, config: Path, ids: dict[str, int]) -> tuple[subprocess.CompletedProcess, dict]:
    """``TriggerStore.build`` of ``ids`` in a fresh interpreter (as a supervisor's DB lane runs it)."""
    out = subprocess.run([sys.executable, "-c", _BUILD, str(config), json.dumps(list(ids.values()))], env=home.env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out, json.loads(out.stdout.splitlines()[-1])


def test_a_held_trigger_of_a_bundle_this_instance_does_not_serve_is_handed_back_not_run(tmp_path):
    """Claiming takes only served bundles, by the bundle routing gives a trigger; a trigger whose
    bundle changed since (its DAG moved to a dedicated bundle, say) is handed back by the build,
    never routed to the default loop. Here: two triggers held by one instance, one of them of a
    ``dedicated`` bundle."""
    home = AirflowHome.create(tmp_path / "home", {"team_a": deferring_bundle("dag_a"), "team_b": deferring_bundle("dag_b")})
    refs = home.defer_many([DeferSpec(dag, "t0", "mt_testsupport.triggers.WhoAmITrigger", {"paths": []})
                            for dag in ("dag_a", "dag_b")])
    config = tmp_path / "mt.toml"
    config.write_text('[loops.team_a]\nbundles = ["team_a"]\nlevel = "dedicated"\n[loops.team_b]\nbundles = ["team_b"]\n')
    ids = {ref.dag_id: ref.trigger_id for ref in refs}
    out, result = _build(home, config, ids)
    assert result == {"built": [[ids["dag_b"], "team_b"]], "failures": []}, result
    owners = dict(home.sql("SELECT id, triggerer_id FROM trigger"))
    assert owners[ids["dag_a"]] is None and owners[ids["dag_b"]] is not None, owners  # team_a's: free for its instance
    assert "handed back" in out.stdout + out.stderr


def test_a_trigger_whose_dag_cannot_be_built_fails_alone_and_the_others_are_built(tmp_path):
    """Stock's build lets one trigger's error escape the whole pass (every team's claims, and the
    heartbeat after them, stop). A DAG whose serialized form does not load in the triggerer (here:
    a timetable class that does not exist) fails its own trigger, with the reason, and the other
    bundle's trigger is built."""
    home = AirflowHome.create(tmp_path / "home", {"team_a": deferring_bundle("dag_a"), "team_b": deferring_bundle("dag_b")})
    refs = home.defer_many([DeferSpec(dag, "t0", "mt_testsupport.triggers.WhoAmITrigger", {"paths": []})
                            for dag in ("dag_a", "dag_b")])
    (data,) = home.sql("SELECT data FROM serialized_dag WHERE dag_id = 'dag_b'")[0]
    broken = json.loads(data) if isinstance(data, str) else data
    broken["dag"]["timetable"] = {"__type": "no_such_module.NoSuchTimetable", "__var": {}}
    home.sql("UPDATE serialized_dag SET data = :d WHERE dag_id = 'dag_b'", {"d": json.dumps(broken)})
    config = tmp_path / "mt.toml"
    config.write_text('[loops.team_a]\nbundles = ["team_a"]\n[loops.team_b]\nbundles = ["team_b"]\n')
    ids = {ref.dag_id: ref.trigger_id for ref in refs}
    out, result = _build(home, config, ids)
    assert result["built"] == [[ids["dag_a"], "team_a"]], result
    ((failed_id, reason),) = result["failures"]
    assert failed_id == ids["dag_b"] and "could not build this trigger's workload" in reason[0], result


_RELEASE = """
import json, sys
from pathlib import Path
from sqlalchemy import text
from airflow.jobs.job import Job
from airflow.utils.session import create_session
from multitrigger.config import load_config
from multitrigger.scope import Scope
from multitrigger.supervisor.claims import Claim
from multitrigger.supervisor.store import TriggerStore
config = load_config(Path(sys.argv[1]))
with create_session() as session:
    job = Job(heartrate=1)
    job.job_type = "TriggererJob"
    session.add(job)
    session.flush()
    session.execute(text("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000) "
                         "INSERT INTO trigger (classpath, kwargs, created_date, triggerer_id) "
                         "SELECT 'x.Y', '{}', CURRENT_TIMESTAMP, :j FROM n"), {"j": job.id})
    ids = sorted(session.scalars(text("SELECT id FROM trigger WHERE triggerer_id = :j"), {"j": job.id}))
store = TriggerStore(job, Claim(100, None, None, 30.0), Scope.of(config))
keep = ids[:33000]  # more outcomes pending than SQLite binds in one statement (32,766)
released = store.release(keep=keep)
with create_session() as session:
    still = session.scalar(text("SELECT count(*) FROM trigger WHERE triggerer_id = :j"), {"j": job.id})
print(json.dumps([released, still]))
"""


def test_the_final_hand_back_keeps_more_pending_triggers_than_one_statement_can_bind(tmp_path):
    """Shutdown hands back every held trigger but those whose outcome is not written yet; with more
    of those than SQLite binds in one statement the hand-back still happens (it failed whole)."""
    home = AirflowHome.create(tmp_path / "home", {"team_a": deferring_bundle("dag_a")})
    config = tmp_path / "mt.toml"
    config.write_text('[loops.team_a]\nbundles = ["team_a"]\n')
    out = subprocess.run([sys.executable, "-c", _RELEASE, str(config)], env=home.env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [7000, 33000]
