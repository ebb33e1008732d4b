"""Team-scoped secrets with ``[core] multi_team``: a trigger resolves connections and variables as
a task of its own team would (its team's plus global), never another team's: the supervisor refuses
(PERMISSION_DENIED, logged with its reason) and the task fails.

Real Airflow home (SQLite), real teams (``team``, ``dag_bundle_team`` rows as the DAG processor
writes them for a bundle with ``team_name``), connections and variables written with Airflow's own
models, one ``multitrigger run``; then stock ``airflow triggerer`` on the same home and workload, to
show what the README says stock does (its in-process Execution API client carries no task token).
"""

from __future__ import annotations

import re

import pytest

from mt_testsupport.home import AirflowHome, DeferSpec, decode_serde, deferring_bundle

pytestmark = pytest.mark.timeout(240)

SECRETS = "mt_testsupport.triggers.SecretsTrigger"
CONFIG = """
    [loops.team_a]
    bundles = ["team_a"]
    [loops.team_b]
    bundles = ["team_b"]
    """


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    bundles = {"team_a": deferring_bundle("dag_a", n_tasks=4), "team_b": deferring_bundle("dag_b", n_tasks=1),
               "shared": deferring_bundle("dag_s", n_tasks=1)}  # no team: the stock test's teamless control
    home = AirflowHome.create(tmp_path_factory.mktemp("teams") / "home", bundles,
                              extra_config={"core": {"multi_team": "True"}})
    home.sql("INSERT INTO team (name) VALUES ('team_a'), ('team_b')")
    home.sql("INSERT INTO dag_bundle_team (dag_bundle_name, team_name) VALUES ('team_a', 'team_a'), ('team_b', 'team_b')")
    home.seed(
        connections=[{"conn_id": "conn_a", "conn_type": "http", "host": "a.example", "team_name": "team_a"},
                     {"conn_id": "conn_b", "conn_type": "http", "host": "b.example", "team_name": "team_b"},
                     {"conn_id": "conn_g", "conn_type": "http", "host": "g.example"}],
        variables={"var_g": "global value"},
        team_variables=[{"key": "var_a", "value": "a value", "team_name": "team_a"},
                        {"key": "var_b", "value": "b value", "team_name": "team_b"}],
    )
    yield home
    home.close()


def _traceback(state) -> str:  # type: ignore[no-untyped-def]
    return "".join(decode_serde(state.next_kwargs)["traceback"])


def test_a_trigger_gets_its_teams_and_global_secrets_and_is_refused_another_teams(home, start_triggerer):
    asks = {
        "t0": (["conn_a", "conn_g"], ["var_a", "var_g"]),
        "t1": (["conn_b"], []),
        "t2": ([], ["var_b"]),
        "t3": (["no_such_conn"], []),
    }
    refs = home.defer_many([DeferSpec("dag_a", task, SECRETS, {"conn_ids": c, "var_keys": v}) for task, (c, v) in asks.items()])
    # multi_team triggers carry their team (trigger.team_name): as stock, an instance claims one team's
    mt = start_triggerer(home, "--skip-serve-logs", "--team-name", "team_a", "--health-port", "0", config=CONFIG)
    states = home.wait_for_states(refs, "scheduled", timeout=120)
    by_task = {(r.dag_id, r.task_id): states[r] for r in refs}
    log = mt.text()

    ok = by_task[("dag_a", "t0")]
    assert ok.next_method == "execute_complete", _traceback(ok) + log[-3000:]
    assert ok.event["conns"] == {"conn_a": "a.example", "conn_g": "g.example"}
    assert ok.event["vars"] == {"var_a": "a value", "var_g": "global value"}
    assert ok.event["loop"] == "team_a"
    for task, kind, key in (("t1", "connection", "conn_b"), ("t2", "variable", "var_b")):
        refused = by_task[("dag_a", task)]
        assert refused.next_method == "__fail__", refused
        # The supervisor answers PERMISSION_DENIED (its reason logged); the loop's SDK raises it as
        # an access denial, not "not defined", and falls back to no other secrets backend.
        assert f"Access denied for {kind} {key!r}" in _traceback(refused), _traceback(refused)
        assert "isn't defined" not in _traceback(refused)
        assert key in _traceback(refused) and "b value" not in _traceback(refused) and "b.example" not in _traceback(refused)
        assert re.search(rf"secret refused .*key={key} kind={kind} .*team=team_a", log), log[-3000:]
    missing = by_task[("dag_a", "t3")]  # really absent: not found, and no refusal logged
    assert missing.next_method == "__fail__" and "no_such_conn" in _traceback(missing)
    assert "key=no_such_conn" not in log


def test_stock_triggerer_claims_by_team_but_resolves_every_trigger_as_no_team(home, start_triggerer):
    """What stock ``airflow triggerer`` (3.3.2) does with the same teams and asks (README, "Team-scoped
    secrets"): one ask per trigger, each in its own DAG run of the team_a DAG, so no failure hides
    another and the multitrigger test's runs are untouched."""
    # Without --team-name, stock claims only teamless triggers (Trigger.get_sorted_triggers filters
    # team_name IS NULL under multi_team). Started first: its start-up overlaps the deferral.
    teamless = start_triggerer(home, "--skip-serve-logs", stock=True, name="stock-teamless")
    asks = {"conn_a": (["conn_a"], []), "conn_g": (["conn_g"], []), "conn_b": (["conn_b"], []),
            "var_a": ([], ["var_a"]), "var_g": ([], ["var_g"]), "var_b": ([], ["var_b"])}
    specs = [DeferSpec("dag_a", "t0", SECRETS, {"conn_ids": c, "var_keys": v}, run_id=f"stock_{key}")
             for key, (c, v) in asks.items()]
    control = DeferSpec("dag_s", "t0", SECRETS, {"conn_ids": ["conn_g"], "var_keys": ["var_g"]}, run_id="stock")
    *refs, control_ref = home.defer_many([*specs, control])
    ref_of = dict(zip(asks, refs))

    # The teamless control runs; team_a's triggers, unassigned in the same claim passes, are left alone.
    ctl = home.wait_for_states([control_ref], "scheduled", timeout=90)[control_ref]
    assert ctl.next_method == "execute_complete", _traceback(ctl) + teamless.text()[-3000:]
    assert ctl.event["conns"] == {"conn_g": "g.example"} and ctl.event["vars"] == {"var_g": "global value"}
    held = dict(home.sql("SELECT id, triggerer_id FROM trigger"))
    assert {r.trigger_id: held[r.trigger_id] for r in refs} == {r.trigger_id: None for r in refs}, held
    teamless.popen.terminate()  # stock waits ~10 s for its triggers to clean up: not in our way

    stock = start_triggerer(home, "--skip-serve-logs", "--team-name", "team_a", stock=True, name="stock-team_a")
    states = home.wait_for_states(refs, "scheduled", timeout=90)
    by_key = {key: states[ref] for key, ref in ref_of.items()}
    log = stock.text()

    # Global entries resolve ...
    assert by_key["conn_g"].next_method == "execute_complete", _traceback(by_key["conn_g"]) + log[-3000:]
    assert by_key["conn_g"].event["conns"] == {"conn_g": "g.example"}
    assert by_key["var_g"].next_method == "execute_complete", _traceback(by_key["var_g"])
    assert by_key["var_g"].event["vars"] == {"var_g": "global value"}
    # ... but not the trigger's own team's: with no task token the Execution API finds no team
    # (get_team_name_dep on TI id 00000000-...), so team_a's entries are as absent as team_b's, and
    # another team's entry is plain "not found" like a missing one: no refusal, nothing logged.
    for key in ("conn_a", "conn_b", "var_a", "var_b"):
        failed = by_key[key]
        assert failed.next_method == "__fail__", (key, failed)
        text = _traceback(failed)
        expected = (f"AirflowNotFoundException: The conn_id `{key}` isn't defined" if key.startswith("conn")
                    else f"VARIABLE_NOT_FOUND: {{'message': 'Variable {key} not found'}}")
        assert expected in text, text
        assert "Access denied" not in text and "a value" not in text and "a.example" not in text, text


_TEAMS = """
import json, sys
from pathlib import Path
from multitrigger.config import load_config
from multitrigger.supervisor.teams import LoopTeams
config = load_config(Path(sys.argv[1]))
teams = LoopTeams(config)
print(json.dumps({loop: teams.team_of(loop) for loop in config.loops}))
"""


def test_the_loop_that_runs_triggers_of_unknown_bundle_resolves_as_no_team(home, tmp_path):
    """team_b's bundle is the only known one left to the default loop, but that loop also runs the
    triggers routing cannot place (an asset watched by DAGs of two teams' bundles): it must not
    hand them team_b's secrets. A listed loop of one team keeps its team."""
    import json
    import subprocess
    import sys

    config = tmp_path / "mt.toml"
    config.write_text('[loops.team_a]\nbundles = ["team_a"]\n[loops.shared]\nbundles = ["shared"]\n')
    out = subprocess.run([sys.executable, "-c", _TEAMS, str(config)], env=home.env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    teams = json.loads(out.stdout.splitlines()[-1])
    assert teams == {"default": None, "team_a": "team_a", "shared": None}, teams
    assert "triggers of unknown bundle" in out.stdout + out.stderr  # the warning says why
