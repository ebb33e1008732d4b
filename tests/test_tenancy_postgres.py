"""
Bundle-aware claiming on a real PostgreSQL trigger table: dedicated bundles and capacity shares.

- A serves every bundle but ``team_a`` (its loop is ``level = "dedicated"``); B runs
  ``--bundles team_a``. Every team_a trigger runs on B, none on A — asset watchers too, whose
  bundle is their DAG's: team_a's watcher on B, team_b's on A; when B is SIGKILLed A does not
  take team_a's triggers, even past the health threshold; a second B takes them over.
- ``capacity = 20`` on team_a's loop, 300 team_a triggers due at once: team_a never holds more
  than 20 at once; team_b's triggers, deferred after the flood, are claimed and fire on time.

PostgreSQL database ``multitrigger_tenancy[suffix]`` (see ``tests.conftest.pg_url``).
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from mt_testsupport.home import FIRE_AT, FIRE_AT_EVENT, AirflowHome, DeferSpec, deferring_bundle, iso_in
from mt_testsupport.procs import process_tree
from mt_testsupport.routed import routed
from tests.conftest import pg_url
from tests.test_ha_postgres import _job_id_of, _records

pytestmark = pytest.mark.timeout(300)

THRESHOLD = 6  # [triggerer] triggerer_health_check_threshold (s)
DAGS = {"dag_a": "team_a", "dag_b": "team_b", "dag_s": "shared"}
DEDICATED = """
    [loops.team_a]
    bundles = ["team_a"]
    level = "dedicated"
    [loops.team_b]
    bundles = ["team_b"]
    """
ARGS = ("--skip-serve-logs",)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    bundles = {bundle: deferring_bundle(dag_id, n_tasks=10) for dag_id, bundle in DAGS.items()}
    extra = {"triggerer": {"triggerer_health_check_threshold": str(THRESHOLD), "job_heartbeat_sec": "1",
                           "max_trigger_to_select_per_loop": "50"}}
    home = AirflowHome.create(tmp_path_factory.mktemp("tenancy") / "home", bundles,
                              db_url=pg_url("multitrigger_tenancy"), extra_config=extra)
    yield home
    home.close()


def _owners(home: AirflowHome) -> dict[int, tuple[str, int | None]]:
    """trigger id → (bundle, triggerer_id) for every task-instance trigger."""
    rows = home.sql("SELECT t.id, d.bundle_name, t.triggerer_id FROM trigger t "
                    "JOIN task_instance ti ON ti.trigger_id = t.id JOIN dag d ON d.dag_id = ti.dag_id")
    return {tid: (bundle, owner) for tid, bundle, owner in rows}


def _stale(home: AirflowHome, job_id: int) -> bool:
    (age,) = home.sql("SELECT extract(epoch FROM now() - latest_heartbeat) FROM job WHERE id = :id", {"id": job_id})[0]
    return float(age) > THRESHOLD


def _specs(tmp_path: Path, dag_id: str, n: int, moment: str, run_id: str, gate: Path | None = None) -> list[DeferSpec]:
    kwargs = {"moment": moment, **({"gate": str(gate)} if gate else {})}
    return [DeferSpec(dag_id, f"t{i % 10}", FIRE_AT, {**kwargs, "record_path": str(tmp_path / f"{run_id}.{dag_id}.{i}.rec")},
                      run_id=run_id, map_index=i // 10) for i in range(n)]


@pytest.fixture
def watchers(home: AirflowHome):
    """An asset watcher in a DAG of team_a and one of team_b: bundle → trigger id. Their trigger rows
    are deleted afterwards (the asset_watcher rows go with them), so the next test's instance does
    not hold them."""
    ids = {bundle: home.add_asset_watcher(f"watch_{bundle}", f"asset_{bundle}", FIRE_AT_EVENT, {"moment": iso_in(3600)},
                                          bundle=bundle) for bundle in ("team_a", "team_b")}
    yield ids
    home.sql("DELETE FROM trigger WHERE id IN (:a, :b)", {"a": ids["team_a"], "b": ids["team_b"]})


def test_dedicated_bundle_runs_only_on_its_instance_and_is_taken_over_only_by_one(home, start_triggerer, tmp_path, watchers):
    a = start_triggerer(home, *ARGS, config=DEDICATED, name="a")
    b = start_triggerer(home, *ARGS, "--bundles", "team_a", config=DEDICATED, name="b")

    def tail() -> str:
        return "\n".join(f"--- {p.log.name} ---\n{p.text()[-2500:]}" for p in (a, b, *extra))

    extra: list = []
    job_a, job_b = (home.wait_for(lambda p=p: _job_id_of(p.text()), timeout=90, message=tail) for p in (a, b))

    # They fire once the test opens the gate, after the takeover: until then they run and wait.
    gate = tmp_path / "gate"
    specs = [s for dag in DAGS for s in _specs(tmp_path, dag, 6, iso_in(0), "ded", gate)]
    refs = home.defer_many(specs)
    record_of = {(s.dag_id, s.task_id, s.map_index): Path(s.kwargs["record_path"]) for s in specs}
    bundle_of = {r.trigger_id: DAGS[r.dag_id] for r in refs}
    team_a = {tid for tid, bundle in bundle_of.items() if bundle == "team_a"}

    def claimed() -> dict | None:
        owners = _owners(home)
        return owners if len(owners) == len(refs) and all(o is not None for _, o in owners.values()) else None

    owners = home.wait_for(claimed, timeout=40, message=lambda: f"{_owners(home)}\n{tail()}")
    assert {o for tid, (_, o) in owners.items() if tid in team_a} == {job_b}, owners
    assert {o for tid, (_, o) in owners.items() if tid not in team_a} == {job_a}, owners
    # Asset watchers (no task instance): claimed and run by the instance serving their DAG's bundle.
    home.wait_for(lambda: _watcher_owners(home, watchers) == {"team_a": job_b, "team_b": job_a}, timeout=40,
                  message=lambda: f"{_watcher_owners(home, watchers)}\n{tail()}")
    home.wait_for(lambda: routed(b.text()).get(watchers["team_a"]) == "team_a", timeout=40, message=tail)
    home.wait_for(lambda: routed(a.text()).get(watchers["team_b"]) == "team_b", timeout=40, message=tail)
    assert watchers["team_a"] not in routed(a.text())

    # B dies. Past the health threshold A still does not take team_a's triggers: it does not serve them.
    b.popen.kill()
    b.popen.wait(10)
    home.wait_for(lambda: _stale(home, job_b), timeout=30)
    time.sleep(3)  # three of A's claim passes with B dead
    owners = _owners(home)
    assert {o for tid, (_, o) in owners.items() if tid in team_a} == {job_b}, owners  # still the dead job's
    assert _watcher_owners(home, watchers)["team_a"] == job_b

    # A second B takes them over.
    b2 = start_triggerer(home, *ARGS, "--bundles", "team_a", config=DEDICATED, name="b2")
    extra.append(b2)
    job_b2 = home.wait_for(lambda: _job_id_of(b2.text()), timeout=90, message=tail)
    home.wait_for(lambda: {o for tid, (_, o) in _owners(home).items() if tid in team_a} == {job_b2},
                  timeout=40, message=lambda: f"{_owners(home)}\n{tail()}")
    home.wait_for(lambda: _watcher_owners(home, watchers)["team_a"] == job_b2, timeout=40, message=tail)

    gate.touch()
    states = home.wait_for_states(refs, "scheduled", timeout=90)
    tree_a, tree_b2 = process_tree(a.popen.pid), process_tree(b2.popen.pid)
    for ref in refs:
        event = states[ref].event
        if ref.trigger_id in team_a:
            assert event["pid"] in tree_b2 and event["loop"] == "team_a", (ref, event)
        else:
            assert event["pid"] in tree_a, (ref, event)
            assert event["loop"] == ("team_b" if bundle_of[ref.trigger_id] == "team_b" else "default"), event
        if ref.trigger_id in team_a:  # started on B, then on B2: never on A
            records = _records(record_of[(ref.dag_id, ref.task_id, ref.map_index)])
            assert records and all(pid not in tree_a for _, pid, _ in records), records
    assert not re.search(r"loop started.*loop=team_a", a.text())  # A never even ran a team_a loop
    assert watchers["team_a"] not in routed(a.text())


def _watcher_owners(home: AirflowHome, watchers: dict[str, int]) -> dict[str, int | None]:
    rows = dict(home.sql("SELECT id, triggerer_id FROM trigger WHERE id IN (:a, :b)",
                         {"a": watchers["team_a"], "b": watchers["team_b"]}))
    return {bundle: rows.get(tid) for bundle, tid in watchers.items()}


def test_capacity_share_bounds_a_flood_and_others_fire_on_time(home, start_triggerer, tmp_path):
    config = """
        [loops.team_a]
        bundles = ["team_a"]
        capacity = 20
        [loops.team_b]
        bundles = ["team_b"]
        """
    a = start_triggerer(home, *ARGS, "--capacity", "1000", config=config, name="cap")
    job = home.wait_for(lambda: _job_id_of(a.text()), timeout=90, message=lambda: a.text()[-3000:])
    home.wait_for(lambda: "loop started" in a.text(), timeout=60, message=lambda: a.text()[-3000:])

    held_max = [0]

    def held_team_a() -> int:
        n = sum(1 for bundle, o in _owners(home).values() if bundle == "team_a" and o == job)
        held_max[0] = max(held_max[0], n)
        return n

    # The flood: 300 team_a triggers, all due at once (they fire as soon as they run).
    flood = home.defer_many(_specs(tmp_path, "dag_a", 300, iso_in(-1), "flood"))
    home.wait_for(lambda: held_team_a() == 20, timeout=60, interval=0.1, message=lambda: a.text()[-3000:])
    # Then team_b's, due 8 s later: claimed and fired on time while team_a is at its share.
    due_in = 8.0
    moment = iso_in(due_in)
    team_b = home.defer_many(_specs(tmp_path, "dag_b", 10, moment, "after"))
    t_deferred = time.monotonic()
    deadline = t_deferred + due_in + 60
    while time.monotonic() < deadline:
        assert held_team_a() <= 20, held_max
        if all(s.state == "scheduled" for s in home.ti_states(team_b).values()):
            break
        time.sleep(0.2)
    states = home.ti_states(team_b)
    assert all(s.state == "scheduled" for s in states.values()), states
    lateness = [(datetime.fromisoformat(s.event["fired_at"]) - datetime.fromisoformat(moment)).total_seconds()
                for s in states.values()]
    assert max(lateness) < 3.0, lateness  # on time: FireAt fires at its moment, never early
    # team_a's flood drains through its share: every one fires, never more than 20 held.
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end and not all(s.state == "scheduled" for s in home.ti_states(flood).values()):
        assert held_team_a() <= 20, held_max
        time.sleep(0.2)
    assert all(s.state == "scheduled" for s in home.ti_states(flood).values())
    assert held_max[0] == 20
    assert "loop at its capacity share" in a.text() and "capacity=20" in a.text()
    print(f"\n[tenancy] team_b lateness max {max(lateness):.2f}s; team_a held at most {held_max[0]}", flush=True)
