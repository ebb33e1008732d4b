"""
High availability on a real PostgreSQL trigger table.

Two ``multitrigger run`` supervisors and one stock ``airflow triggerer`` share one trigger table:
every trigger runs on exactly one of them, and when one supervisor is SIGKILLed its loop processes
die with it and its triggers are taken over by the survivors once its heartbeat goes stale.

PostgreSQL: a dedicated database ``multitrigger_ha[_<xdist worker>]`` on the server of
``MULTITRIGGER_TEST_PG_URL`` (default 127.0.0.1:5432, user postgres). ``AirflowHome.create`` resets
the database it is given, so this module never touches another module's database.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, deferring_bundle, iso_in
from mt_testsupport.procs import alive, cpu_seconds, process_tree
from tests.conftest import pg_url

pytestmark = pytest.mark.timeout(240)

HEALTH_CHECK_THRESHOLD = 6  # seconds without a heartbeat before a triggerer's triggers are taken over
N_TASKS = 5
MAP_INDEXES = (0, 1)  # 5 tasks x 2 map indexes x 3 bundles = 30 triggers
DAGS = {"dag_a": "team_a", "dag_b": "team_b", "dag_s": "shared"}
LOOP_OF_BUNDLE = {"team_a": "team_a", "team_b": "team_b", "shared": "default"}
FIRE_IN = 20.0  # seconds after deferral starts: after defer_many (~2 s), the claims (~4 s), the kill and the takeover

MT_CONFIG = """
    [loops.team_a]
    bundles = ["team_a"]

    [loops.team_b]
    bundles = ["team_b"]
    """
TRIGGERER_ARGS = ("--capacity", "20", "--skip-serve-logs")




@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    url = pg_url("multitrigger_ha")
    bundles = {bundle: deferring_bundle(dag_id, n_tasks=N_TASKS) for dag_id, bundle in DAGS.items()}
    extra = {
        "triggerer": {
            "triggerer_health_check_threshold": str(HEALTH_CHECK_THRESHOLD),
            "job_heartbeat_sec": "1",
            # Small claims per pass, so the three triggerers interleave instead of one taking all.
            "max_trigger_to_select_per_loop": "4",
        },
    }
    home = AirflowHome.create(tmp_path_factory.mktemp("ha") / "home", bundles, db_url=url, extra_config=extra)
    print(f"\n[ha timing] AirflowHome.create on PostgreSQL: {home.timings['create']:.1f}s", flush=True)
    yield home
    home.close()


# ------------------------------------------------------------------------------------ helpers
def _alive_triggerer_jobs(home: AirflowHome) -> set[int]:
    rows = home.sql(
        "SELECT id FROM job WHERE job_type = 'TriggererJob' AND end_date IS NULL "
        "AND latest_heartbeat > now() - make_interval(secs => :secs)",
        {"secs": HEALTH_CHECK_THRESHOLD},
    )
    return {r[0] for r in rows}


def _job_id_of(mt_log: str) -> int | None:
    m = re.search(r"multitrigger supervisor starting.*?job_id=(\d+)", mt_log)
    return int(m.group(1)) if m else None


def _loop_pids(mt_log: str) -> set[int]:
    return {int(p) for p in re.findall(r"loop started.*?pid=(\d+)", mt_log)}


def _settled(roots: list[int]) -> Callable[[], bool]:
    """A predicate for ``wait_for``: true once the process trees under ``roots`` are nearly idle
    (their loop/runner children have finished importing Airflow), so the timed part of the test
    does not compete with start-up for this machine's CPUs."""
    last: list[tuple[float, float]] = []

    def check() -> bool:
        now, used = time.monotonic(), cpu_seconds(set().union(*(process_tree(r) for r in roots)))
        last.append((now, used))
        if len(last) < 2:
            return False
        (t0, c0), (t1, c1) = last[-2], last[-1]
        return (c1 - c0) / (t1 - t0) < 0.15

    return check


def _records(path: Path) -> list[tuple[str, int, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        what, pid, loop = line.split()
        out.append((what, int(pid), loop))
    return out


# -------------------------------------------------------------------------------------- test
def test_two_supervisors_and_a_stock_triggerer_share_triggers_and_take_over_a_killed_one(
    home: AirflowHome, start_triggerer, tmp_path: Path
):
    t_begin = time.monotonic()
    mt1 = start_triggerer(home, *TRIGGERER_ARGS, config=MT_CONFIG, name="mt1")
    mt2 = start_triggerer(home, *TRIGGERER_ARGS, config=MT_CONFIG, name="mt2")
    stock = start_triggerer(home, *TRIGGERER_ARGS, stock=True, name="stock")
    procs = {"mt1": mt1, "mt2": mt2, "stock": stock}

    def logs_tail() -> str:
        return "\n".join(f"--- {n} ---\n{p.text()[-3000:]}" for n, p in procs.items())

    # All three are up and heartbeating before there is anything to claim, so the claims interleave.
    home.wait_for(lambda: len(_alive_triggerer_jobs(home)) == 3 and all(p.popen.poll() is None for p in procs.values()),
                  timeout=90, message=logs_tail)
    job_ids = {name: home.wait_for(lambda p=p: _job_id_of(p.text()), timeout=10, message=logs_tail)
               for name, p in (("mt1", mt1), ("mt2", mt2))}
    (job_ids["stock"],) = _alive_triggerer_jobs(home) - set(job_ids.values())
    name_of_job = {job: name for name, job in job_ids.items()}
    t_up = time.monotonic()
    home.wait_for(_settled([p.popen.pid for p in procs.values()]), timeout=90, interval=1.0,
                  message="the triggerers did not settle after start-up")
    t_settled = time.monotonic()

    # ~30 deferred TIs, one FireAtTrigger each, spread over the three bundles.
    t_moment = time.monotonic()
    moment = iso_in(FIRE_IN)
    specs, record_of = [], {}
    for dag_id in DAGS:
        for task in range(N_TASKS):
            for map_index in MAP_INDEXES:
                record = tmp_path / f"{dag_id}.t{task}.{map_index}.rec"
                record_of[(dag_id, f"t{task}", map_index)] = record
                specs.append(DeferSpec(dag_id, f"t{task}", FIRE_AT, {"moment": moment, "record_path": str(record)},
                                       run_id="ha", map_index=map_index))
    refs = home.defer_many(specs)
    t_deferred = time.monotonic()
    due = t_moment + FIRE_IN
    record_by_trigger = {r.trigger_id: record_of[(r.dag_id, r.task_id, r.map_index)] for r in refs}
    bundle_by_trigger = {r.trigger_id: DAGS[r.dag_id] for r in refs}
    assert len(record_by_trigger) == len(specs) == 30

    # Every trigger is claimed, by all three triggerers, and is running (its `start` line is written).
    def all_claimed():
        rows = {row.id: row.triggerer_id for row in home.trigger_rows()}
        if set(rows) != set(record_by_trigger) or None in rows.values():
            return None
        if set(rows.values()) != set(job_ids.values()):
            return None
        if not all(_records(record_by_trigger[tid]) for tid in rows):
            return None
        return rows

    owner = home.wait_for(all_claimed, timeout=due - time.monotonic() - 5,
                          message=lambda: f"{home.trigger_rows()}\n{logs_tail()}")
    t_claimed = time.monotonic()
    distribution = Counter(name_of_job[j] for j in owner.values())
    print(f"\n[ha] triggerers up {t_up - t_begin:.1f}s after start, idle {t_settled - t_begin:.1f}s; "
          f"defer_many {t_deferred - t_moment:.1f}s; "
          f"claims: {dict(distribution)}, all claimed and started {t_claimed - t_deferred:.1f}s after deferral",
          flush=True)
    for tid in owner:  # nothing has run twice yet
        assert [w for w, _, _ in _records(record_by_trigger[tid])] == ["start"], (tid, _records(record_by_trigger[tid]))

    # SIGKILL one supervisor: its loops die with it (PR_SET_PDEATHSIG).
    victim_name = "mt1"
    victim, victim_job = procs[victim_name], job_ids[victim_name]
    victim_loops = _loop_pids(victim.text())
    # team_a and team_b start up front; default (bundle "shared") with its first trigger, if it got one.
    started = set(re.findall(r"loop started .*?loop=(\S+)", victim.text()))
    assert {"team_a", "team_b"} <= started <= {"team_a", "team_b", "default"}, victim.text()[-3000:]
    assert len(victim_loops) == len(started), victim.text()[-3000:]
    assert all(alive(pid) for pid in victim_loops)
    victim_triggers = {tid for tid, job in owner.items() if job == victim_job}
    victim_loop_pids = {pid for tid in victim_triggers for _, pid, _ in _records(record_by_trigger[tid])}
    assert victim_loop_pids <= victim_loops
    victim.popen.kill()
    victim.popen.wait(10)
    t_killed = time.monotonic()
    home.wait_for(lambda: not any(alive(pid) for pid in victim_loops), timeout=10,
                  message=lambda: f"loop processes still alive: {[p for p in victim_loops if alive(p)]}")
    assert time.monotonic() < due - 1, "too slow: the triggers are due before the kill was done"

    # The dead job's triggers are re-claimed by the survivors once its heartbeat is stale.
    def taken_over():
        rows = {row.id: row.triggerer_id for row in home.trigger_rows()}
        return all(rows.get(tid) not in (None, victim_job) for tid in victim_triggers)

    home.wait_for(taken_over, timeout=60, message=lambda: f"{home.trigger_rows()}\n{logs_tail()}")
    t_taken = time.monotonic()
    heirs = Counter(name_of_job[row.triggerer_id] for row in home.trigger_rows() if row.id in victim_triggers)
    print(f"[ha] {len(victim_triggers)} triggers of {victim_name} taken over {t_taken - t_killed:.1f}s after SIGKILL "
          f"by {dict(heirs)} "
          f"(threshold {HEALTH_CHECK_THRESHOLD}s); triggers due {due - t_taken:.1f}s later", flush=True)

    # Every TI resumes.
    states = home.wait_for_states(refs, "scheduled", timeout=FIRE_IN + 40)
    t_fired = time.monotonic()
    assert all(s.next_method == "execute_complete" for s in states.values()), states

    survivors = {name: process_tree(p.popen.pid) for name, p in procs.items() if name != victim_name}
    assert all(p.popen.poll() is None for name, p in procs.items() if name != victim_name), logs_tail()
    fired_by = Counter()
    for ref in refs:
        tid, event = ref.trigger_id, states[ref].event
        records = _records(record_by_trigger[tid])
        fires = [r for r in records if r[0] == "fire"]
        starts = [r for r in records if r[0] == "start"]
        assert len(fires) == 1, (tid, records)
        # The event is the one recorded as the fire, from the process that fired it.
        assert (event["pid"], str(event["loop"])) == fires[0][1:], (tid, event, records)
        ran_on = [name for name, pids in survivors.items() if event["pid"] in pids]
        if tid in victim_triggers:
            assert len(starts) == 2, (tid, records)  # once on the killed supervisor, once on its heir
            assert starts[0][1] in victim_loops, (tid, records)
            assert len(ran_on) == 1, (tid, event, survivors)
        else:
            assert len(starts) == 1, (tid, records)  # ran on exactly one triggerer
            expected = name_of_job[owner[tid]]
            assert ran_on == [expected], (tid, event, expected, survivors)
        name = ran_on[0]
        fired_by[name] += 1
        if name == "stock":
            assert event["loop"] is None, event
        else:
            assert event["loop"] == LOOP_OF_BUNDLE[bundle_by_trigger[tid]], (tid, event)
    assert fired_by["stock"] > 0 and fired_by["mt2"] > 0, fired_by
    print(f"[ha] fired by: {dict(fired_by)}; all resumed {t_fired - t_killed:.1f}s after the kill; "
          f"test body {t_fired - t_begin:.1f}s; load average {os.getloadavg()[0]:.1f}", flush=True)
