"""
Faults around the loops: a loop killed from outside, SIGTERM of the supervisor (hand-back),
SIGKILL of the supervisor (no orphans), and a real metadata-DB outage (PostgreSQL behind a proxy).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from mt_testsupport.home import FIRE_AT, WAIT_FOREVER, AirflowHome, DeferSpec, deferring_bundle, iso_in
from mt_testsupport.procs import alive
from tests.conftest import pg_url
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(240)
CONFIG = '[loops.team_a]\nbundles = ["team_a"]\n'


def loop_pids(log: str) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    for loop, pid in re.findall(r"loop started .*?loop=(\S+) pid=(\d+)", log):
        pids.setdefault(loop, []).append(int(pid))
    return pids


def log_lines(text: str, *needles: str) -> list[str]:
    """The log lines that contain every one of ``needles``."""
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def job_ids(home: AirflowHome) -> list[int]:
    return [r[0] for r in home.sql("SELECT id FROM job WHERE job_type = 'TriggererJob' ORDER BY id")]


def fired(record: Path) -> int:
    return record.read_text().count("fire ") if record.exists() else 0


@pytest.fixture
def home(tmp_path: Path) -> AirflowHome:
    bundles = {"team_a": deferring_bundle("dag_a", n_tasks=4), "shared": deferring_bundle("dag_s", n_tasks=4)}
    return AirflowHome.create(tmp_path / "home", bundles)


def test_loop_killed_from_outside_restarts_alone_then_sigterm_hands_back_and_kill9_leaves_no_orphans(
    home, start_triggerer, tmp_path
):
    records = {f"{d}.{t}": tmp_path / f"{d}.{t}" for d in ("dag_a", "dag_s") for t in ("t0", "t1")}
    markers = [tmp_path / "w_a", tmp_path / "w_s"]
    home.defer_many([DeferSpec("dag_a", "t2", WAIT_FOREVER, {"marker_path": str(markers[0])}),
                     DeferSpec("dag_s", "t2", WAIT_FOREVER, {"marker_path": str(markers[1])})])
    first = start_triggerer(home, "--skip-serve-logs", config=CONFIG, name="first")
    home.wait_for(lambda: {"team_a", "default"} <= set(re.findall(r"loop ready .*?loop=(\S+)", first.text())), timeout=90)
    # Due a while after both loops are up (not after deferral: a loaded machine can take that long
    # to start the triggerer), so they are still pending when the loop is killed.
    due = {"t0": iso_in(12), "t1": iso_in(16)}
    refs = home.defer_many(
        [DeferSpec(d, t, FIRE_AT, {"moment": due[t], "record_path": str(records[f"{d}.{t}"])})
         for d in ("dag_a", "dag_s") for t in ("t0", "t1")]
    )
    home.wait_for(lambda: all(r.triggerer_id for r in home.trigger_rows()) and len(home.trigger_rows()) == 6, timeout=60)
    home.wait_for(lambda: all(r.exists() and "start" in r.read_text() for r in records.values()), timeout=30)
    assert not any(fired(rec) for rec in records.values())
    (victim,) = loop_pids(first.text())["team_a"]
    (bystander,) = loop_pids(first.text())["default"]

    # An outside SIGKILL (no trigger to blame): the loop restarts alone and its triggers resume.
    os.kill(victim, signal.SIGKILL)
    home.wait_for(lambda: len(loop_pids(first.text())["team_a"]) == 2, timeout=30)
    states = home.wait_for_states(refs[:4], "scheduled", timeout=60)
    new_pid = loop_pids(first.text())["team_a"][1]
    assert {states[r].event["pid"] for r in refs[:2]} == {new_pid}
    assert {states[r].event["pid"] for r in refs[2:4]} == {bystander}
    assert loop_pids(first.text())["default"] == [bystander]
    assert all(fired(rec) == 1 for rec in records.values())
    # The death was seen and handled (blaming happens right then), and nobody was blamed for it.
    assert log_lines(first.text(), "loop process ended", f"pid={victim}", "killed by SIGKILL"), first.text()[-3000:]
    assert "blamed" not in first.text()

    # SIGTERM: the triggers still running are handed back; a second instance takes them at once,
    # not after the 30 s triggerer_health_check_threshold.
    second = start_triggerer(home, "--skip-serve-logs", config=CONFIG, name="second")
    home.wait_for(lambda: len(job_ids(home)) == 2 and "multitrigger supervisor starting" in second.text(), timeout=60)
    first_job, second_job = job_ids(home)
    time.sleep(2)  # a window of two claim intervals: the second instance must not take live triggers
    assert {r.triggerer_id for r in home.trigger_rows()} == {first_job}
    t0 = time.monotonic()
    assert first.stop() == 0
    home.wait_for(lambda: {r.triggerer_id for r in home.trigger_rows()} == {second_job}, timeout=15)
    assert time.monotonic() - t0 < 15
    # Shutdown cancels without on_kill (stock semantics); cleanup still runs.
    assert all(m.read_text().split() == ["cleanup"] for m in markers)
    first_loops = [p for pids in loop_pids(first.text()).values() for p in pids]
    assert first_loops and not any(alive(p) for p in first_loops)

    # kill -9 of the supervisor: its loops die with it.
    home.wait_for(lambda: {"team_a", "default"} <= set(loop_pids(second.text())), timeout=60)
    orphans = [p for pids in loop_pids(second.text()).values() for p in pids]
    assert orphans and all(alive(p) for p in orphans)
    second.popen.kill()
    second.popen.wait(10)
    home.wait_for(lambda: not any(alive(p) for p in orphans), timeout=10)


@pytest.fixture
def pg_home(tmp_path: Path) -> AirflowHome:
    url = pg_url("multitrigger_outage")
    bundles = {"team_a": deferring_bundle("dag_a", n_tasks=4), "shared": deferring_bundle("dag_s", n_tasks=4)}
    return AirflowHome.create(tmp_path / "home", bundles, db_url=url)


def test_db_outage_keeps_loops_running_loses_no_event_and_gives_up_after_the_bound(pg_home, start_triggerer, tmp_path):
    home = pg_home
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    via_proxy = home.db_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    records = [tmp_path / f"r{i}" for i in range(4)]
    gate = tmp_path / "gate"  # the triggers fire once it exists: during the outage
    refs = home.defer_many([
        DeferSpec(d, t, FIRE_AT, {"moment": iso_in(0), "gate": str(gate), "record_path": str(records[i])})
        for i, (d, t) in enumerate([("dag_a", "t0"), ("dag_a", "t1"), ("dag_s", "t0"), ("dag_s", "t1")])
    ])
    config = CONFIG + "[supervisor]\ndb_retry_limit = 15\n"
    mt = start_triggerer(home, "--skip-serve-logs", config=config,
                         env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": via_proxy})
    home.wait_for(lambda: all(r.exists() and "start" in r.read_text() for r in records), timeout=60)

    # Outage across the moment the triggers fire (shorter than db_retry_limit): they fire in their
    # loops; the events wait in the supervisor, not lost.
    proxy.cut()
    gate.touch()
    home.wait_for(lambda: all(fired(r) == 1 for r in records), timeout=60)
    home.wait_for(lambda: "metadata DB unreachable" in mt.text(), timeout=15)
    assert all(s.state == "deferred" for s in home.ti_states(refs).values())
    proxy.start()
    states = home.wait_for_states(refs, "scheduled", timeout=30)
    assert all(s.next_method == "execute_complete" for s in states.values())
    assert "metadata DB reachable again" in mt.text()
    assert all(len(p) == 1 for p in loop_pids(mt.text()).values()), "no loop may restart during an outage"

    # A long outage: past db_retry_limit the supervisor exits non-zero (HA takes over).
    proxy.cut()
    code = mt.popen.wait(60)
    assert code != 0
    assert "unreachable for too long" in mt.text()


def test_a_second_sigterm_forces_the_stop(home, start_triggerer, tmp_path):
    marker = tmp_path / "running"
    home.defer_many([DeferSpec("dag_a", "t0", "mt_testsupport.crash_triggers.SlowCleanupTrigger",
                               {"marker_path": str(marker)}, validate=False)])
    mt = start_triggerer(home, "--skip-serve-logs", config=CONFIG)
    home.wait_for(marker.exists, timeout=90)
    pids = [p for ps in loop_pids(mt.text()).values() for p in ps]
    assert pids
    mt.popen.send_signal(signal.SIGTERM)
    home.wait_for(lambda: "shutting down" in mt.text(), timeout=10)
    home.wait_for(lambda: "cleanup" in marker.read_text(), timeout=30)  # the graceful stop reached cleanup()
    assert mt.popen.poll() is None  # the first signal waits for the trigger's cleanup (graceful)
    t0 = time.monotonic()
    mt.popen.send_signal(signal.SIGTERM)
    mt.popen.wait(10)
    assert time.monotonic() - t0 < 5
    home.wait_for(lambda: not any(alive(p) for p in pids), timeout=5)
