"""
Crash containment with real processes and real crashes (real os._exit, SIGKILL, SIGSEGV, blocked
event loops, garbage on the wire), all in one supervisor: every misbehaviour has its own bundle
and loop, beside two healthy neighbour bundles whose triggers must keep firing on time.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, decode_serde, deferring_bundle, iso_in

pytestmark = pytest.mark.timeout(300)

CRASH = "mt_testsupport.crash_triggers."
# bundle → (poison trigger class, what its task's failure reason must say)
MISBEHAVIOURS = {
    "x_exit": ("ExitTrigger", "exited with code 1"),
    "x_kill": ("KillLoopTrigger", "killed by SIGKILL"),
    "x_segv": ("SegfaultTrigger", "killed by SIGSEGV"),
    "x_sleep": ("SleepForeverTrigger", "event loop blocked"),
    "x_busy": ("BusyLoopTrigger", "event loop blocked"),
    "x_garbage": ("GarbageTrigger", "malformed frame"),
    "x_badinit": ("BadInitTrigger", "refuses to be constructed"),
    "x_hugeint": ("HugeIntTrigger", "can't serialize ints"),
    "x_bigevent": ("BigEventTrigger", "exceeds the supervisor's 67108864-byte limit"),
}
#: Misbehaviours that fail their trigger without crashing its loop at all.
NO_CRASH = {"x_badinit", "x_hugeint", "x_bigevent"}
NEIGHBOURS = ("team_a", "shared")
START = 10.0  # seconds from deferral (all loops already up) until the first healthy trigger is due
LATE_BOUND = 1.5  # a neighbour's trigger fires at most this late (generous: 2 shared cores)


def _config() -> str:
    loops = [f'[loops.{b}]\nbundles = ["{b}"]\n[loops.{b}.restart]\nbackoff_initial = 0.2\nbackoff_max = 1.0\n'
             for b in (*MISBEHAVIOURS, "x_print", "team_a")]
    return "\n".join(loops)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    bundles = {b: deferring_bundle(f"dag_{b}", n_tasks=6) for b in (*MISBEHAVIOURS, "x_print", *NEIGHBOURS)}
    return AirflowHome.create(
        tmp_path_factory.mktemp("crash") / "home", bundles,
        extra_config={"triggerer": {"runner_health_check_threshold": "4"}},
    )


def _fire_at(bundle: str, task: str, due: str, records: Path) -> DeferSpec:
    record = records / f"{bundle}.{task}"
    return DeferSpec(f"dag_{bundle}", task, FIRE_AT, {"moment": due, "payload": {"due": due}, "record_path": str(record)})


def _lines(path: Path, word: str) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.startswith(word)] if path.exists() else []


def test_every_misbehaviour_stays_in_its_own_loop(home, start_triggerer, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    # Loops first, triggers second: lateness must measure isolation, not start-up on a busy host.
    mt = start_triggerer(home, "--skip-serve-logs", config=_config())
    # (The default loop, which runs "shared", starts with its first trigger: see Supervisor._wanted.)
    loops = {*MISBEHAVIOURS, "x_print", "team_a"}
    home.wait_for(lambda: loops <= set(re.findall(r"loop ready .*?loop=(\S+)", mt.text())), timeout=120)
    neighbour_specs = [_fire_at(b, f"t{i}", iso_in(START + 4 * i), records) for b in NEIGHBOURS for i in range(6)]
    victim_specs = [_fire_at(b, f"t{i}", iso_in(START + 12 * i), records) for b in MISBEHAVIOURS for i in (1, 2)]
    poison_specs = [DeferSpec(f"dag_{b}", "t0", CRASH + cls, {"after": 0.5}, validate=False)
                    for b, (cls, _) in MISBEHAVIOURS.items()]
    print_spec = DeferSpec("dag_x_print", "t0", CRASH + "PrintTrigger", {"after": 1.0}, validate=False)
    refs = home.defer_many(neighbour_specs + victim_specs + poison_specs + [print_spec])
    neighbours, victims = refs[: len(neighbour_specs)], refs[len(neighbour_specs): len(neighbour_specs) + len(victim_specs)]
    poisons, printed = refs[len(neighbour_specs) + len(victim_specs): -1], refs[-1]

    states = home.wait_for_states(refs, "scheduled", timeout=150)

    # Neighbours: every trigger ran once, in one unchanging process per loop, and fired on time.
    for ref in neighbours:
        record = records / f"{ref.dag_id[4:]}.{ref.task_id}"
        assert len(_lines(record, "start")) == 1 and len(_lines(record, "fire")) == 1, record.read_text()
        event = states[ref].event
        late = dt.datetime.fromisoformat(event["fired_at"]) - dt.datetime.fromisoformat(event["due"])
        assert late.total_seconds() < LATE_BOUND, (ref, late)
    for bundle in NEIGHBOURS:
        assert len({states[r].event["pid"] for r in neighbours if r.dag_id == f"dag_{bundle}"}) == 1

    # The affected bundles' healthy triggers fired after the restarts, exactly once each.
    for ref in victims:
        assert states[ref].next_method == "execute_complete", ref
        assert len(_lines(records / f"{ref.dag_id[4:]}.{ref.task_id}", "fire")) == 1

    # Each poison trigger's task instance is failed, with the reason.
    for ref in poisons:
        bundle = ref.dag_id[4:]
        reason = "".join(decode_serde(states[ref].next_kwargs)["traceback"])
        assert states[ref].next_method == "__fail__", ref
        assert MISBEHAVIOURS[bundle][1] in reason, (bundle, reason)
        if bundle not in NO_CRASH:  # a bad constructor, an unencodable or too large event: its trigger alone
            assert "crashed its loop" in reason, reason

    # A loop killed for hanging counts a blocked episode named by its blame slot, like one that ended.
    for bundle in ("x_sleep", "x_busy"):
        named = [ln for ln in mt.text().splitlines() if "event loop blocked by trigger" in ln and f"loop={bundle}" in ln
                 and f"classpath={CRASH}{MISBEHAVIOURS[bundle][0]}" in ln]
        assert named, mt.text()[-3000:]

    # print() is just output: that trigger fired normally, its loop never restarted.
    assert states[printed].event["printed"] is True
    log = mt.text()
    restarted = set(re.findall(r"loop process ended.*?loop=(\S+)", log))
    assert restarted == set(MISBEHAVIOURS) - NO_CRASH, restarted
    # ... and it belongs to its trigger: in that trigger's log file, not the supervisor's log.
    assert "hello from PrintTrigger" not in log
    print_logs = [p for p in home.logs_dir.rglob("*.trigger.*.log") if "dag_id=dag_x_print" in str(p)]
    assert any("hello from PrintTrigger" in p.read_text() for p in print_logs), print_logs
    # The supervisor kept heartbeating throughout: its job is still alive by Airflow's own test
    # (heartbeat newer than [triggerer] triggerer_health_check_threshold, 30 s), with margin.
    ((beat,),) = home.sql("SELECT latest_heartbeat FROM job WHERE job_type = 'TriggererJob' AND end_date IS NULL")
    beat = dt.datetime.fromisoformat(str(beat)).replace(tzinfo=dt.timezone.utc)
    assert (dt.datetime.now(dt.timezone.utc) - beat).total_seconds() < 20
